"""Independent float64 NumPy reference implementations of SCIENCE.md §1 (for the tests only)."""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-7  # RankMe's ε, SCIENCE.md §1


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 NumPy copy of a tensor (exactly the values the metrics see)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def sv(a) -> np.ndarray:
    """Singular values, descending (LAPACK gesdd via NumPy)."""
    return np.linalg.svd(to_numpy(a), compute_uv=False)


def erank(s: np.ndarray) -> float:
    q = s / s.sum() + EPS
    return float(np.exp(-(q * np.log(q)).sum()))


def stable(s: np.ndarray) -> float:
    return float((s**2).sum() / s[0] ** 2)


def numerical(s: np.ndarray, tau: float) -> int:
    return int(np.count_nonzero(s > tau * s[0]))


def energy(s: np.ndarray, q: float) -> int:
    e = s**2
    total = e.sum()
    running = 0.0
    for k, value in enumerate(e, start=1):
        running += value
        if running >= q * total:
            return k
    return len(e)


def all_metrics(a) -> dict[str, float]:
    """The keys of ``spectrum_metrics`` with their default thresholds."""
    s = sv(a)
    return {
        "effective_rank": erank(s),
        "stable_rank": stable(s),
        "numerical_rank_1e-3": float(numerical(s, 1e-3)),
        "energy_rank_0.9": float(energy(s, 0.9)),
        "energy_rank_0.99": float(energy(s, 0.99)),
        "nuclear_norm": float(s.sum()),
        "normalized_nuclear_norm": float(s.sum() / np.sqrt((s**2).sum())),
        "spectral_norm": float(s[0]),
        "frobenius_norm": float(np.sqrt((s**2).sum())),
    }


def cov_eig(x, center: bool = True) -> np.ndarray:
    """Covariance eigenvalues X_cᵀX_c / N, descending (eigvalsh of the D×D matrix)."""
    x = to_numpy(x)
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    lam = np.linalg.eigvalsh(x.T @ x / x.shape[0])[::-1]
    return np.clip(lam, 0.0, None)


def alpha(lam: np.ndarray, rel_tol: float = 1e-10, max_rank: int | None = None) -> float:
    lam = lam[lam > rel_tol * lam[0]][:max_rank]
    i = np.arange(1, len(lam) + 1)
    slope, _ = np.polyfit(np.log(i), np.log(lam), 1)
    return float(-slope)


def participation(lam: np.ndarray) -> float:
    return float(lam.sum() ** 2 / (lam**2).sum())


def assert_close(actual: float, expected: float, rel: float = 1e-4, what: str = "") -> None:
    """|actual - expected| <= rel * |expected| (with a tiny absolute floor for zeros)."""
    assert abs(actual - expected) <= rel * abs(expected) + 1e-12, (what, actual, expected)


def lidar(e, delta: float = 1e-4) -> float:
    """LiDAR (SCIENCE.md §9) from its definition: scatter matrices by explicit sums over samples
    and views, Σ_w^{-1/2} from an SVD, effective rank of the LDA matrix's singular values."""
    e = to_numpy(e)  # (n, q, D)
    n, q, d = e.shape
    mu_i = e.mean(axis=1)
    mu = mu_i.mean(axis=0)
    sb = sum(np.outer(m - mu, m - mu) for m in mu_i) / (n - 1)
    sw = sum(np.outer(e[i, j] - mu_i[i], e[i, j] - mu_i[i]) for i in range(n) for j in range(q))
    sw = sw / (n * (q - 1)) + delta * np.eye(d)
    u, s, _ = np.linalg.svd(sw)  # symmetric positive definite: sw = u diag(s) uᵀ
    w = u @ np.diag(s**-0.5) @ u.T
    return erank(np.linalg.svd(w @ sb @ w, compute_uv=False))


def uniformity(x, t: float = 2.0) -> float:
    """log of the mean over ordered pairs i != j of exp(-t |z_i - z_j|^2), z unit rows."""
    z = to_numpy(x)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    terms = [np.exp(-t * np.sum((z[i] - z[j]) ** 2)) for i in range(n) for j in range(n) if i != j]
    return float(np.log(np.mean(terms)))
