"""Covariance-spectrum metrics of features (N, D): α-ReQ and participation ratio (SCIENCE.md §1).

α-ReQ follows Agrawal, Mondal, Ghosh & Richards, "α-ReQ: Assessing representation quality in
self-supervised learning by measuring eigenspectrum decay", NeurIPS 2022: the eigenvalues ``λ_i`` of
the (centered) feature covariance decay roughly as ``i^{-α}``, and α is minus the least-squares
slope of ``log λ_i`` on ``log i``. The participation ratio is ``(Σλ_i)² / Σλ_i²``.

Conventions (see also :mod:`maskrank.metrics.spectrum`):

* The covariance is ``C = X_cᵀ X_c / N`` with ``X_c = X - mean(X)`` (or ``X`` itself with
  ``center=False``, the second-moment matrix ``E[x xᵀ]``). Dividing by N rather than N - 1 keeps
  N = 1 defined; neither metric depends on the scale of C.
* Its eigenvalues are the squared singular values of ``X_c / √N``, computed by
  :func:`~maskrank.metrics.spectrum.singular_values` (float64, input's device). For N < D this is
  the N×N Gram route automatically (same nonzero eigenvalues, much cheaper); the ``D - N`` missing
  eigenvalues are exact zeros.
* Edge cases: NaN/inf, empty or non-2-D input raise :class:`ValueError`. A single sample, or N
  identical samples, has zero centered covariance: the participation ratio is then 0.0 (rank 0, the
  convention of the spectrum metrics) and α-ReQ raises :class:`ValueError` (no eigenvalue to fit).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from maskrank.metrics._checks import (
    Method,
    as_matrix64,
    as_vector64,
    check_fraction,
    check_positive_int,
)
from maskrank.metrics.spectrum import singular_values

__all__ = ["alpha_req", "covariance_eigenvalues", "participation_ratio"]


@torch.no_grad()
def covariance_eigenvalues(
    features: Tensor, *, center: bool = True, method: Method = "auto"
) -> Tensor:
    """Eigenvalues of the feature covariance ``X_cᵀ X_c / N``, descending, float64, shape (D,).

    SCIENCE.md §1 (the spectrum α-ReQ and the participation ratio are computed on). ``features``
    is (N, D); with ``center=False`` the mean is not subtracted. For N < D the trailing ``D - N``
    eigenvalues are exact zeros (the Gram route only computes the ``min(N, D)`` others).

    Raises:
        ValueError: not 2-D, empty, NaN/inf entries, or a covariance that overflows float64.
    """
    x = as_matrix64(features, "features")  # (N, D)
    n, d = x.shape
    if center:
        x = x - x.mean(dim=0, keepdim=True)  # (N, D)
    sv = singular_values(x, method=method)  # (min(N, D),)
    eig = sv.square() / n  # (min(N, D),)
    if not bool(torch.isfinite(eig).all()):
        raise ValueError("the feature covariance overflows float64; rescale the features")
    if eig.numel() < d:
        eig = torch.cat([eig, eig.new_zeros(d - eig.numel())])  # (D,)
    return eig


def _eigenvalues(
    features: Tensor | None, eigenvalues: Tensor | None, center: bool, method: Method
) -> Tensor:
    """Descending float64 covariance eigenvalues (on the CPU) from exactly one of the two inputs."""
    if (features is None) == (eigenvalues is None):
        raise ValueError("pass exactly one of features and eigenvalues=")
    if eigenvalues is None:
        lam = covariance_eigenvalues(features, center=center, method=method)  # type: ignore[arg-type]
    else:
        lam = as_vector64(eigenvalues, "eigenvalues", nonnegative=True)
    return torch.sort(lam.cpu(), descending=True).values  # (D,)


@torch.no_grad()
def alpha_req(
    features: Tensor | None = None,
    *,
    eigenvalues: Tensor | None = None,
    center: bool = True,
    rel_tol: float = 1e-10,
    max_rank: int | None = None,
    method: Method = "auto",
) -> float:
    """α-ReQ: minus the least-squares slope of ``log λ_i`` on ``log i`` (SCIENCE.md §1).

    Agrawal et al., NeurIPS 2022. Pass ``features`` (N, D) or precomputed covariance
    ``eigenvalues`` (D,). The fit uses the leading eigenvalues above numerical noise,
    ``λ_i > rel_tol · λ_1`` (default ``1e-10``: above float64 round-off of the decomposition,
    ~1e-13 λ_1 for D ≤ 10⁴, and the float32 quantization of the inputs, ~1e-14 λ_1), and at most
    the first ``max_rank`` of them when given (e.g. to fit only the head of a spectrum whose tail
    is sampling noise). Invariant to the scale of the features.

    Raises:
        ValueError: fewer than 2 usable eigenvalues (e.g. zero covariance: a single sample or
            identical samples; rank-1 features), or invalid arguments / inputs.
    """
    rel_tol = check_fraction(rel_tol, "rel_tol")
    if max_rank is not None and check_positive_int(max_rank, "max_rank") < 2:
        raise ValueError(f"max_rank = {max_rank} must be >= 2 (a slope needs two points)")
    lam = _eigenvalues(features, eigenvalues, center, method)  # (D,)
    if float(lam[0]) == 0.0:
        raise ValueError(
            "α-ReQ is undefined for a zero covariance (one sample or identical samples)"
        )
    usable = lam[lam > rel_tol * lam[0]]  # (K,) a prefix, since lam is sorted
    if max_rank is not None:
        usable = usable[: int(max_rank)]
    if usable.numel() < 2:
        raise ValueError(
            f"α-ReQ needs at least 2 eigenvalues above {rel_tol:g}·λ_1 to fit a slope, "
            f"found {usable.numel()} (the features have rank < 2)"
        )
    x = torch.arange(1, usable.numel() + 1, dtype=torch.float64).log()  # (K,) log i
    y = (usable / usable[0]).log()  # (K,) log λ_i up to a constant
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / xc.square().sum())
    if not math.isfinite(slope):  # cannot happen for K >= 2 positive eigenvalues; kept as a guard
        raise ValueError("α-ReQ fit produced a non-finite slope")
    return -slope


@torch.no_grad()
def participation_ratio(
    features: Tensor | None = None,
    *,
    eigenvalues: Tensor | None = None,
    center: bool = True,
    method: Method = "auto",
) -> float:
    """Participation ratio ``(Σλ_i)² / Σλ_i²`` of the covariance eigenvalues (SCIENCE.md §1).

    Pass ``features`` (N, D) or precomputed covariance ``eigenvalues`` (D,). Lies in [1, rank(C)];
    equals D for isotropic features; scale invariant. Zero covariance (one sample, identical
    samples, or all-zero eigenvalues): 0.0, the rank-0 convention of the spectrum metrics.
    """
    lam = _eigenvalues(features, eigenvalues, center, method)  # (D,)
    if float(lam[0]) == 0.0:
        return 0.0
    r = lam / lam[0]  # (D,) in [0, 1]: no overflow in the squares
    return float(r.sum().square() / r.square().sum())
