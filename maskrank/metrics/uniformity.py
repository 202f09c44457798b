"""Uniformity of L2-normalised features (Wang & Isola 2020; U-MAE, Zhang et al. 2022; §9).

``log mean_{i≠j} exp(-t ‖z_i - z_j‖²)`` with ``z = x / ‖x‖``: about 0 when every feature points the
same way (collapse), lower (down to about ``-2t`` for many features) the more uniformly they cover
the sphere. A differentiable regulariser: adding ``weight * uniformity_loss(features)`` to a loss
spreads features over more directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["uniformity_loss"]


def uniformity_loss(features: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{i≠j} exp(-t ‖z_i - z_j‖²)`` of the rows of ``features`` (N, D), as a 0-d tensor.

    Differentiable, in the features' dtype (no device sync: the training loss calls it every
    step). ``‖z_i - z_j‖² = 2 - 2 z_i·z_j`` for unit rows, and the mean over the ``N (N - 1)``
    off-diagonal pairs is taken in log space (``logsumexp``), so it cannot underflow to ``log 0``.

    Raises ValueError for a non-2-D input, fewer than 2 rows, or ``t <= 0``.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"uniformity_loss needs a 2-D (N, D) feature matrix, got {shape}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"uniformity_loss needs at least 2 features (pairs), got {n}")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"uniformity_loss: t must be a finite number > 0, got {t!r}")
    z = F.normalize(features, dim=1)  # (N, D)
    sq_dist = (2.0 - 2.0 * (z @ z.T)).clamp_min(0.0)  # (N, N)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)  # (N, N)
    logits = (-t * sq_dist)[off_diagonal]  # (N (N - 1),)
    return torch.logsumexp(logits, dim=0) - math.log(n * (n - 1))
