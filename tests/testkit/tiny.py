"""The tiny models and data every test uses: one ViT, one MAE, one SyntheticLowRank.

The ViT: img 32, patch 8 (16 patches), 64 wide, 2 blocks, 2 heads. The MAE around it has a 1-block
decoder 32 wide. :func:`tiny_mae` builds the task, :func:`tiny_mae_config` its config entry for the
CLI (the CLI links ``img_size`` from the data); ``TINY_DATA`` / :func:`tiny_data` are 64 training
and 32 held-out images of 4 classes, in batches of 16.
"""

from __future__ import annotations

from typing import Any

import torch

from maskrank.data import SyntheticLowRank
from maskrank.models.vit import ViTSpec
from maskrank.tasks import MAEPretraining

__all__ = [
    "TINY_DATA",
    "TINY_MAE",
    "TINY_VIT",
    "tiny_data",
    "tiny_mae",
    "tiny_mae_config",
]

TINY_VIT = {"preset": "vit_nano_32", "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
TINY_MAE = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
_DATA_ARGS = {"num_classes": 4, "class_rank": 2, "train_size": 64, "val_size": 32, "batch_size": 16}
TINY_DATA = {"class_path": "maskrank.data.SyntheticLowRank", "init_args": dict(_DATA_ARGS)}


def tiny_mae(
    proj_drop_rate: float = 0.0,
    seed: int = 0,
    cls: type[MAEPretraining] = MAEPretraining,
    vit: dict[str, Any] | None = None,
    **overrides: Any,
) -> MAEPretraining:
    """The tiny MAE task (lr 1e-3 unless overridden), its weights drawn after ``manual_seed(seed)``.

    ``vit`` overrides ViT fields (e.g. ``drop_path_rate``); ``cls`` may be a subclass.
    """
    torch.manual_seed(seed)
    spec = ViTSpec(**{**TINY_VIT, "proj_drop_rate": proj_drop_rate, **(vit or {})})
    return cls(vit=spec, **{"img_size": 32, "lr": 1e-3, **TINY_MAE, **overrides})


def tiny_mae_config(vit: dict[str, Any] | None = None, **init_args: Any) -> dict[str, Any]:
    """The tiny MAE as a ``model:`` config entry (ViT overrides in ``vit``)."""
    return {
        "class_path": "maskrank.tasks.MAEPretraining",
        "init_args": {"vit": {**TINY_VIT, **(vit or {})}, **TINY_MAE, **init_args},
    }


def tiny_data(**overrides: Any) -> SyntheticLowRank:
    """64 training images (4 batches of 16) and 32 held-out ones, 4 classes of rank 2."""
    return SyntheticLowRank(**{**_DATA_ARGS, **overrides})
