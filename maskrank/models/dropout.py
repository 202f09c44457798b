"""Dropout variants for timm ViTs: pure functions, thin modules and a typed spec (SCIENCE.md §4).

Each variant is a pure function plus a thin ``nn.Module`` (timm style, with ``extra_repr``) that
replaces one submodule of an unmodified timm ``Block`` or ViT (see
:mod:`maskrank.models.dropout_apply`). ``p`` is the drop probability, ``θ = 1 - p``; multiplicative
masks are scaled by ``1/θ`` (as ``torch.nn.Dropout``), so they have mean 1. Every variant acts only
in training mode and is exactly the identity in eval mode.

- ``feature``: ``mlp.drop1`` (default: the MLP hidden units, i.e. the input of ``fc2``),
  ``mlp.drop2`` (MLP output) or ``attn.proj_drop`` (attention output); every (sample, token, unit)
  independently (Srivastava et al., JMLR 2014).
- ``attention``: ``attn.attn_drop``, the softmax attention weights.
- ``drop_path``: ``drop_path1`` / ``drop_path2``, the attention / MLP residual branch of a whole
  sample (stochastic depth; Huang et al., ECCV 2016; timm's ``DropPath``).
- ``dropconnect``: entries of a Linear weight, ``mlp.fc2`` (default), ``mlp.fc1``, ``attn.qkv`` or
  ``attn.proj``; one mask per forward pass, shared by the batch (Wan et al., ICML 2013).
- ``token``: the ViT's ``patch_drop``: whole patch tokens of each sample before the first block,
  CLS kept (Liu et al., "PatchDropout", WACV 2023; timm's ``PatchDropout``): the supervised
  analogue of MAE masking.

Feature dropout on ``mlp.drop1`` adds ``λ Σ_j ‖u_j‖² E[a_j²]`` (``u_j`` column ``j`` of
``fc2.weight``, ``a`` the input of ``fc2``, ``λ = p/θ``) to the expected squared error at the
output of ``fc2`` (Mianjy, Arora & Vidal, ICML 2018); ``mode: explicit`` adds that penalty to the
loss instead (:class:`maskrank.models.dropout_apply.ExplicitDropoutPenalty`). DropConnect on
``fc2`` has the same expected penalty per sample (``E Σ_i (Σ_j (m_ij/θ - 1) U_ij a_j)² =
λ Σ_ij U_ij² a_j²``), with a different (shared-mask) variance over a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from timm.layers import DropPath, PatchDropout, drop_path
from timm.layers.patch_dropout import patch_dropout_forward
from torch import Tensor, nn

from maskrank.errors import ConfigError

__all__ = [
    "AttentionDropout",
    "DropConnectLinear",
    "DropPath",
    "DropoutSpec",
    "FeatureDropout",
    "TokenDropout",
    "as_dropout_specs",
    "attention_dropout",
    "check_rate",
    "checked_specs",
    "drop_path",
    "dropconnect",
    "feature_dropout",
    "token_dropout",
]

Variant = Literal["none", "feature", "attention", "drop_path", "dropconnect", "token"]
Where = Literal["encoder", "decoder", "both"]
Mode = Literal["implicit", "explicit"]

# Block-relative module paths each block-level variant may replace; the defaults come first.
TARGETS: dict[str, tuple[str, ...]] = {
    "feature": ("mlp.drop1", "mlp.drop2", "attn.proj_drop"),
    "attention": ("attn.attn_drop",),
    "drop_path": ("drop_path1", "drop_path2"),
    "dropconnect": ("mlp.fc2", "mlp.fc1", "attn.qkv", "attn.proj"),
}
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "feature": ("mlp.drop1",),
    "attention": ("attn.attn_drop",),
    "drop_path": ("drop_path1", "drop_path2"),
    "dropconnect": ("mlp.fc2",),
}
EXPLICIT_TARGET = "mlp.drop1"  # the only site whose dropout has an explicit form here


def check_rate(p: object, field: str = "dropout.rate") -> float:
    """Return ``p`` as a float if it is a drop probability in [0, 1); else a one-line ConfigError."""
    if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{{field}} = {p!r} must be a drop probability in [0, 1)", field)
    return float(p)


# --------------------------------------------------------------------------- pure functions


def feature_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero every entry of ``x`` (..., features) independently with probability ``p``, scale 1/θ.

    Entries of different samples and tokens get independent masks, as ``torch.nn.Dropout``.
    Identity when ``training`` is False or ``p == 0``.
    """
    return F.dropout(x, check_rate(p), training)


def attention_dropout(attn: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout on softmax attention weights (B, heads, N, N), each weight independently.

    The same distribution as the ``dropout_p`` of ``F.scaled_dot_product_attention``.
    """
    return F.dropout(attn, check_rate(p), training)


def dropconnect(weight: Tensor, p: float, training: bool = True) -> Tensor:
    """DropConnect: ``weight * m / θ`` with ``m_ij ~ Bernoulli(θ)`` (Wan et al., ICML 2013).

    ``weight`` is (out, in); the mask is drawn anew at each call and gradients flow through it.
    Identity when ``training`` is False or ``p == 0``.
    """
    return F.dropout(weight, check_rate(p), training)


def token_dropout(x: Tensor, p: float, num_prefix_tokens: int = 1, training: bool = True) -> Tensor:
    """Keep ``max(1, int(L (1 - p)))`` of the ``L`` patch tokens of each sample, at random.

    ``x`` is (B, prefix + L, D) -> (B, prefix + K, D); the prefix (CLS) tokens are always kept.
    timm's ``patch_dropout_forward`` (random order of the kept tokens; position embeddings are
    already added). Identity when ``training`` is False or ``p == 0``.
    """
    out, _ = patch_dropout_forward(x, check_rate(p), num_prefix_tokens, False, training)
    return out


# ------------------------------------------------------------------------------- thin modules


class FeatureDropout(nn.Dropout):
    """Feature dropout installed by maskrank (:func:`feature_dropout`): an ``nn.Dropout``.

    It stays an ``nn.Dropout`` so code reading ``mlp.drop1.p`` (the dropout-penalty monitor) sees
    the rate. Use ``nn.Identity()`` for ``p = 0``.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__(check_rate(p))

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class AttentionDropout(FeatureDropout):
    """Dropout on attention weights (:func:`attention_dropout`) for ``Attention.attn_drop``.

    Works with both timm attention paths: the matmul path calls this module on the softmax weights
    (B, heads, N, N); the fused path passes ``self.attn_drop.p`` to SDPA as ``dropout_p``, which
    draws the same distribution inside the kernel. Because of that ``.p``, the disabled form is
    ``AttentionDropout(0.0)``, not ``nn.Identity()`` (timm itself keeps ``nn.Dropout(0.0)`` there).

    Args:
        p: drop probability in [0, 1).
    """


class DropConnectLinear(nn.Linear):
    """An ``nn.Linear`` whose weight gets a fresh DropConnect mask at every training forward.

    A Linear *subclass* (not a parametrization), so ``weight`` and ``bias`` keep their names and
    state-dict keys (``...mlp.fc2.weight``), ``isinstance(m, nn.Linear)`` holds for the weight-
    spectrum callbacks, and :meth:`from_linear` shares the original parameters. One mask per
    forward pass, shared by every sample and token of the batch (per-sample masks would need a
    weight copy per sample); the bias is not dropped. Eval mode: the plain layer.

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer has a bias.
        p: drop probability of each weight entry, in [0, 1).
        device: device of new parameters.
        dtype: dtype of new parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.p = check_rate(p)

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> DropConnectLinear:
        """Wrap ``linear``: the new module *shares* its ``weight`` and ``bias`` Parameters."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, p, "meta")
        new.weight = linear.weight
        new.bias = linear.bias
        return new.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        # x (..., in) -> (..., out); the masked weight is (out, in)
        return F.linear(x, dropconnect(self.weight, self.p, self.training), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p:g}"


class TokenDropout(PatchDropout):
    """Random patch-token dropout before the first block (:func:`token_dropout`), CLS kept.

    timm's ``PatchDropout`` (the ``patch_drop`` slot of a ``VisionTransformer``), with a repr.
    Use ``nn.Identity()`` for ``p = 0``.

    Args:
        p: fraction of patch tokens dropped per sample, in [0, 1).
        num_prefix_tokens: leading tokens (CLS, registers) that are never dropped.
    """

    def __init__(self, p: float, num_prefix_tokens: int = 1) -> None:
        super().__init__(check_rate(p), num_prefix_tokens=num_prefix_tokens)

    def extra_repr(self) -> str:
        return f"p={self.prob:g}, num_prefix_tokens={self.num_prefix_tokens}"


# ------------------------------------------------------------------------------------ the spec


@dataclass
class DropoutSpec:
    """One dropout variant at a rate, on chosen blocks of a ViT or MAE (SCIENCE.md §4).

    A list of specs combines variants; two specs may not set the same module.

    Attributes:
        variant: ``none`` (no change), ``feature`` (units of a layer's input or output),
            ``attention`` (attention weights), ``drop_path`` (stochastic depth of residual
            branches), ``dropconnect`` (weights of Linear layers) or ``token`` (patch tokens
            before the encoder; classifiers only: in MAE pretraining, masking already does this).
        rate: drop probability ``p`` in [0, 1), the same on every selected site (``λ = p/(1-p)``).
            Sites get exactly this rate; 0 installs the disabled form (``nn.Identity``, a plain
            ``nn.Linear``), overriding any ``vit.*_drop_rate`` there.
        where: ``encoder``, ``decoder`` (MAE only) or ``both``.
        blocks: indices of the blocks to change (negative ones count from the end); None: all.
        targets: sites inside each block. ``feature``: ``mlp.drop1`` (default; MLP hidden units,
            the input of ``fc2``), ``mlp.drop2`` (MLP output), ``attn.proj_drop`` (attention
            output). ``dropconnect``: ``mlp.fc2`` (default), ``mlp.fc1``, ``attn.qkv``,
            ``attn.proj``. ``drop_path``: ``drop_path1`` (attention branch), ``drop_path2`` (MLP
            branch); default both. Short names (``drop1``, ``fc1``, ``qkv``) work too.
        mode: ``implicit`` (random dropout in training) or ``explicit``: no dropout at the sites;
            instead the closed-form penalty ``λ Σ_j ‖u_j‖² mean(a_j²)`` of ``fc2`` is added to the
            training loss. Only for ``variant: feature`` on ``mlp.drop1``.
    """

    variant: Variant = "none"
    rate: float = 0.0
    where: Where = "encoder"
    blocks: list[int] | None = None
    targets: list[str] | None = None
    mode: Mode = "implicit"

    def checked(self, field: str = "dropout") -> DropoutSpec:
        """This spec, checked once (errors name ``field``), as a copy with canonical targets.

        The tasks call it through :func:`as_dropout_specs`, whose specs the code below trusts.

        Raises:
            ConfigError: unknown variant/where/mode, rate outside [0, 1), bad blocks or targets, or
                explicit mode for anything but feature dropout on ``mlp.drop1``.
        """
        _choice(self.variant, get_args(Variant), f"{field}.variant")
        _choice(self.where, get_args(Where), f"{field}.where")
        _choice(self.mode, get_args(Mode), f"{field}.mode")
        rate = check_rate(self.rate, f"{field}.rate")
        if self.blocks is not None and (
            isinstance(self.blocks, str)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in self.blocks)
        ):
            raise ConfigError(
                f"{{field}} = {self.blocks!r} must be a list of block indices", f"{field}.blocks"
            )
        if self.variant == "token" and (self.blocks is not None or self.where != "encoder"):
            raise ConfigError(
                "{field}: token dropout acts on the encoder input; leave blocks unset, where: encoder",
                field,
            )
        targets = _canonical_targets(self, field)
        if self.mode == "explicit" and (self.variant != "feature" or targets != [EXPLICIT_TARGET]):
            raise ConfigError(
                f"{{field}} = 'explicit' needs variant: feature on targets [{EXPLICIT_TARGET}] "
                "(the MLP hidden units, SCIENCE.md §4)",
                f"{field}.mode",
            )
        blocks = None if self.blocks is None else list(self.blocks)
        return replace(self, rate=rate, blocks=blocks, targets=targets)


def _choice(value: object, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{{field}} = {value!r}: expected one of {list(allowed)}", field)
    return str(value)


def _canonical_targets(spec: DropoutSpec, field: str) -> list[str] | None:
    """Targets as full block-relative paths (``drop1`` -> ``mlp.drop1``); None if not applicable."""
    if spec.variant not in TARGETS:
        if spec.targets is not None:
            raise ConfigError(
                f"{{field}} must be unset for variant {spec.variant!r}", f"{field}.targets"
            )
        return None
    allowed = TARGETS[spec.variant]
    if spec.targets is None:
        return list(DEFAULT_TARGETS[spec.variant])
    if isinstance(spec.targets, str) or not spec.targets:
        raise ConfigError(
            f"{{field}} must be a non-empty list of {list(allowed)}", f"{field}.targets"
        )
    short = {path.rsplit(".", 1)[-1]: path for path in allowed}
    out: list[str] = []
    for target in spec.targets:
        path = short.get(target, target)
        if path not in allowed:
            raise ConfigError(
                f"{{field}}: {target!r} is not a {spec.variant} site; expected {list(allowed)}",
                f"{field}.targets",
            )
        if path not in out:
            out.append(path)
    return out


def checked_specs(
    value: DropoutSpec | dict | list[DropoutSpec | dict] | None,
    field: str = "dropout",
) -> list[tuple[DropoutSpec, str]]:
    """Validated specs, each with the field that names it (``field`` or ``field[i]`` in a list)."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for i, item in enumerate(items):
        item_field = f"{field}[{i}]" if isinstance(value, (list, tuple)) else field
        if isinstance(item, dict):
            unknown = set(item) - set(DropoutSpec.__dataclass_fields__)
            if unknown:
                raise ConfigError(f"{{field}}: unknown field(s) {sorted(unknown)}", item_field)
            item = DropoutSpec(**item)
        elif not isinstance(item, DropoutSpec):
            raise ConfigError(
                f"{{field}} must be a dropout spec (variant, rate, ...), got {item!r}", item_field
            )
        out.append((item.checked(item_field), item_field))
    return out


def as_dropout_specs(
    value: DropoutSpec | dict | list[DropoutSpec | dict] | None,
    field: str = "dropout",
) -> list[DropoutSpec]:
    """Accept a spec, its ``asdict`` form (as in checkpoint hparams), a list of these, or None.

    Returns validated specs with canonical targets (``[]`` for None).

    Raises:
        ConfigError: as :meth:`DropoutSpec.checked`, naming ``field`` (``field[i]`` for list items).
    """
    return [spec for spec, _ in checked_specs(value, field)]
