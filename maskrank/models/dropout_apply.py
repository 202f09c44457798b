"""Apply :class:`~maskrank.models.dropout.DropoutSpec` s to a timm ViT or an MAE, in place.

:func:`apply_dropout` never forks timm: it replaces submodules of the unmodified ``Block`` s
(``block.mlp.drop1 = FeatureDropout(p)``, ``block.mlp.fc2 = DropConnectLinear.from_linear(...)``,
``vit.patch_drop = TokenDropout(p)``) and returns the names of the modules it replaced, so every
parameter keeps its name and checkpoints load unchanged. :class:`ExplicitDropoutPenalty` is the
explicit counterpart of feature dropout on the MLP hidden units (SCIENCE.md §4; Mianjy, Arora &
Vidal, ICML 2018): forward pre-hooks on ``mlp.fc2`` compute ``λ Σ_j ‖u_j‖² mean(a_j²)`` from the
activations ``a`` entering ``fc2`` during the training forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from maskrank.errors import ConfigError, flag_of
from maskrank.metrics.dropout import dropout_penalty_term
from maskrank.models.dropout import (
    EXPLICIT_TARGET,
    AttentionDropout,
    DropConnectLinear,
    DropoutSpec,
    FeatureDropout,
    TokenDropout,
    check_rate,
    checked_specs,
)
from maskrank.models.mae import MaskedAutoencoder

__all__ = [
    "ExplicitDropoutPenalty",
    "apply_dropout",
    "block_groups",
    "install_dropout",
    "selected_blocks",
]

SpecLike = DropoutSpec | dict | Sequence[DropoutSpec | dict] | None


def block_groups(model: nn.Module, where: str, field: str) -> list[tuple[str, nn.ModuleList]]:
    """``(prefix, blocks)`` of the encoder and/or decoder of a timm ViT or MaskedAutoencoder."""
    if isinstance(model, MaskedAutoencoder):
        groups = {"encoder": ("encoder.blocks", model.encoder.blocks)}
        groups["decoder"] = ("decoder_blocks", model.decoder_blocks)
    elif isinstance(model, VisionTransformer):
        groups = {"encoder": ("blocks", model.blocks)}
        if where != "encoder":
            raise ConfigError(
                f"{{field}} = {where!r}: a ViT classifier has only an encoder", f"{field}.where"
            )
    else:
        raise TypeError(f"expected a timm VisionTransformer or a MaskedAutoencoder, got {model!r}")
    names = ["encoder", "decoder"] if where == "both" else [where]
    return [groups[name] for name in names]


def selected_blocks(
    model: nn.Module, where: str, blocks: list[int] | None, field: str
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, block)`` for the chosen block indices of each selected group (all when None)."""
    for prefix, group in block_groups(model, where, field):
        depth = len(group)
        indices = range(depth) if blocks is None else blocks
        for i in indices:
            if not -depth <= i < depth:
                raise ConfigError(
                    f"{{field}}: index {i} is out of range for {prefix} (depth {depth})",
                    f"{field}.blocks",
                )
        for i in sorted({i % depth for i in indices}):
            yield f"{prefix}.{i}", group[i]


def _parent(root: nn.Module, path: str, field: str, where: str) -> tuple[nn.Module, str]:
    """The module holding ``path`` (dotted, below ``root``) and the attribute name."""
    *parents, attr = path.split(".")
    parent = root
    for part in parents:
        parent = getattr(parent, part, None)
    if not isinstance(parent, nn.Module) or not isinstance(getattr(parent, attr, None), nn.Module):
        raise ConfigError(
            f"{{field}}: {where} has no {path} (not a timm Block with an Mlp)", f"{field}.targets"
        )
    return parent, attr


def _replacement(spec: DropoutSpec, old: nn.Module, name: str, field: str) -> nn.Module:
    """The module that implements ``spec`` at a site currently holding ``old``."""
    p, variant = spec.rate, spec.variant
    if spec.mode == "explicit":
        return nn.Identity()  # the dropout is switched off; its penalty goes into the loss
    if variant == "feature":
        return FeatureDropout(p) if p > 0 else nn.Identity()
    if variant == "attention":
        return AttentionDropout(p)  # timm's fused path reads .p, so no nn.Identity here
    if variant == "drop_path":
        return DropPath(p) if p > 0 else nn.Identity()
    if variant == "dropconnect":
        if not isinstance(old, nn.Linear):
            raise ConfigError(
                f"{{field}}: {name} is a {type(old).__name__}, not nn.Linear", f"{field}.targets"
            )
        if p > 0:
            return DropConnectLinear.from_linear(old, p)
        plain = nn.Linear(old.in_features, old.out_features, old.bias is not None, device="meta")
        plain.weight, plain.bias = old.weight, old.bias  # shared Parameters
        return plain.train(old.training)
    raise AssertionError(variant)  # pragma: no cover - token handled by the caller


def _sites(model: nn.Module, spec: DropoutSpec, field: str) -> Iterator[tuple[str, nn.Module, str]]:
    """``(full name, parent, attribute)`` of every module ``spec`` replaces."""
    if spec.variant == "token":
        if not isinstance(model, VisionTransformer):
            raise ConfigError(
                f"{{field}} = 'token' is for classifiers: MAE pretraining already drops "
                f"tokens (set {flag_of('mask_ratio')})",
                f"{field}.variant",
            )
        yield "patch_drop", model, "patch_drop"
        return
    for block_name, block in selected_blocks(model, spec.where, spec.blocks, field):
        for path in spec.targets or ():
            parent, attr = _parent(block, path, field, block_name)
            yield f"{block_name}.{path}", parent, attr


def apply_dropout(model: nn.Module, specs: SpecLike, field: str = "dropout") -> list[str]:
    """Install the dropout variants ``specs`` in ``model`` in place; return the replaced names.

    ``model`` is a timm ``VisionTransformer`` (classifier: ``where`` must be ``encoder``) or a
    :class:`~maskrank.models.mae.MaskedAutoencoder` (``.encoder.blocks`` and/or
    ``.decoder_blocks``). ``specs`` is one spec, its dict form, a list of either, or None.
    Names are relative to ``model`` (``blocks.1.mlp.drop1``, ``decoder_blocks.0.attn.attn_drop``,
    ``patch_drop``), in the order of the specs; nothing else in ``model`` changes, and parameters
    are shared, not copied (apply before creating the optimizer anyway). Explicit-mode specs
    switch their dropout off here (``nn.Identity``); attach their penalty with
    :meth:`ExplicitDropoutPenalty.from_specs`.

    Raises:
        ConfigError: an invalid spec, a block index out of range, a missing site, a ``decoder``
            on a classifier, ``token`` on an MAE, or two specs setting the same module (each
            message names ``field``).
    """
    return _install(model, checked_specs(specs, field))


def _install(model: nn.Module, specs: list[tuple[DropoutSpec, str]]) -> list[str]:
    owner: dict[str, str] = {}  # module name -> field of the spec that set it
    changed: list[str] = []
    for spec, spec_field in specs:
        if spec.variant == "none":
            continue
        for name, parent, attr in _sites(model, spec, spec_field):
            if name in owner:
                raise ConfigError(
                    f"{{field}} and {flag_of(owner[name])} both set {name}", spec_field
                )
            owner[name] = spec_field
            if spec.variant == "token":
                prefix = model.num_prefix_tokens  # CLS (and registers) always kept
                new = TokenDropout(spec.rate, prefix) if spec.rate > 0 else nn.Identity()
            else:
                new = _replacement(spec, getattr(parent, attr), name, spec_field)
            setattr(parent, attr, new)
            changed.append(name)
    return changed


class ExplicitDropoutPenalty:
    """The explicit counterpart of feature dropout on MLP hidden units (SCIENCE.md §4).

    Registers a forward pre-hook on ``mlp.fc2`` of each selected block. During a *training*
    forward (module in train mode, autograd on), each hook computes, with the differentiable
    :func:`maskrank.metrics.dropout_penalty_term` on ``fc2``'s input ``a`` (B, N, hidden) flattened
    to (B·N, hidden), ``λ Σ_j ‖u_j‖² mean(a_j²)``; ``u_j`` is column ``j`` of ``fc2.weight`` and
    the mean runs over samples × tokens. :meth:`pop` returns the sum over blocks.

    What it matches (Mianjy, Arora & Vidal, ICML 2018): for fixed ``a``, the expectation over
    dropout masks drawn independently per sample, token and unit (as ``nn.Dropout`` on
    ``mlp.drop1`` does) of ``Σ_out (fc2(drop(a)) - fc2(a))²``, averaged over samples × tokens,
    i.e. the expected extra squared error dropout injects at the output of ``fc2`` (squared error
    summed over ``fc2``'s outputs); the cross term vanishes because the masks have mean 1. Adding
    it to the loss with that dropout switched off (:func:`apply_dropout` with ``mode: explicit``)
    is the deterministic counterpart of dropout at ``λ = p/(1-p)``. Needs ``mlp.norm`` to be the
    identity (it is in ViTs), so that ``a`` is exactly what ``drop1`` would see.

    A plain object, not an ``nn.Module`` (it must not re-register the model's layers). Hooks stay
    on the model until :meth:`remove`.

    Args:
        model: a timm ``VisionTransformer`` or a ``MaskedAutoencoder``.
        rate: the drop probability ``p`` in [0, 1) whose penalty (``λ = p/(1-p)``) is added.
        where: ``encoder``, ``decoder`` (MAE only) or ``both``.
        blocks: block indices (negative from the end); None: all.
        field: how error messages name the setting.
    """

    def __init__(
        self,
        model: nn.Module,
        rate: float,
        where: str = "encoder",
        blocks: list[int] | None = None,
        field: str = "dropout",
    ) -> None:
        self._hooked: dict[str, tuple[nn.Module, float]] = {}  # fc2 name -> (fc2, p)
        self._handles: list[RemovableHandle] = []
        self._terms: list[Tensor] = []  # 0-d penalty per hooked fc2 call since the last pop
        self.add(model, rate, where, blocks, field)

    def add(
        self,
        model: nn.Module,
        rate: float,
        where: str = "encoder",
        blocks: list[int] | None = None,
        field: str = "dropout",
    ) -> None:
        """Hook more ``fc2`` s (same arguments as the constructor)."""
        p = check_rate(rate, f"{field}.rate")
        for block_name, block in selected_blocks(model, where, blocks, field):
            parent, attr = _parent(block, EXPLICIT_TARGET, field, block_name)
            fc2 = getattr(parent, "fc2", None)
            if not isinstance(fc2, nn.Linear) or not isinstance(parent.norm, nn.Identity):
                raise ConfigError(
                    f"{{field}}: {block_name}.mlp is not fc1 → act → drop1 → fc2", field
                )
            name = f"{block_name}.mlp.fc2"
            if name in self._hooked:
                raise ConfigError(
                    f"{{field}}: {name} already carries an explicit dropout penalty", field
                )
            self._hooked[name] = (fc2, p)
            self._handles.append(fc2.register_forward_pre_hook(partial(self._record, p)))

    @property
    def rates(self) -> dict[str, float]:
        """Hooked ``fc2`` name -> its rate ``p``."""
        return {name: p for name, (_, p) in self._hooked.items()}

    @property
    def fc2_rates(self) -> dict[nn.Module, float]:
        """Hooked ``fc2`` module -> its rate ``p`` (what the monitors look up)."""
        return {fc2: p for fc2, p in self._hooked.values()}

    @classmethod
    def from_specs(
        cls, model: nn.Module, specs: SpecLike, field: str = "dropout"
    ) -> ExplicitDropoutPenalty | None:
        """The penalty of every ``mode: explicit`` spec in ``specs``; None if there is none."""
        return cls._from_checked(model, checked_specs(specs, field))

    @classmethod
    def _from_checked(
        cls, model: nn.Module, specs: list[tuple[DropoutSpec, str]]
    ) -> ExplicitDropoutPenalty | None:
        penalty = None
        for spec, spec_field in specs:
            if spec.mode != "explicit":
                continue
            if penalty is None:
                penalty = cls(model, spec.rate, spec.where, spec.blocks, spec_field)
            else:
                penalty.add(model, spec.rate, spec.where, spec.blocks, spec_field)
        return penalty

    def _record(self, p: float, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if module.training and torch.is_grad_enabled():
            # args[0]: (B, N, hidden) -> flattened to (B·N, hidden) inside the penalty term
            self._terms.append(dropout_penalty_term(module.weight, args[0], p, validate=False))

    def reset(self) -> None:
        """Forget the terms recorded so far (call before a training forward)."""
        self._terms.clear()

    def pop(self) -> Tensor:
        """Sum of the terms recorded since the last reset/pop (0-d; 0 if none), then reset."""
        terms, self._terms = self._terms, []
        if not terms:
            fc2 = next(iter(self._hooked.values()), (None, 0.0))[0]
            return torch.zeros((), device=fc2.weight.device if fc2 is not None else None)
        return sum(terms[1:], terms[0])

    def remove(self) -> None:
        """Remove every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        self._terms.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rates})"


def install_dropout(
    model: nn.Module, specs: SpecLike
) -> tuple[list[DropoutSpec], ExplicitDropoutPenalty | None]:
    """What a task does with its ``dropout`` argument, in one call: check the specs once, install
    them in ``model`` (:func:`apply_dropout`) and hook the penalty of the explicit ones.

    Returns the checked specs (canonical targets; stored in the task's hyperparameters) and the
    :class:`ExplicitDropoutPenalty`, or None without a ``mode: explicit`` spec.
    """
    checked = checked_specs(specs)
    _install(model, checked)
    return [spec for spec, _ in checked], ExplicitDropoutPenalty._from_checked(model, checked)
