"""Tiny models and data shared by the callback tests (img 32, patch 8, 64 wide, 2 blocks)."""

from __future__ import annotations

import torch

from maskrank.data import SyntheticLowRank
from maskrank.models.vit import ViTSpec
from maskrank.tasks import MAEPretraining
from tests_helpers import TINY_VIT

__all__ = ["TINY_VIT", "tiny_data", "tiny_mae"]


def tiny_mae(proj_drop_rate: float = 0.0, seed: int = 0) -> MAEPretraining:
    """The tiny ViT encoder (64 wide, 2 blocks, 16 patches) with a 1-block decoder."""
    torch.manual_seed(seed)
    spec = ViTSpec(**TINY_VIT, proj_drop_rate=proj_drop_rate)
    return MAEPretraining(
        vit=spec, img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, lr=1e-3
    )


def tiny_data(**kw) -> SyntheticLowRank:
    """64 training images (4 batches of 16), 32 held-out images."""
    args = dict(num_classes=4, class_rank=2, train_size=64, val_size=32, batch_size=16)
    return SyntheticLowRank(**{**args, **kw})
