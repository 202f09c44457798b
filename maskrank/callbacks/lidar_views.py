"""LiDAR's input for the representation monitor: augmented views of a fixed set (SCIENCE.md §9).

``samples`` fixed training images, each in ``views`` views made by the datamodule's own training
augmentation from a fixed seed (:meth:`maskrank.data.ImageData.augmented_views`: the device-side
crop and flip for in-memory data, crops of the original file by the loader workers' crop function
for file-backed and streaming data): every evaluation sees the same views, so LiDAR curves compare
like with like, and the global RNG that training uses is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
from torch import Tensor

from maskrank.callbacks._features import embed
from maskrank.data import is_image_data
from maskrank.errors import ConfigError
from maskrank.metrics import lidar

__all__ = ["LIDAR_VIEW_SEED", "LidarSpec", "lidar_embeddings", "lidar_metrics"]

LIDAR_VIEW_SEED = 4242


@dataclass(frozen=True)
class LidarSpec:
    """LiDAR settings of ``RepresentationRankMonitor`` (``lidar: {views: 8, samples: 1000}``).

    Args:
        views: augmented views per sample (``q`` >= 2; Thilak et al. use 8 or more).
        samples: fixed training images (``n`` >= 2), clamped to the training split's size.
    """

    views: int = 8
    samples: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 2:
            raise ConfigError(
                f"RepresentationRankMonitor lidar.views must be an int >= 2 (LiDAR compares the "
                f"views of one sample), got {self.views!r}"
            )
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ConfigError(
                f"RepresentationRankMonitor lidar.samples must be an int >= 2, got {self.samples!r}"
            )


def check_augmenting(datamodule: object) -> None:
    """ConfigError unless the datamodule augments its training images (LiDAR's views need it)."""
    if not is_image_data(datamodule) or not datamodule.augment:
        raise ConfigError(
            "RepresentationRankMonitor lidar needs the datamodule's training augmentation, but "
            f"{type(datamodule).__name__} does not augment (data.init_args.augment is false or "
            "it is not a maskrank datamodule); drop lidar or set data.init_args.augment true"
        )


def lidar_embeddings(
    trainer: pl.Trainer, pl_module: pl.LightningModule, spec: LidarSpec, batch_size: int
) -> dict[str, Tensor]:
    """``final_cls`` and ``final_mean`` embeddings (n, q, D) of the views, on every rank."""
    dm = trainer.datamodule  # checked by check_augmenting in the monitor's setup
    views = dm.augmented_views(spec.samples, spec.views, LIDAR_VIEW_SEED, pl_module.device)
    # (n, q, C, S, S): every rank makes the same views, then embeds its shard
    n, q = views.shape[:2]
    dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), views.dtype)
    features = embed(trainer, pl_module, views.flatten(0, 1).to(dtype), batch_size)
    return {name: value.reshape(n, q, -1) for name, value in features.items()}  # (n, q, D)


def lidar_metrics(embeddings: dict[str, Tensor]) -> dict[str, float]:
    """``rank/<where>/lidar`` for every ``<where>`` of ``embeddings`` (n, q, D)."""
    return {f"rank/{where}/lidar": lidar(e.double().cpu()) for where, e in embeddings.items()}
