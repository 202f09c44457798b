"""The LoRA forward/backward kernel: ``x W'ᵀ + b`` with ``W' = W₀ + s B A`` merged on the fly (SCIENCE.md §6).

One GEMM forward with the merged weight, a backward with one full-size GEMM plus rank-``r`` products
in their fast orientation, and never the (frozen) ``W₀`` gradient.
``scripts/benchmarks/bench_adapt.py`` measures it against peft's layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lora_linear"]


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
