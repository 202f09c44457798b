"""How much of a gradient a low-rank projection keeps (SCIENCE.md §8, GaLore).

For a gradient ``G`` (m, n) and a basis with orthonormal columns, ``P`` (m, r) projecting rows or
``Q`` (n, r) projecting columns, the captured energy is ``‖Pᵀ G‖_F² / ‖G‖_F²`` or
``‖G Q‖_F² / ‖G‖_F²`` ∈ [0, 1]: 1 when the gradient lies in the projection's subspace, about
``r / m`` (or ``r / n``) for an unrelated subspace. With ``P`` the top-``r`` singular vectors of
``G`` itself it is the energy fraction of ``G``'s top ``r`` singular values.
Work happens in float64 (see :mod:`maskrank.metrics.subspace` for the conventions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from maskrank.metrics._checks import as_matrix64

__all__ = ["captured_energy"]


@torch.no_grad()
def captured_energy(G: Tensor, basis: Tensor, *, rows: bool) -> float:
    """Fraction of ``‖G‖_F²`` inside the span of ``basis`` (rows: ``basis`` (m, r), else (n, r)).

    Raises:
        ValueError: shapes that do not fit, an all-zero ``G``, or invalid matrices.
    """
    g = as_matrix64(G, "G")  # (m, n)
    b = as_matrix64(basis, "basis").to(g.device)  # (m, r) or (n, r)
    side = g.shape[0] if rows else g.shape[1]
    if b.shape[0] != side or b.shape[1] > side:
        raise ValueError(
            f"basis of shape {tuple(b.shape)} does not fit the "
            f"{'rows' if rows else 'columns'} of G {tuple(g.shape)}"
        )
    total = float(g.square().sum())
    if total == 0.0:
        raise ValueError("G is all-zero: the captured fraction of its energy is undefined")
    kept = b.T @ g if rows else g @ b  # (r, n) or (m, r)
    return min(1.0, float(kept.square().sum()) / total)
