"""Shared pieces of the CIFAR-10 learning checks: the shipped recipe, the data, frozen features.

The learning scripts ``import learnlib``: Python puts a script's own folder first on ``sys.path``.

- ``recipe``: the MAE pretraining recipe of ``configs/pretrain/mae_vit_tiny_cifar10.yaml`` (model
  arguments and the data's batch size and crop), read from the file so a check trains exactly what
  the config ships;
- ``cifar_subset``: an ImageFolder CIFAR-10 datamodule on a training subset, set up for fit;
- ``quiet_trainer``: a Trainer without logger, checkpoints, progress bar or sanity validation;
- ``probe_accuracies``: logistic-regression probe accuracy (``maskrank.metrics.linear_probe_accuracy``)
  on frozen CLS and mean-patch features, for the training subset against held-out test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from maskrank.data import ImageFolderDataModule
from maskrank.metrics import linear_probe_accuracy
from maskrank.models.vit import ViTSpec
from maskrank.tasks import MAEPretraining

PRETRAIN_CONFIG = Path(__file__).resolve().parents[2] / "configs/pretrain/mae_vit_tiny_cifar10.yaml"
FEATURES = ("cls", "mean")


@dataclass(frozen=True)
class Recipe:
    """What the shipped pretraining config sets: model arguments, batch size and crop scale."""

    model: dict[str, Any]
    batch_size: int
    crop_scale: tuple[float, float]

    def build(self, **overrides: Any) -> MAEPretraining:
        """The config's MAE (without its online probe, which needs labels) with ``overrides``."""
        args = {**self.model, "online_probe": False, **overrides}
        return MAEPretraining(**args)


def recipe(config: Path = PRETRAIN_CONFIG) -> Recipe:
    """Read ``config``'s model ``init_args`` and data batch size / crop scale."""
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    model = dict(cfg["model"]["init_args"])
    model["vit"] = ViTSpec(**model["vit"])
    model["betas"] = tuple(model["betas"])
    data = cfg["data"]["init_args"]
    return Recipe(model, int(data["batch_size"]), tuple(data["crop_scale"]))


def cifar_subset(
    root: str, batch_size: int, train_images: int, crop_scale: tuple[float, float]
) -> ImageFolderDataModule:
    """CIFAR-10 at 32 px from ``root/train`` and ``root/test``, ``train_images`` training images."""
    dm = ImageFolderDataModule(
        root=root,
        image_size=32,
        batch_size=batch_size,
        train_subset=train_images,
        crop_scale=crop_scale,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer that writes nothing and prints no progress: the scripts print their own table."""
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **kwargs})


@torch.no_grad()
def features(
    model: MAEPretraining, dm: ImageFolderDataModule, images: torch.Tensor, batch: int = 256
) -> dict[str, torch.Tensor]:
    """CLS and mean-patch features (N, D) of uint8 images (N, 3, 32, 32), unmasked, eval mode."""
    model.eval()
    cls, mean = [], []
    for start in range(0, images.shape[0], batch):
        f = model.encode(dm.normalize(images[start : start + batch]))
        cls.append(f.cls)
        mean.append(f.patch_mean)
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


def probe_accuracies(
    model: MAEPretraining, dm: ImageFolderDataModule, test_images: int
) -> dict[str, float]:
    """Probe accuracy per feature: fit on the whole training subset, score on ``test_images``."""
    train = dm.train_dataloader().dataset  # TensorPairs: the subset's uint8 images and labels
    test_x, test_y = dm.probe_batch(test_images)
    tr = features(model, dm, train.images)
    te = features(model, dm, test_x)
    return {k: linear_probe_accuracy(tr[k], train.labels, te[k], test_y) for k in FEATURES}
