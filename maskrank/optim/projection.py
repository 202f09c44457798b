"""How GaLore finds the top-``r`` subspace of a gradient at a refresh (SCIENCE.md §8).

Each function takes a gradient ``G`` (m, n) and returns a basis with orthonormal columns of (an
approximation of) its top-``r`` left singular subspace, ``(m, r)``, when ``rows`` is True, or of
its top-``r`` right singular subspace, ``(n, r)``, when it is False. The right subspace of ``G`` is
the left one of ``Gᵀ``, so every method works on ``A = G`` or ``A = Gᵀ`` (d, k) and wants the top
left singular vectors of ``A``. Half-precision gradients are worked on in float32, float32 and
float64 as they are; the basis comes back in the gradient's dtype.

* :func:`svd_basis`: the exact thin SVD of ``A``, ``O(d k min(d, k))``; the singular vectors come
  ordered, with LAPACK's (or cuSOLVER's) signs.
* :func:`randomized_basis`: the randomized range finder of Halko, Martinsson & Tropp ("Finding
  structure with randomness", SIAM Review 2011, Algorithms 4.4 and 5.1): ``Y = A Ω`` with a
  Gaussian test matrix ``Ω`` (k, r + p), ``q`` power iterations with a QR after every product,
  then the SVD of the small ``Qᵀ A`` (r + p, k), through its QR. ``O(d k (r + p) (2 q + 2))``;
  its error bound shrinks as ``(σ_{r+p+1} / σ_r)^(2q+1)``.
* :func:`power_basis`: block power (orthogonal) iteration warm-started from the previous basis
  ``P`` (d, r), as LDAdam (Robert et al., ICLR 2025) tracks its subspace: ``P <- orth(A (Aᵀ P))``,
  ``O(2 d k r)`` per iteration and one QR of a (d, r) matrix, ``d`` the projected side (the
  smaller one under ``proj_type: std``). Starting at the exact basis it returns it, signs
  included (:func:`orthonormal` makes ``R``'s diagonal positive), so the Adam moments kept across
  a refresh stay in the coordinates they were accumulated in while the subspace does not move.

Every QR is :func:`orthonormal`. The randomized range finder re-orthonormalises after every
product: its power iterations apply ``(A Aᵀ)^q A`` to a random start, whose columns all collapse
onto the top singular vector, and in float32 a direction whose ``(σ_i / σ_1)^(2q+1)`` is below
the round-off ``eps ≈ 1.2e-7`` would be lost (a planted-bug test checks that this matters). Block
power iteration does one QR per ``A Aᵀ`` product: from a warm start each column already points at
its own direction, and only ``σ_r² / σ_1²`` above ``eps`` is needed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Projection = Literal["svd", "randomized", "power"]
PROJECTIONS: tuple[str, ...] = ("svd", "randomized", "power")
OVERSAMPLE = 8  # p: extra Gaussian columns of the randomized range finder
RANDOMIZED_POWER_ITERS = 1  # q: power iterations of the randomized range finder
POWER_ITERS = 1  # block power iterations per refresh, warm-started from the previous basis

__all__ = [
    "OVERSAMPLE",
    "POWER_ITERS",
    "PROJECTIONS",
    "RANDOMIZED_POWER_ITERS",
    "Projection",
    "orthonormal",
    "power_basis",
    "randomized_basis",
    "svd_basis",
]


def _work(grad: Tensor) -> Tensor:
    """``grad`` in the dtype decompositions run in: float32 for half precision, else its own."""
    return grad.float() if grad.element_size() < 4 else grad


@torch.no_grad()
def orthonormal(x: Tensor) -> Tensor:
    """Orthonormal basis ``Q`` (d, l) of the columns of ``x`` (d, l), ``d >= l``, by reduced QR.

    The signs are chosen so that ``R = Qᵀ x`` has a non-negative diagonal, which makes ``Q``
    unique for a full-rank ``x`` and equal to ``x`` when ``x`` already has orthonormal columns
    (Householder QR otherwise returns arbitrary signs).
    """
    q, r = torch.linalg.qr(x, mode="reduced")  # (d, l), (l, l)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)  # (l,); 0 counts as +
    return q * signs


@torch.no_grad()
def svd_basis(grad: Tensor, rank: int, rows: bool) -> Tensor:
    """Top-``rank`` left (``rows``) or right singular vectors of ``grad`` (m, n), exactly.

    Returns (m, rank) or (n, rank) in ``grad``'s dtype.
    """
    u, _, vh = torch.linalg.svd(_work(grad), full_matrices=False)  # (m, K), (K,), (K, n)
    basis = u[:, :rank] if rows else vh[:rank].T  # (m, r) or (n, r)
    return basis.to(grad.dtype).contiguous()


@torch.no_grad()
def randomized_basis(
    grad: Tensor,
    rank: int,
    rows: bool,
    *,
    oversample: int = OVERSAMPLE,
    power_iters: int = RANDOMIZED_POWER_ITERS,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Approximate top-``rank`` left (``rows``) or right singular vectors of ``grad`` (m, n).

    Halko et al. 2011: ``Q = orth(A Ω)`` with ``Ω`` (k, l) standard normal, ``l = rank +
    oversample`` (at most ``min(d, k)``); ``power_iters`` times ``Q <- orth(A orth(Aᵀ Q))``; then
    ``B = Qᵀ A`` (l, k), ``B = Ũ S Vᵀ`` and the basis is ``Q Ũ[:, :rank]`` (d, rank). ``Ω`` is
    drawn from ``generator`` (on ``grad``'s device), so a seeded generator gives a reproducible
    basis. Returns (m, rank) or (n, rank) in ``grad``'s dtype.
    """
    a = _work(grad)
    a = a if rows else a.T  # (d, k): its top left singular vectors are wanted
    d, k = a.shape
    width = min(rank + oversample, d, k)
    omega = torch.randn(k, width, generator=generator, device=a.device, dtype=a.dtype)  # (k, l)
    q = orthonormal(a @ omega)  # (d, l)
    for _ in range(power_iters):
        q = orthonormal(a @ orthonormal(a.T @ q))  # (k, l) then (d, l)
    # B = Qᵀ A (l, k) = Rᵀ Q_Bᵀ with Bᵀ = Q_B R: B's left singular vectors are those of the
    # small Rᵀ (l, l), so one QR and an l x l SVD replace the SVD of the wide B
    _, r_small = torch.linalg.qr((q.T @ a).T, mode="r")  # (l, l)
    u_small, _, _ = torch.linalg.svd(r_small.T)  # (l, l)
    basis = q @ u_small[:, :rank]  # (d, r)
    return basis.to(grad.dtype).contiguous()


@torch.no_grad()
def power_basis(grad: Tensor, previous: Tensor, rows: bool, *, iters: int = POWER_ITERS) -> Tensor:
    """Block power iteration for the top left (``rows``) or right singular subspace of ``grad``.

    ``previous`` (d, r), the basis of the last refresh with orthonormal columns, is the start;
    each of the ``iters`` iterations is ``P <- orth(A (Aᵀ P))`` with ``A = grad`` (m, n) or
    ``gradᵀ``. Components outside the top-``r`` subspace shrink by ``(σ_{r+1} / σ_r)²`` per
    iteration. At the exact top-``r`` singular vectors ``A Aᵀ U = U Σ²``, so they are returned
    unchanged (a fixed point, signs included). Returns (m, r) or (n, r) in ``grad``'s dtype.
    """
    a = _work(grad)
    a = a if rows else a.T  # (d, k)
    q = previous.to(a.dtype)  # (d, r)
    for _ in range(iters):
        q = orthonormal(a @ (a.T @ q))  # (k, r) then (d, r)
    return q.to(grad.dtype).contiguous()
