"""Principal angles between an adapter's update and a full fine-tune's top subspace (SCIENCE.md §3, §8).

For a module, ``ΔW_adapter = W_adapted - W₀`` (the merged weight minus the encoder both runs
started from: for PiSSA or gradient inits the offset cancels, so this is the real update) and
``ΔW_full = W_finetuned - W₀``. The principal angles ``θ_i = arccos σ_i(U_aᵀ U_f)`` between their
top-``k`` left (output-side) singular subspaces say whether the adapter moved the weight where a
full fine-tune moves it: 0° inside, 90° orthogonal; random ``k``-dim subspaces of ``R^d`` give
``cos² θ ≈ k / d`` on average.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from maskrank.metrics import top_singular_vectors

__all__ = ["principal_angles", "update_angles"]


@torch.no_grad()
def principal_angles(u: Tensor, v: Tensor) -> Tensor:
    """Principal angles in degrees (ascending) between the column spaces of orthonormal ``u``, ``v``.

    ``u`` (m, k_u), ``v`` (m, k_v); ``min(k_u, k_v)`` angles, float64.
    """
    cosines = torch.linalg.svdvals(u.double().t() @ v.double()).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).flip(0)


@torch.no_grad()
def update_angles(
    adapted: dict[str, Tensor],
    finetuned: dict[str, Tensor],
    base: dict[str, Tensor],
    k: int,
) -> dict[str, dict[str, float]]:
    """Per module of ``adapted``: the principal angles of ``ΔW`` vs the fine-tune's top-``k`` subspace.

    All three map module names to weights (d, k_in). Returns ``{module: {"mean_deg", "max_deg",
    "cos2_mean"}}`` for modules whose updates are both non-zero (``k`` capped by their shapes).
    """
    out: dict[str, dict[str, float]] = {}
    for name, weight in adapted.items():
        if name not in finetuned or name not in base:
            continue
        d_a = weight.double() - base[name].double()
        d_f = finetuned[name].double() - base[name].double()
        if not (d_a.abs().max() > 0 and d_f.abs().max() > 0):
            continue
        kk = min(k, *d_a.shape)
        angles = principal_angles(top_singular_vectors(d_a, kk), top_singular_vectors(d_f, kk))
        out[name] = {
            "mean_deg": float(angles.mean()),
            "max_deg": float(angles.max()),
            "cos2_mean": float(torch.cos(angles * math.pi / 180).square().mean()),
        }
    return out
