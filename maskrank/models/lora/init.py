"""Adapters that start in a measured subspace: PiSSA and gradient-subspace init (SCIENCE.md §8).

Both keep the initial function: the base weight holds ``W₀ - (α/r) B₀ A₀``, so ``base + (α/r) B A``
starts at ``W₀``. The offset base is an ordinary (frozen) parameter of the layer, so a checkpoint
carries it and a resumed or exported model needs nothing else.

- :func:`pissa_init`: ``(α/r) B₀ A₀`` is the top-``r`` SVD part of ``W₀`` (Meng et al. 2024);
- :func:`gradient_init`: ``B₀ = U_r / √s``, ``A₀ = V_rᵀ / √s`` (``s = α/r``) from ``G = U S Vᵀ``,
  the full-weight gradient averaged over a few batches (LoRA-GA / LoRA-One). The initial offset
  ``s B₀ A₀ = U_r V_rᵀ`` has unit singular values (factor rows and columns of norm ``1/√s``, near
  a Kaiming ``A``'s ``1/√3``), which keeps the float32 rounding of the offset base small. One
  gradient step on ``A`` and ``B`` from there moves ``ΔW`` by ``-2η s U_r S_r V_rᵀ`` (to first
  order): the best rank-``r`` approximation of a full fine-tuning step, inside the gradient's
  top-``r`` row and column spaces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from maskrank.errors import ConfigError
from maskrank.models.lora.layer import LoRALinear

__all__ = [
    "check_init_rank",
    "gradient_init",
    "pissa_init",
    "set_offset_factors",
    "top_singular_pairs",
]


def check_init_rank(name: str, r: int, shape: torch.Size, init: str) -> None:
    """An SVD-based init needs ``r <= min(d, k)`` of the layer's weight (d, k)."""
    if r > min(shape):
        raise ConfigError(
            f"{{field}}: init {init} needs rank <= min(shape) but module {name} of shape "
            f"{tuple(shape)} gets rank {r}",
            "lora.r",
        )


@torch.no_grad()
def set_offset_factors(layer: LoRALinear, lora_b: Tensor, lora_a: Tensor) -> None:
    """Set ``B``, ``A`` and offset the base by ``(α/r) B A``: the layer's function is unchanged."""
    base = layer.base_layer.weight
    b, a = lora_b.to(base.dtype), lora_a.to(base.dtype)
    layer.lora_B.weight.copy_(b)
    layer.lora_A.weight.copy_(a)
    base.sub_((layer.scaling * (b.double() @ a.double())).to(base.dtype))


@torch.no_grad()
def pissa_init(layer: LoRALinear) -> None:
    """``B = U_r S_r^{1/2} / √s``, ``A = S_r^{1/2} V_rᵀ / √s`` (``s = α/r``), residual frozen."""
    u, s, vh = torch.linalg.svd(layer.base_layer.weight.double(), full_matrices=False)
    r = layer.r
    root = (s[:r] / layer.scaling).sqrt()  # (r,)
    set_offset_factors(layer, u[:, :r] * root, root[:, None] * vh[:r])


def gradient_init(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Initialise every :class:`LoRALinear` of ``model`` from its full-weight gradient.

    ``G`` (d, k) is ``∂ loss_fn(model(x), y) / ∂W`` averaged over ``batches`` (and over processes
    by ``reduce``, e.g. a DDP mean, so every rank starts alike); then ``B₀ = U_r / √s``,
    ``A₀ = V_rᵀ / √s`` and the base is offset (:func:`set_offset_factors`). Adapters are expected fresh (``B = 0``).
    Nothing else changes: no parameter gets a ``.grad``. Returns the number of batches used.
    """
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    weights = [m.base_layer.weight for m in layers]
    trainable = {p: p.requires_grad for p in model.parameters()}
    grads = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    count = 0
    try:
        # only the base weights need a gradient: with the adapters and the head frozen for
        # these passes the LoRA layers run as plain merged Linears, and backward forms no
        # adapter or head gradient that would be thrown away
        for p in trainable:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for images, labels in batches:
            loss = loss_fn(model(images), labels)
            for total, g in zip(grads, torch.autograd.grad(loss, weights), strict=True):
                total += g.double()
            count += 1
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    if count == 0:
        raise ConfigError(
            "{field}: the training data gave no batch to initialise from", "lora.init"
        )
    with torch.no_grad():
        for layer, total in zip(layers, grads, strict=True):
            mean = total / count
            if reduce is not None:
                mean = reduce(mean)
            u, vh = top_singular_pairs(mean, layer.r)  # (d, r), (r, k)
            c = layer.scaling**-0.5
            set_offset_factors(layer, u * c, vh * c)
    return count


def top_singular_pairs(g: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The top-``r`` singular vectors of ``g`` (d, k): ``U_r`` (d, r) and ``V_rᵀ`` (r, k), float64.

    From the eigenvectors of the smaller Gram matrix (``gᵀg`` (k, k) when ``k <= d``), then
    ``U_r = g V_r / σ_r``: exact, and for a ViT's (3D, D) or (4D, D) weight a D x D
    eigenproblem instead of an SVD of the whole matrix (``scripts/benchmarks/bench_adapt.py`` times
    both). Falls back to a full SVD when ``σ_r`` is too small for the division (a gradient of rank
    below ``r``).
    """
    g = g.double()
    if g.shape[0] < g.shape[1]:
        v, uh = top_singular_pairs(g.t(), r)  # g = (gᵀ)ᵀ: the roles of U and V swap
        return uh.t(), v.t()
    values, vectors = torch.linalg.eigh(g.t() @ g)  # ascending, (k,), (k, k)
    sigma = values[-r:].flip(0).clamp_min(0.0).sqrt()  # (r,)
    if float(sigma[-1]) <= 1e-6 * float(sigma[0]):
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        return u[:, :r], vh[:r]
    v = vectors[:, -r:].flip(1)  # (k, r)
    return g @ v / sigma, v.t()
