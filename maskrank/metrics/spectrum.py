"""Spectrum metrics of a matrix ``A`` of shape (N, D) (SCIENCE.md §1).

Effective rank is RankMe (Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the downstream
performance of pretrained self-supervised representations by their rank", ICML 2023); stable,
numerical and energy rank and the nuclear norm are the classical spectral quantities listed in
SCIENCE.md §1.

Every metric takes either the matrix ``A`` or its precomputed singular values ``sv=`` (exactly one),
so a caller that needs several metrics of one matrix pays for one decomposition; the simplest way is
:func:`spectrum_metrics`, which returns all of them from a single decomposition.

Conventions shared by all functions here:

* **Precision and device.** Work happens in float64 on the input's device (CPU for MPS). The input
  may have any real dtype (float16/bfloat16/float32/float64 or integer); spectra come back as
  float64 tensors on that device, scalar metrics as Python ``float`` (counts as ``int``).
* **Two routes to singular values** (``method=``). ``"svd"`` calls :func:`torch.linalg.svdvals`.
  ``"gram"`` takes ``sqrt`` of the eigenvalues of the smaller Gram matrix (``AᵀA`` or ``AAᵀ``), which
  is 2-4x faster for tall or wide matrices, e.g. (4096, 192). In float64 the Gram route is accurate
  to about ``1e-16 * σ_1² / σ_k²`` relative, i.e. well below 1e-4 for every ``σ_k ≳ 1e-6 σ_1``;
  Gram eigenvalues below ``max(N, D) * 2.2e-16 * σ_1²`` are indistinguishable from round-off and
  are reported as exactly 0 (so ``σ_k ≲ 1e-6 σ_1`` read as 0). That is harmless for these metrics
  (and below float32 input precision anyway); metric values of both routes agree to 1e-4 relative.
  ``"auto"`` (the default) uses the Gram route when ``max(N, D) >= 2 * min(N, D)``, else the SVD.
  When ``max |A_ij|`` lies outside ``[1e-100, 1e100]`` the matrix is first divided by it (and the
  result multiplied back), so neither squaring nor the SVD can overflow or underflow.
* **Edge cases.** NaN/inf entries, an empty or non-2-D input raise :class:`ValueError`. N < D and a
  single sample (N = 1) are ordinary inputs (there are ``min(N, D)`` singular values). An all-zero
  matrix has rank 0, and every rank-like metric (effective, stable, numerical, energy rank and the
  normalized nuclear norm) returns 0 for it, where its formula would read 0/0; the norms are 0.
  This keeps e.g. the update ``ΔW = W - W_0`` at the first step loggable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from maskrank.metrics._checks import (
    Method,
    as_matrix64,
    as_vector64,
    check_fraction,
)

__all__ = [
    "RANKME_EPS",
    "effective_rank",
    "energy_rank",
    "energy_rank_key",
    "frobenius_norm",
    "normalized_nuclear_norm",
    "nuclear_norm",
    "numerical_rank",
    "numerical_rank_key",
    "resolve_method",
    "singular_values",
    "spectral_norm",
    "spectrum_metrics",
    "stable_rank",
]

RANKME_EPS = 1e-7  # ε of RankMe's q_k = σ_k / Σσ_j + ε (SCIENCE.md §1), fixed by the definition
_GRAM_ASPECT = 2  # "auto" picks the Gram route when max(N, D) >= _GRAM_ASPECT * min(N, D)
_F64_EPS = torch.finfo(torch.float64).eps
_SAFE_SCALE = (1e-100, 1e100)  # max |A_ij| range in which float64 squares of A are safe


def resolve_method(shape: Sequence[int], method: Method = "auto") -> Literal["svd", "gram"]:
    """The route ``singular_values`` takes for a matrix of ``shape`` (see the module docstring)."""
    if method not in ("auto", "svd", "gram"):
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
    if method != "auto":
        return method
    return "gram" if max(shape) >= _GRAM_ASPECT * min(shape) else "svd"


def _gram_singular_values(a: Tensor) -> Tensor:
    """Singular values of float64 ``a`` (N, D) via the smaller Gram matrix, descending."""
    n, d = a.shape
    gram = a.T @ a if n >= d else a @ a.T  # (min(N, D), min(N, D))
    eig = torch.linalg.eigvalsh(gram).flip(0)  # (K,) descending
    floor = max(n, d) * _F64_EPS * eig[0].clamp_min(0.0)  # round-off level of the Gram route
    eig = torch.where(eig > floor, eig, torch.zeros_like(eig))  # (K,)
    return eig.sqrt()


@torch.no_grad()
def singular_values(A: Tensor, *, method: Method = "auto") -> Tensor:
    """Singular values of ``A`` (N, D), descending, float64 on ``A``'s device (SCIENCE.md §1).

    Returns ``min(N, D)`` values. An all-zero matrix gives all zeros. See the module docstring for
    the ``"svd"`` / ``"gram"`` / ``"auto"`` routes and their accuracy.

    Raises:
        ValueError: ``A`` is not 2-D, is empty, or has NaN/inf entries; unknown ``method``.
    """
    a = as_matrix64(A, "A")  # (N, D)
    route = resolve_method(a.shape, method)
    scale = float(a.abs().max())
    if scale == 0.0:
        return torch.zeros(min(a.shape), dtype=torch.float64, device=a.device)
    # Rescale only when squaring (Gram route, or inside the SVD) could overflow or underflow;
    # float32/16 inputs never need it, so the common case saves a copy of A.
    rescale = not _SAFE_SCALE[0] < scale < _SAFE_SCALE[1]
    if rescale:
        a = a / scale  # entries in [-1, 1]
    sv = _gram_singular_values(a) if route == "gram" else torch.linalg.svdvals(a)  # (K,)
    return sv * scale if rescale else sv


def _spectrum(A: Tensor | None, sv: Tensor | None, method: Method) -> Tensor:
    """Descending float64 singular values from exactly one of ``A`` and ``sv``."""
    if (A is None) == (sv is None):
        raise ValueError("pass exactly one of the matrix A and its singular values sv=")
    if sv is None:
        values = singular_values(A, method=method)  # type: ignore[arg-type]  # (K,)
    else:
        values = torch.sort(as_vector64(sv, "sv", nonnegative=True), descending=True).values
    return values.cpu()  # (K,) tiny: the scalar kernels below then run without device syncs


# Kernels on a validated descending spectrum s (K,) float64; rank-like ones return 0 when s = 0.


def _erank(s: Tensor) -> float:
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    q = s / total + RANKME_EPS  # (K,)
    return math.exp(float(-(q * q.log()).sum()))


def _stable(s: Tensor) -> float:
    if float(s[0]) == 0.0:
        return 0.0
    return float(((s / s[0]) ** 2).sum())


def _numerical(s: Tensor, tau: float) -> int:
    if float(s[0]) == 0.0:
        return 0
    return int((s > tau * s[0]).sum())


def _energy(s: Tensor, q: float) -> int:
    if float(s[0]) == 0.0:
        return 0
    cum = torch.cumsum((s / s[0]) ** 2, dim=0)  # (K,) nondecreasing
    target = (q * cum[-1]).reshape(1)
    k = int(torch.searchsorted(cum, target)) + 1  # first k with cum[k-1] >= target
    return min(k, s.numel())


def _normalized_nuclear(s: Tensor) -> float:
    if float(s[0]) == 0.0:
        return 0.0
    r = s / s[0]  # (K,) in [0, 1]
    return float(r.sum() / r.square().sum().sqrt())


def _frobenius(s: Tensor) -> float:
    if float(s[0]) == 0.0:
        return 0.0
    return float(s[0] * ((s / s[0]) ** 2).sum().sqrt())


@torch.no_grad()
def effective_rank(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """RankMe effective rank ``exp(-Σ_k q_k log q_k)``, ``q_k = σ_k / Σ_j σ_j + 1e-7``.

    SCIENCE.md §1; Garrido et al., ICML 2023. The sum runs over all ``min(N, D)`` singular values,
    so the ε term makes a rank-1 matrix read ``1 + O(min(N, D) · 1e-7 · 16)`` rather than exactly 1.
    Computed on the raw (uncentered) matrix. All-zero matrix: 0.0 (rank 0). Scale invariant.
    """
    return _erank(_spectrum(A, sv, method))


@torch.no_grad()
def stable_rank(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """Stable rank ``‖A‖_F² / ‖A‖_2² = Σσ_k² / σ_1²`` (SCIENCE.md §1); 0.0 for an all-zero matrix."""
    return _stable(_spectrum(A, sv, method))


@torch.no_grad()
def numerical_rank(
    A: Tensor | None = None,
    *,
    sv: Tensor | None = None,
    tau: float = 1e-3,
    method: Method = "auto",
) -> int:
    """Numerical rank ``#{k : σ_k > τ σ_1}`` for ``0 < τ < 1`` (SCIENCE.md §1); 0 for a zero matrix."""
    tau = check_fraction(tau, "tau")
    return _numerical(_spectrum(A, sv, method), tau)


@torch.no_grad()
def energy_rank(
    A: Tensor | None = None,
    *,
    sv: Tensor | None = None,
    q: float = 0.9,
    method: Method = "auto",
) -> int:
    """Smallest ``k`` with ``Σ_{i≤k} σ_i² ≥ q Σ_i σ_i²``, ``0 < q ≤ 1`` (SCIENCE.md §1).

    The natural LoRA-rank suggestion for an update ``ΔW``. 0 for an all-zero matrix.
    """
    q = check_fraction(q, "q", allow_one=True)
    return _energy(_spectrum(A, sv, method), q)


@torch.no_grad()
def nuclear_norm(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """Nuclear norm ``‖A‖_* = Σσ_k`` (SCIENCE.md §1)."""
    return float(_spectrum(A, sv, method).sum())


@torch.no_grad()
def normalized_nuclear_norm(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """``‖A‖_* / ‖A‖_F ∈ [1, √rank]`` (SCIENCE.md §1); 0.0 for an all-zero matrix (rank 0)."""
    return _normalized_nuclear(_spectrum(A, sv, method))


@torch.no_grad()
def spectral_norm(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """Spectral norm ``‖A‖_2 = σ_1`` (SCIENCE.md §1)."""
    return float(_spectrum(A, sv, method)[0])


@torch.no_grad()
def frobenius_norm(
    A: Tensor | None = None, *, sv: Tensor | None = None, method: Method = "auto"
) -> float:
    """Frobenius norm ``‖A‖_F = sqrt(Σσ_k²)`` (SCIENCE.md §1)."""
    return _frobenius(_spectrum(A, sv, method))


def _fmt(x: float) -> str:
    """Short tag for a threshold: 1e-3 -> '1e-3', 2.5e-4 -> '2.5e-4', 0.9 -> '0.9'."""
    if x >= 0.01:
        return f"{x:g}"
    mantissa, exponent = f"{x:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def numerical_rank_key(tau: float) -> str:
    """Key of the numerical rank at ``tau`` in :func:`spectrum_metrics`, e.g. ``numerical_rank_1e-3``."""
    return f"numerical_rank_{_fmt(tau)}"


def energy_rank_key(q: float) -> str:
    """Key of the energy rank at ``q`` in :func:`spectrum_metrics`, e.g. ``energy_rank_0.99``."""
    return f"energy_rank_{_fmt(q)}"


@torch.no_grad()
def spectrum_metrics(
    A: Tensor | None = None,
    *,
    sv: Tensor | None = None,
    method: Method = "auto",
    taus: Sequence[float] = (1e-3,),
    energies: Sequence[float] = (0.9, 0.99),
) -> dict[str, float]:
    """All SCIENCE.md §1 matrix metrics from one decomposition (RankMe: Garrido et al., ICML 2023).

    Keys: ``effective_rank``, ``stable_rank``, one ``numerical_rank_<τ>`` per ``taus`` (default
    ``numerical_rank_1e-3``), one ``energy_rank_<q>`` per ``energies`` (default ``energy_rank_0.9``
    and ``energy_rank_0.99``), ``nuclear_norm``, ``normalized_nuclear_norm``, ``spectral_norm``,
    ``frobenius_norm``. All values are Python floats (counts too, for uniform logging). Edge cases
    as in the module docstring (a zero matrix gives 0.0 everywhere).
    """
    tau_values = [check_fraction(t, "tau") for t in taus]
    q_values = [check_fraction(q, "q", allow_one=True) for q in energies]
    s = _spectrum(A, sv, method)  # (K,) descending
    out: dict[str, float] = {
        "effective_rank": _erank(s),
        "stable_rank": _stable(s),
    }
    for tau in tau_values:
        out[numerical_rank_key(tau)] = float(_numerical(s, tau))
    for q in q_values:
        out[energy_rank_key(q)] = float(_energy(s, q))
    out["nuclear_norm"] = float(s.sum())
    out["normalized_nuclear_norm"] = _normalized_nuclear(s)
    out["spectral_norm"] = float(s[0])
    out["frobenius_norm"] = _frobenius(s)
    return out
