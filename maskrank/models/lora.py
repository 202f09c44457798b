"""Low-rank adapters (LoRA) on the Linear layers of a timm ViT (SCIENCE.md §6).

``h = W₀x + b + (α/r) B A x`` with ``A`` (r, k) Kaiming-uniform and ``B`` (d, r) zero, so training
starts at the pretrained function; merging writes ``W₀ + (α/r) B A`` into a plain ``nn.Linear``.

The layer is a pure function (:func:`lora_linear`) plus a thin module (:class:`LoRALinear`) whose
submodule names are peft's (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``), so an adapted
model's keys map one-to-one onto a peft adapter (:mod:`maskrank.models.lora_io`). The forward
pass is written for speed (:class:`_MergedLoRA`): one GEMM with ``W₀ + (α/r)BA`` merged on the fly,
a backward with one full-size GEMM plus rank-``r`` products in their fast orientation, and never
the (frozen) ``W₀`` gradient. ``engine: peft`` uses peft's own layers instead (same math, for
comparison; ``scripts/bench_adapt.py`` measures both).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrank.errors import ConfigError

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "LoRASpec",
    "LoRAView",
    "adapter_rank",
    "apply_lora",
    "delta_weight",
    "lora_layers",
    "lora_linear",
    "merge_lora",
    "target_matches",
    "unmerge_all",
]

DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class LoRASpec:
    """Where and how large the adapters are (``model.init_args.lora``).

    Attributes:
        r: default adapter rank.
        alpha: scale numerator; the update is ``(alpha / r) B A``.
        dropout: dropout on the adapter's input (peft's ``lora_dropout``).
        targets: Linear layers to adapt, matched by name suffix as in peft (``qkv`` matches
            ``blocks.3.attn.qkv``; ``blocks.0.attn.qkv`` matches one layer). Only ``nn.Linear``
            layers of the encoder are adapted (``proj`` never matches the patch-embedding conv).
        rank_pattern: per-module ranks overriding ``r``: a mapping of peft-style patterns
            (``blocks.3.attn.qkv`` or a regex such as ``blocks\\.[0-5]\\.mlp\\.fc1``) to ranks, or
            the path of a rank map written by ``maskrank lora-rank``; rank 0 leaves a layer
            without an adapter.
        alpha_pattern: per-module ``alpha`` overrides, keyed like ``rank_pattern``; without an
            entry a layer keeps ``alpha / r`` of the spec scaled to its own rank
            (``alpha * r_layer / r``), so every layer starts with the same scale.
        engine: ``maskrank`` (one GEMM with the merged weight forward, no ``W₀`` gradient) or
            ``peft`` (peft's LoRA layers; same math).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    rank_pattern: dict[str, int] | str | None = None
    alpha_pattern: dict[str, float] | None = None
    engine: Literal["maskrank", "peft"] = "maskrank"


class _MergedLoRA(torch.autograd.Function):
    """``y = x W'ᵀ + b`` with ``W' = W + s B A``, differentiable in ``x``, ``W``, ``b``, ``A``, ``B``.

    Forward is one GEMM with the merged weight (as fast as the frozen layer alone; when the input
    is wider than the output it also yields ``x Aᵀ``, from ``x [W'; A]ᵀ``). Backward forms
    ``∂x = g W'`` with one GEMM (fused with ``g B`` when the output is wider than the input) and the
    adapter gradients from rank-``r`` products oriented so the long token axis T is the reduction
    (``(gB)ᵀx``, ``(xAᵀ)ᵀg``: 3-6x faster on CPU BLAS than ``xᵀ(gB)`` for these skinny shapes).
    ``∂W`` (a full-size GEMM) is formed only if ``W`` is trainable.
    Shapes: x (T, k), W (d, k), b (d,), A (r, k), B (d, r), g (T, d).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)  # (d, k) = W + s B A
        d, r = merged.shape[0], lora_a.shape[0]
        xa_t = None
        if ctx.needs_input_grad[4] and x.shape[1] > d:
            # x (T, k) is the larger stream (fc2): x Aᵀ comes from the same GEMM, x [W'; A]ᵀ,
            # instead of a second pass over x in backward; the output is a (T, d) column view
            pad = None if bias is None else torch.cat([bias, bias.new_zeros(r)])
            both = F.linear(x, torch.cat([merged, lora_a]), pad)  # (T, d + r)
            out, xa_t = both[:, :d], both[:, d:].t().contiguous()  # (T, d), (r, T)
        else:
            out = F.linear(x, merged, bias)
        ctx.save_for_backward(x, merged, lora_a, lora_b, xa_t)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad):
        x, merged, lora_a, lora_b, xa_t = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_lb, _ = ctx.needs_input_grad
        s = ctx.scaling
        gx = ga = glb = gb_t = None
        k = x.shape[1]
        if need_x and need_a and grad.shape[1] > k:
            # g (T, d) is the larger stream (qkv, fc1): read it once for ∂x and g B together,
            # g [W' | B] (T, k + r), instead of a second skinny pass over g
            both = grad @ torch.cat([merged, lora_b], dim=1)
            gx, gb_t = both[:, :k].contiguous(), both[:, k:].t()  # (T, k), (r, T)
        elif need_x:
            gx = grad @ merged  # (T, k)
        gw = grad.t() @ x if need_w else None  # (d, k)
        gb = grad.sum(0) if need_b else None
        if need_a:
            if gb_t is None:
                gb_t = lora_b.t() @ grad.t()  # (r, T) = (g B)ᵀ
            ga = _token_sum(gb_t, x).mul_(s)  # (r, k) = s (gB)ᵀ x
        if need_lb:
            if xa_t is None:
                xa_t = lora_a @ x.t()  # (r, T) = (x Aᵀ)ᵀ
            glb = _token_sum(xa_t, grad).mul_(s).t()  # (d, r) = s gᵀ (x Aᵀ)
        return gx, gw, gb, ga, glb, None


def _token_sum(left_t: Tensor, right: Tensor) -> Tensor:
    """``left_t @ right`` for ``left_t`` (r, T), ``right`` (T, n): a sum over the T tokens.

    BLAS runs such an (r x n) output with a long reduction on one thread; two half-sums in one
    ``bmm`` let two threads share it (measured 1.2-1.8x faster for these shapes on 2 cores).
    """
    r, t = left_t.shape
    if t % 2:
        return left_t @ right
    halves = left_t.reshape(r, 2, t // 2).transpose(0, 1)  # (2, r, T/2)
    return torch.bmm(halves, right.view(2, t // 2, right.shape[1])).sum(0)


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: float,
    x_lora: Tensor | None = None,
) -> Tensor:
    """``x Wᵀ + b + scaling · (x_lora Aᵀ) Bᵀ`` for ``x`` (..., k), ``W`` (d, k), ``A`` (r, k), ``B`` (d, r).

    ``x_lora`` is the adapter's input (``x`` after the adapter dropout; ``x`` when None). Without
    a gradient to form (inference) this is one GEMM with the merged weight; without adapter
    dropout and autocast, :class:`_MergedLoRA` (one GEMM forward); otherwise the
    low-rank term is accumulated in place into the frozen product (``addmm_``: no full-size
    temporary, and the output gradient is handed straight through).
    """
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)  # (T, k)
    adapters_train = torch.is_grad_enabled() and (lora_a.requires_grad or lora_b.requires_grad)
    if x_lora is None and not adapters_train:
        # inference (validation, probes): one GEMM with the merged weight, nothing saved
        out = F.linear(x2, torch.addmm(weight, lora_b, lora_a, alpha=scaling), bias)
    elif x_lora is None and not torch.is_autocast_enabled(x.device.type):
        out = _MergedLoRA.apply(x2, weight, bias, lora_a, lora_b, scaling)
    else:
        out = F.linear(x2, weight, bias)  # (T, d)
        xa = F.linear(x2 if x_lora is None else x_lora.reshape(-1, k), lora_a)  # (T, r)
        out = out.addmm_(xa, lora_b.t(), alpha=scaling)  # (T, d) += s · xa Bᵀ
    return out.view(*lead, out.shape[-1])


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with a low-rank adapter; peft's attribute names, maskrank's forward.

    Args:
        base_layer: the frozen pretrained layer (kept as a submodule, not copied).
        r: adapter rank (>= 1).
        alpha: the update is ``(alpha / r) B A``.
        dropout: dropout on the adapter input in training.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base_layer = base_layer
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **kw)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear and peft
        nn.init.zeros_(self.lora_B.weight)

    # timm and maskrank code read these from the layer it replaces
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> Tensor:
        """``(α/r) B A`` (d, k): what merging adds to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``base_layer.weight`` (idempotent: a second call does nothing)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        x_lora = None if isinstance(self.lora_dropout, nn.Identity) else self.lora_dropout(x)
        w, b = self.base_layer.weight, self.base_layer.bias
        return lora_linear(x, w, b, self.lora_A.weight, self.lora_B.weight, self.scaling, x_lora)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


@dataclass
class LoRAView:
    """Engine-independent view of one adapted layer: base ``nn.Linear``, ``A``, ``B``, scale."""

    base: nn.Linear
    lora_a: Tensor  # (r, k)
    lora_b: Tensor  # (d, r)
    scaling: float
    alpha: float

    @property
    def r(self) -> int:
        return self.lora_a.shape[0]


def _peft_linear_type() -> type | None:
    try:
        from peft.tuners.lora import Linear as PeftLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    return PeftLinear


def lora_layers(model: nn.Module) -> dict[str, LoRAView]:
    """Every adapted layer of ``model`` by module name, from maskrank's or peft's engine.

    A layer merged in place (:meth:`LoRALinear.merge`) is listed too: its ``base.weight`` then
    already holds ``W₀ + ΔW``.
    """
    peft_linear = _peft_linear_type()
    views: dict[str, LoRAView] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            views[name] = LoRAView(
                module.base_layer,
                module.lora_A.weight,
                module.lora_B.weight,
                module.scaling,
                module.alpha,
            )
        elif peft_linear is not None and isinstance(module, peft_linear):
            views[name] = LoRAView(
                module.base_layer,
                module.lora_A["default"].weight,
                module.lora_B["default"].weight,
                float(module.scaling["default"]),
                float(module.lora_alpha["default"]),
            )
    return views


def delta_weight(view: LoRAView) -> Tensor:
    """``(α/r) B A`` of one adapted layer (d, k), detached."""
    return view.scaling * (view.lora_b.detach() @ view.lora_a.detach())


def target_matches(name: str, target: str) -> bool:
    """peft's rule for ``target_modules`` entries: the module name equals or ends with ``.target``."""
    return name == target or name.endswith("." + target)


def _pattern_value(name: str, pattern: dict, default):
    """peft's rule: the first key with ``re.match(rf"(.*\\.)?({key})$", name)`` wins."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def adapter_rank(name: str, spec: LoRASpec, rank_pattern: dict[str, int]) -> tuple[int, float]:
    """(rank, alpha) of the adapter on module ``name``; rank 0 means no adapter."""
    r = int(_pattern_value(name, rank_pattern, spec.r))
    alpha = _pattern_value(name, spec.alpha_pattern or {}, None)
    return r, float(spec.alpha * r / spec.r if alpha is None else alpha)


def _check(spec: LoRASpec, flag: str) -> None:
    if spec.r < 1:
        raise ConfigError(f"LoRA rank r = {spec.r} ({flag}.r) must be >= 1")
    if spec.alpha <= 0:
        raise ConfigError(f"LoRA alpha = {spec.alpha} ({flag}.alpha) must be positive")
    if not 0.0 <= spec.dropout < 1.0:
        raise ConfigError(f"LoRA dropout = {spec.dropout} ({flag}.dropout) must be in [0, 1)")
    if not spec.targets:
        raise ConfigError(f"{flag}.targets is empty: name at least one Linear layer (e.g. qkv)")
    if spec.engine not in ("maskrank", "peft"):
        raise ConfigError(f"{flag}.engine = {spec.engine!r}: expected 'maskrank' or 'peft'")


def apply_lora(
    model: nn.Module, spec: LoRASpec, flag: str = "model.init_args.lora"
) -> dict[str, LoRAView]:
    """Put adapters on ``model``'s Linear layers named by ``spec`` and freeze everything else.

    A ``spec.rank_pattern`` given as a file path is read with
    :func:`maskrank.models.lora_io.load_rank_map`. Returns the adapted layers; every other parameter of
    ``model`` has ``requires_grad = False`` (the caller unfreezes what it trains besides, e.g. a
    classifier head).

    Raises:
        ConfigError: bad rank/alpha/dropout, or targets that match no Linear layer (the error
            names ``flag.targets`` and lists the layer names that exist).
    """
    _check(spec, flag)
    pattern = spec.rank_pattern or {}
    if isinstance(pattern, str):
        from maskrank.models.lora_io import load_rank_map  # lora_io builds on this module

        pattern = load_rank_map(pattern, f"{flag}.rank_pattern")
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    chosen: dict[str, tuple[int, float]] = {}
    for target in spec.targets:
        hits = [n for n in linears if target_matches(n, target)]
        if not hits:
            examples = sorted({n.split(".")[-1] for n in linears}) or ["(none)"]
            raise ConfigError(
                f"LoRA target {target!r} ({flag}.targets) matches no Linear layer of the encoder; "
                f"Linear layer names end in: {', '.join(examples)}"
            )
        for name in hits:
            chosen[name] = adapter_rank(name, spec, pattern)
    chosen = {n: ra for n, ra in chosen.items() if ra[0] > 0}
    if not chosen:
        raise ConfigError(f"{flag}.rank_pattern sets every targeted layer to rank 0")
    model.requires_grad_(False)
    if spec.engine == "peft":
        _inject_peft(model, spec, chosen)
    else:
        for name, (r, alpha) in chosen.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(linears[name], r, alpha, spec.dropout))
    return lora_layers(model)


def _inject_peft(model: nn.Module, spec: LoRASpec, chosen: dict[str, tuple[int, float]]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=sorted(chosen),
        rank_pattern={n: r for n, (r, _) in chosen.items()},
        alpha_pattern={n: a for n, (_, a) in chosen.items()},
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


def unmerge_all(model: nn.Module) -> None:
    """Undo every in-place merge (maskrank's or peft's), so base layers hold ``W₀`` again."""
    for module in model.modules():
        if getattr(module, "merged", False) and hasattr(module, "unmerge"):
            module.unmerge()


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every adapted layer by a plain ``nn.Linear`` holding ``W₀ + (α/r) B A``.

    Works on maskrank's and peft's layers, in place; returns ``model`` (a plain timm model again).
    A model without adapters is returned unchanged, so merging twice equals merging once.
    """
    unmerge_all(model)  # layers merged in place go back to W₀ first
    for name, view in lora_layers(model).items():
        base = view.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        merged.weight.copy_(base.weight + delta_weight(view).to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.requires_grad_(base.weight.requires_grad)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, merged)
    return model
