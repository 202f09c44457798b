"""LiDAR: effective rank of the LDA matrix of augmented views (Thilak et al., ICLR 2024; §9).

Every sample ``i`` of ``n`` is embedded in ``q`` augmented views ``e_ij`` (D,). With ``μ_i`` the
mean over a sample's views and ``μ`` the mean of the ``μ_i``:

* between-sample scatter ``Σ_b = 1/(n-1) Σ_i (μ_i - μ)(μ_i - μ)ᵀ``;
* within-sample (augmentation) scatter ``Σ_w = 1/(n(q-1)) Σ_ij (e_ij - μ_i)(e_ij - μ_i)ᵀ + δI``;
* LiDAR = effective rank (RankMe's formula, SCIENCE.md §1) of the eigenvalues of
  ``Σ_w^{-1/2} Σ_b Σ_w^{-1/2}``.

Like RankMe it needs no labels, but it counts only the directions along which samples differ more
than the views of one sample do: a direction that only encodes augmentation noise does not count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from maskrank.metrics._checks import check_real_tensor, work_device
from maskrank.metrics.spectrum import effective_rank

__all__ = ["LIDAR_DELTA", "lda_matrix", "lidar"]

LIDAR_DELTA = 1e-4  # δ of Thilak et al.: keeps Σ_w invertible


def _views64(embeddings: object) -> Tensor:
    t = check_real_tensor(embeddings, "LiDAR embeddings")
    if t.ndim != 3:
        raise ValueError(
            f"LiDAR embeddings must be (n samples, q views, D), got shape {tuple(t.shape)}"
        )
    n, q, _ = t.shape
    if n < 2:
        raise ValueError(f"LiDAR needs at least 2 samples (a between-sample scatter), got {n}")
    if q < 2:
        raise ValueError(f"LiDAR needs at least 2 views per sample (a within scatter), got {q}")
    return t.detach().to(device=work_device(t), dtype=torch.float64)  # (n, q, D)


def lda_matrix(embeddings: Tensor, delta: float = LIDAR_DELTA) -> Tensor:
    """``Σ_w^{-1/2} Σ_b Σ_w^{-1/2}`` (D, D), float64, of ``embeddings`` (n, q, D).

    Raises ValueError for fewer than 2 samples or views, non-finite values or ``delta <= 0``.
    """
    e = _views64(embeddings)  # (n, q, D)
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"LiDAR delta must be a finite number > 0, got {delta!r}")
    n, q, d = e.shape
    mu_i = e.mean(dim=1)  # (n, D)
    between = mu_i - mu_i.mean(dim=0)  # (n, D)
    sigma_b = between.T @ between / (n - 1)  # (D, D)
    within = (e - mu_i[:, None]).reshape(n * q, d)  # (n q, D)
    sigma_w = within.T @ within / (n * (q - 1))  # (D, D)
    sigma_w = sigma_w + delta * torch.eye(d, dtype=e.dtype, device=e.device)
    evals, evecs = torch.linalg.eigh(sigma_w)  # ascending, all >= delta up to rounding
    inv_sqrt = (evecs * evals.clamp_min(delta * 1e-3).rsqrt()) @ evecs.T  # (D, D) Σ_w^{-1/2}
    lda = inv_sqrt @ sigma_b @ inv_sqrt
    return (lda + lda.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle


def lidar(embeddings: Tensor, delta: float = LIDAR_DELTA) -> float:
    """LiDAR of ``embeddings`` (n samples, q views, D) (Thilak et al., ICLR 2024; SCIENCE.md §9).

    In ``[1, D]`` (0 when every sample has the same mean embedding); 1 when the embeddings vary
    along one direction only. ``delta`` is δ in ``Σ_w + δI``; it is absolute, so LiDAR depends on
    the feature scale through it (negligibly for layer-normalised ViT features, whose within
    scatter is far above 1e-4). Computed in float64 on the input's device.

    Raises ValueError for fewer than 2 samples or views, non-finite values or ``delta <= 0``.
    """
    eig = torch.linalg.eigvalsh(lda_matrix(embeddings, delta)).clamp_min(0.0)  # (D,) PSD
    return effective_rank(sv=eig)
