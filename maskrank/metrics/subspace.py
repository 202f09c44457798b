"""Weight updates and subspace drift (SCIENCE.md §3).

For a weight ``W_t`` and its starting value ``W_0`` this module measures the update
``ΔW_t = W_t - W_0`` (effective rank, energy ranks, how many singular values of ``W`` moved) and the
drift of a top-k singular subspace between two times, ``‖U_tᵀ U_s‖_F² / k``: the subspace
similarity φ of LoRA (Hu et al., "LoRA: Low-rank adaptation of large language models", ICLR 2022).
The hypothesis these quantities test is the "law of parsimony" / "compressible dynamics" of Yaras,
Wang, Balzano & Qu (2023, 2024): ``ΔW_t`` stays in a low-dimensional subspace, so its energy rank is
far below ``min(m, n)``.

Work happens in float64 on the input's device (CPU for MPS), as in
:mod:`maskrank.metrics.spectrum`, whose edge-case conventions apply: NaN/inf, empty or non-2-D
inputs raise :class:`ValueError`; wide matrices (m < n) and single rows are ordinary inputs (there
are ``min(m, n)`` singular values); a zero update (e.g. at the first step) has rank-like metrics 0,
but no top singular subspace (:func:`top_singular_vectors` raises).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from maskrank.metrics._checks import (
    Method,
    as_matrix64,
    check_fraction,
    check_positive_int,
)
from maskrank.metrics.spectrum import (
    effective_rank,
    energy_rank,
    energy_rank_key,
    frobenius_norm,
    singular_values,
)

__all__ = [
    "moved_singular_values",
    "subspace_similarity",
    "top_singular_vectors",
    "update_spectrum",
]


@torch.no_grad()
def top_singular_vectors(A: Tensor, k: int) -> Tensor:
    """The top-``k`` left singular vectors of ``A`` (m, n): float64 ``U`` of shape (m, k).

    SCIENCE.md §3 (subspace drift; Hu et al., ICLR 2022 compare such subspaces with φ). Columns are
    orthonormal, sorted by decreasing singular value; their signs (and any rotation among equal
    singular values) are arbitrary, which :func:`subspace_similarity` does not see. Vectors beyond
    the numerical rank of ``A`` span an arbitrary part of its null space.

    Raises:
        ValueError: ``k`` not in ``[1, min(m, n)]``; ``A`` all-zero (no singular subspace is
            defined), not 2-D, empty, or non-finite.
    """
    a = as_matrix64(A, "A")  # (m, n)
    k = check_positive_int(k, "k")
    if k > min(a.shape):
        raise ValueError(
            f"k = {k} exceeds min(m, n) = {min(a.shape)} for A of shape {tuple(a.shape)}"
        )
    scale = a.abs().max()
    if float(scale) == 0.0:
        raise ValueError("A is all-zero: its singular subspaces are undefined")
    u, _, _ = torch.linalg.svd(a / scale, full_matrices=False)  # (m, min(m, n))
    return u[:, :k].contiguous()  # (m, k)


@torch.no_grad()
def subspace_similarity(U: Tensor, V: Tensor, *, atol: float = 1e-4) -> float:
    """Subspace similarity ``‖Uᵀ V‖_F² / min(k_U, k_V) ∈ [0, 1]`` (SCIENCE.md §3).

    Equal to LoRA's φ (Hu et al., ICLR 2022). ``U`` (m, k_U) and ``V`` (m, k_V) must have
    orthonormal columns (checked to ``atol`` on ``UᵀU - I``), e.g. from :func:`top_singular_vectors`.
    1 when one subspace contains the other, 0 when they are orthogonal, invariant to a rotation of
    either basis within its subspace; for random subspaces its mean is ``max(k_U, k_V) / m``.

    Raises:
        ValueError: not 2-D, different row counts, more columns than rows, non-orthonormal
            columns, or non-finite entries.
    """
    u = as_matrix64(U, "U")  # (m, k_U)
    v = as_matrix64(V, "V")  # (m, k_V)
    if u.shape[0] != v.shape[0]:
        raise ValueError(
            f"U and V must have the same number of rows, got {tuple(u.shape)} and {tuple(v.shape)}"
        )
    v = v.to(u.device)
    for name, basis in (("U", u), ("V", v)):
        m, k = basis.shape
        if k > m:
            raise ValueError(
                f"{name} has {k} columns but only {m} rows: they cannot be orthonormal"
            )
        err = float(
            (basis.T @ basis - torch.eye(k, dtype=basis.dtype, device=basis.device)).abs().max()
        )
        if err > atol:
            raise ValueError(
                f"{name} must have orthonormal columns (max |{name}ᵀ{name} - I| = {err:.2e} > {atol:g})"
            )
    overlap = float((u.T @ v).square().sum()) / min(u.shape[1], v.shape[1])
    return min(1.0, max(0.0, overlap))


def _moved(s_w: Tensor, s_w0: Tensor, rtol: float, atol: float) -> int:
    """Count of ``|σ_k(W) - σ_k(W0)| > rtol σ_k(W0) + atol max(σ_1(W), σ_1(W0))`` (s: (K,))."""
    scale = torch.maximum(s_w[0], s_w0[0])
    if float(scale) == 0.0:
        return 0
    moved = (s_w - s_w0).abs() > rtol * s_w0 + atol * scale  # (K,)
    return int(moved.sum())


def _check_pair(W: Tensor, W0: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two same-shape matrices; float64 on ``W``'s work device."""
    w = as_matrix64(W, "W")  # (m, n)
    w0 = as_matrix64(W0, "W0").to(w.device)  # (m, n)
    if w.shape != w0.shape:
        raise ValueError(
            f"W and W0 must have the same shape, got {tuple(w.shape)} and {tuple(w0.shape)}"
        )
    return w, w0


@torch.no_grad()
def moved_singular_values(
    W: Tensor,
    W0: Tensor,
    *,
    rtol: float = 1e-2,
    atol: float = 1e-6,
    method: Method = "auto",
) -> int:
    """How many singular values of ``W`` moved away from those of ``W0`` (SCIENCE.md §3).

    The k-th largest singular value of ``W`` is compared with the k-th largest of ``W0`` and counts
    as moved when ``|σ_k(W) - σ_k(W0)| > rtol · σ_k(W0) + atol · max(σ_1(W), σ_1(W0))``, i.e. a
    relative change of more than ``rtol`` (default 1 %), with an absolute floor ``atol`` relative to
    the larger spectral norm so that round-off on (near-)zero singular values never counts. This is
    ``not numpy.isclose`` index by index, made scale invariant. Both matrices all-zero: 0.

    Raises:
        ValueError: different shapes, invalid tolerances, or invalid matrices (see module docs).
    """
    rtol = check_fraction(rtol, "rtol")
    atol = check_fraction(atol, "atol", allow_zero=True)
    w, w0 = _check_pair(W, W0)
    return _moved(singular_values(w, method=method), singular_values(w0, method=method), rtol, atol)


@torch.no_grad()
def update_spectrum(
    W: Tensor,
    W0: Tensor,
    *,
    energies: Sequence[float] = (0.9, 0.99),
    rtol: float = 1e-2,
    atol: float = 1e-6,
    method: Method = "auto",
) -> dict[str, float]:
    """Metrics of the update ``ΔW = W - W0`` of one weight matrix (SCIENCE.md §3).

    Yaras et al. (2023, 2024) predict a low energy rank of ``ΔW``. Returns Python floats under the
    keys ``effective_rank`` (RankMe of ``ΔW``, Garrido et al., ICML 2023), ``energy_rank_0.9`` and
    ``energy_rank_0.99`` (one ``energy_rank_<q>`` per ``energies``), ``frobenius_norm`` (``‖ΔW‖_F``)
    and ``moved_singular_values`` (see :func:`moved_singular_values` for ``rtol`` / ``atol``). The
    difference is taken in float64, so a small update of a float32 weight is not lost to
    cancellation. ``W == W0`` (the first step): every value is 0.0.

    Raises:
        ValueError: different shapes, invalid arguments, or invalid matrices (see module docs).
    """
    rtol = check_fraction(rtol, "rtol")
    atol = check_fraction(atol, "atol", allow_zero=True)
    w, w0 = _check_pair(W, W0)
    s_delta = singular_values(w - w0, method=method)  # (K,)
    out: dict[str, float] = {"effective_rank": effective_rank(sv=s_delta)}
    for q in energies:
        out[energy_rank_key(q)] = float(energy_rank(sv=s_delta, q=q))
    out["frobenius_norm"] = frobenius_norm(sv=s_delta)
    s_w, s_w0 = singular_values(w, method=method), singular_values(w0, method=method)
    out["moved_singular_values"] = float(_moved(s_w, s_w0, rtol, atol))
    return out
