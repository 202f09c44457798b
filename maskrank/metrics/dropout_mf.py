"""Dropout in matrix factorization and its closed-form optimum (SCIENCE.md §4).

Cavazza, Haeffele, Lane, Morerio, Murino & Vidal, "Dropout as a low-rank regularizer for matrix
factorization", AISTATS 2018. For ``X ≈ U diag(b/θ) Vᵀ`` with ``d`` columns, ``b_i ~ Bernoulli(θ)``,

    ``E_b ‖X - U diag(b/θ) Vᵀ‖_F² = ‖X - UVᵀ‖_F² + λ Σ_i ‖u_i‖² ‖v_i‖²``,  ``λ = p / (1 - p)``.

Over all factorizations of a fixed product ``A = UVᵀ`` (``rank A ≤ d``) the penalty is at least
``(λ/d) ‖A‖_*²`` (Cauchy-Schwarz on ``Σ_i ‖u_i‖‖v_i‖ ≥ ‖A‖_*``), with equality when every
``‖u_i‖‖v_i‖`` equals ``‖A‖_*/d`` ("equalization"). So the dropout problem reduces to

    ``min_{rank A ≤ d} ‖X - A‖_F² + μ ‖A‖_*²``,  ``μ = λ / d``,

whose optimum shares the singular vectors of ``X`` (von Neumann's trace inequality) and has
``σ_i(A*) = (s_i - μ S_k)_+`` with ``s_i = σ_i(X)``, ``S_k = Σ_{i≤k} s_i / (1 + μk)``
(``S_k = Σ_i σ_i(A*)``, from the stationarity condition ``a_i = s_i - μ Σ_j a_j`` on the support).
Derivation of ``k``: ``s_k > μ S_k`` is equivalent to ``s_k > μ Σ_{i<k} (s_i - s_k)``, whose left
side decreases and right side increases with ``k``, so the ``k`` passing it form a prefix
``1..k*``; and ``s_{k+1} ≤ μ S_k`` is equivalent to ``k + 1`` failing it. Trying ``k = 1, 2, …``
until consistent therefore stops at ``k*``. With the rank constraint, the best support of size at
most ``d`` is the top ``min(k*, d)`` (the cost decreases along the prefix), hence
``k = min(k*, d)`` (``k*`` can exceed ``d``, e.g. when ``X`` has many equal singular values).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from maskrank.metrics._checks import (
    as_matrix64,
    check_positive_int,
    check_real_tensor,
    lambda_of,
)

__all__ = [
    "DropoutMFOptimum",
    "dropout_mf_optimum",
    "equalize_factorization",
    "factorization_penalty",
    "factorization_penalty_term",
    "min_factorization_penalty",
]

_RANK_RTOL = 1e-6  # σ_k ≤ _RANK_RTOL σ_1 counts as zero when checking rank(A) ≤ d


def _check_factors(U: Tensor, V: Tensor, validate: bool) -> None:
    """``U`` (m, d) and ``V`` (n, d) must be 2-D with the same number of columns ``d``."""
    for name, t in (("U", U), ("V", V)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got {getattr(t, 'shape', type(t))}")
        if validate:
            check_real_tensor(t, name)
    if U.shape[1] != V.shape[1]:
        raise ValueError(
            f"U (m, d) and V (n, d) need the same d, got {tuple(U.shape)}, {tuple(V.shape)}"
        )


def factorization_penalty_term(U: Tensor, V: Tensor, p: float, *, validate: bool = True) -> Tensor:
    """Differentiable dropout penalty ``λ Σ_i ‖u_i‖² ‖v_i‖²`` of ``X ≈ UVᵀ`` as a 0-d tensor.

    SCIENCE.md §4; Cavazza et al., AISTATS 2018. ``U`` (m, d), ``V`` (n, d); ``u_i``, ``v_i`` are
    their columns. ``validate=False`` skips the finiteness check (a device sync) in training loops.

    Raises:
        ValueError: non-2-D factors, different ``d``, empty/non-finite entries, ``p`` not in [0, 1).
    """
    lam = lambda_of(p)
    _check_factors(U, V, validate)
    return lam * (U.square().sum(dim=0) * V.square().sum(dim=0)).sum()


@torch.no_grad()
def factorization_penalty(U: Tensor, V: Tensor, p: float) -> float:
    """``λ Σ_i ‖u_i‖² ‖v_i‖²`` as a float64-computed Python float (SCIENCE.md §4; Cavazza et al.,
    AISTATS 2018). See :func:`factorization_penalty_term` for shapes and errors."""
    _check_factors(U, V, validate=True)
    u, v = U.detach().double(), V.detach().double().to(U.device)
    return float(factorization_penalty_term(u, v, p, validate=False))


@torch.no_grad()
def min_factorization_penalty(A: Tensor, d: int, p: float) -> float:
    """``(λ/d) ‖A‖_*²``: the smallest dropout penalty of any ``d``-column factorization of ``A``.

    SCIENCE.md §4; Cavazza et al., AISTATS 2018. Reached by :func:`equalize_factorization`.
    An all-zero ``A`` gives 0.0.

    Raises:
        ValueError: ``rank(A) > d`` (``σ_{d+1}(A) > 1e-6 σ_1(A)``: no ``d``-column factorization
            exists), ``d < 1``, ``p`` not in [0, 1), or ``A`` not a finite non-empty matrix.
    """
    lam = lambda_of(p)
    d = check_positive_int(d, "d")
    a = as_matrix64(A, "A")  # (m, n)
    s = torch.linalg.svdvals(a / a.abs().max().clamp_min(1e-300)) * a.abs().max()  # (K,)
    if s.numel() > d and float(s[d]) > _RANK_RTOL * float(s[0]):
        raise ValueError(f"A has rank > d = {d} (σ_{d + 1} / σ_1 = {float(s[d] / s[0]):.2e})")
    return lam / d * float(s.sum()) ** 2


def _equalizing_rotation(sigma: Tensor) -> Tensor:
    """Orthogonal Z (d, d) with ``diag(Zᵀ diag(sigma) Z)`` constant (float64 CPU, sigma (d,)).

    Each Givens rotation in the plane of the largest and smallest diagonal entries of
    ``M = Zᵀ diag(sigma) Z`` sets the largest one exactly to the mean ``t``; the trace is preserved,
    so at most ``d - 1`` rotations equalize the whole diagonal (Schur-Horn, made constructive).
    """
    d = sigma.numel()
    m = torch.diag(sigma).clone()  # (d, d) symmetric
    z = torch.eye(d, dtype=torch.float64)  # (d, d)
    t = float(sigma.sum()) / d
    for _ in range(d):
        diag = m.diagonal()
        i, j = int(diag.argmax()), int(diag.argmin())
        a, c, b = float(diag[i]), float(diag[j]), float(m[i, j])
        if a - c <= 1e-13 * max(t, 1e-300):
            break
        # New column i = cs e_i + sn e_j gives M_ii = a cs² + 2 b cs sn + c sn²; with x = tan θ,
        # setting it to t means (c - t) x² + 2 b x + (a - t) = 0, real roots since a > t > c.
        disc = b * b - (c - t) * (a - t)
        qq = -(b + (1.0 if b >= 0 else -1.0) * disc**0.5)
        x = (a - t) / qq
        cs = 1.0 / (1.0 + x * x) ** 0.5
        sn = x * cs
        for mat in (m, z):  # right-multiply by the rotation G (columns i, j)
            ci, cj = mat[:, i].clone(), mat[:, j].clone()
            mat[:, i], mat[:, j] = cs * ci + sn * cj, -sn * ci + cs * cj
        ri, rj = m[i].clone(), m[j].clone()  # left-multiply M by Gᵀ (rows i, j)
        m[i], m[j] = cs * ri + sn * rj, -sn * ri + cs * rj
    return z


@torch.no_grad()
def equalize_factorization(U: Tensor, V: Tensor) -> tuple[Tensor, Tensor]:
    """A factorization ``U'V'ᵀ = UVᵀ`` with ``d`` columns and all ``‖u'_i‖ = ‖v'_i‖`` equal.

    SCIENCE.md §4; Cavazza et al., AISTATS 2018. Then every ``‖u'_i‖‖v'_i‖ = ‖UVᵀ‖_*/d`` and the
    dropout penalty equals its minimum ``(λ/d)‖UVᵀ‖_*²``. Built from the balanced factorization
    ``P Σ^{1/2}``, ``Q Σ^{1/2}`` of the SVD ``UVᵀ = P Σ Qᵀ``, rotated by an orthogonal matrix that
    equalizes the diagonal of ``Σ``. Returns tensors of ``U``'s and ``V``'s dtypes and device.
    ``UVᵀ = 0`` gives zero factors.

    Raises:
        ValueError: non-2-D factors, different ``d``, empty or non-finite entries.
    """
    _check_factors(U, V, validate=True)
    u = U.detach().double().cpu()  # (m, d)
    v = V.detach().double().cpu()  # (n, d)
    (m, d), n = u.shape, v.shape[0]
    prod = u @ v.T  # (m, n), rank ≤ d
    scale = float(prod.abs().max())
    if scale == 0.0:
        return torch.zeros_like(U), torch.zeros_like(V)
    p_vec, s, qh = torch.linalg.svd(prod / scale, full_matrices=False)  # (m, K), (K,), (K, n)
    r = min(d, s.numel())  # components beyond d are round-off (rank ≤ d)
    root = (s[:r] * scale).sqrt()  # (r,)
    u0 = torch.zeros(m, d, dtype=torch.float64)
    v0 = torch.zeros(n, d, dtype=torch.float64)
    u0[:, :r] = p_vec[:, :r] * root  # (m, r)
    v0[:, :r] = qh[:r].T * root  # (n, r)
    sigma = torch.zeros(d, dtype=torch.float64)
    sigma[:r] = s[:r] * scale  # (d,) u0ᵀu0 = v0ᵀv0 = diag(sigma)
    z = _equalizing_rotation(sigma)  # (d, d)
    return (u0 @ z).to(U), (v0 @ z).to(V)


class DropoutMFOptimum(NamedTuple):
    """Closed-form optimum of dropout matrix factorization (see :func:`dropout_mf_optimum`)."""

    product: Tensor  # (m, n) float64, the optimal A* = U*V*ᵀ
    rank: int  # k, the number of nonzero singular values of A*
    singular_values: Tensor  # (min(m, n),) float64 descending σ_i(A*) = (σ_i(X) - μS_k)_+
    shrinkage: float  # μ S_k, subtracted from the top-k singular values of X
    loss: float  # optimal expected loss ‖X - A*‖_F² + (λ/d)‖A*‖_*²


@torch.no_grad()
def dropout_mf_optimum(X: Tensor, d: int, p: float) -> DropoutMFOptimum:
    """Global minimiser of ``E_b ‖X - U diag(b/θ) Vᵀ‖_F²`` over ``U`` (m, d), ``V`` (n, d).

    SCIENCE.md §4; Cavazza et al., AISTATS 2018. Singular-value thresholding
    ``σ_i(A*) = (σ_i(X) - μ S_k)_+`` with ``μ = λ/d``, ``S_k = Σ_{i≤k} σ_i(X)/(1 + μk)`` and
    ``k = min(k*, d)``, ``k*`` the largest ``k`` with ``σ_k(X) > μ S_k`` (derivation in the module
    docstring); ``A*`` keeps the singular vectors of ``X``. ``p = 0`` gives the best rank-``d``
    approximation (truncated SVD); ``X = 0`` gives ``A* = 0`` and ``k = 0``; any shape (m < n, a
    single row) works, with ``k ≤ min(m, n, d)``. Computed in float64
    on ``X``'s work device. A factorization reaching the optimum is
    ``equalize_factorization(P_k Σ*^{1/2}, Q_k Σ*^{1/2})`` padded to ``d`` columns.

    Raises:
        ValueError: ``d < 1``, ``p`` not in [0, 1), ``X`` not a finite non-empty matrix.
    """
    lam = lambda_of(p)
    d = check_positive_int(d, "d")
    x = as_matrix64(X, "X")  # (m, n)
    mu = lam / d
    scale = x.abs().max().clamp_min(1e-300)
    p_vec, s, qh = torch.linalg.svd(x / scale, full_matrices=False)  # (m, K), (K,), (K, n)
    s = s * scale  # (K,) σ_i(X) descending
    kmax = min(d, s.numel())
    ks = torch.arange(1, kmax + 1, dtype=torch.float64, device=s.device)  # (kmax,)
    s_k = torch.cumsum(s[:kmax], dim=0) / (1.0 + mu * ks)  # (kmax,) S_k
    ok = (s[:kmax] > mu * s_k).cpu()  # (kmax,) a prefix of True values
    k = int(ok.long().cumprod(dim=0).sum())  # length of the leading run of True
    shrink = mu * float(s_k[k - 1]) if k > 0 else 0.0
    out = torch.zeros_like(s)  # (K,)
    out[:k] = s[:k] - shrink
    product = (p_vec[:, :k] * out[:k]) @ qh[:k]  # (m, n)
    loss = float((s - out).square().sum()) + mu * float(out.sum()) ** 2
    return DropoutMFOptimum(product, k, out, shrink, loss)
