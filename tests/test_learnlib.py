"""scripts/learning/learnlib.py: the learning checks train exactly what the shipped pretraining
config sets (model, optimiser, schedule, batch, crop), read from the file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from maskrank.models.vit import ViTSpec
from testkit.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrain" / "mae_vit_tiny_cifar10.yaml"


@pytest.fixture(scope="module")
def learnlib():
    return load_script("learning/learnlib.py")


def test_recipe_is_the_shipped_config(learnlib):
    cfg = OmegaConf.load(CONFIG)
    recipe = learnlib.recipe()
    assert recipe.batch_size == cfg.data.init_args.batch_size
    assert recipe.crop_scale == tuple(cfg.data.init_args.crop_scale)
    model = recipe.build()
    hparams = model.hparams
    for key, value in cfg.model.init_args.items():
        if key == "online_probe":  # needs labels: the checks probe offline instead
            assert hparams[key] is False
        elif key == "vit":
            assert hparams[key] == asdict(ViTSpec(**value))
        elif key == "betas":
            assert tuple(hparams[key]) == tuple(value)
        else:
            assert hparams[key] == value, key
    # base_lr is what the config states; the lr follows MAE's rule at the config's batch
    assert model.hparams.lr is None


def test_build_overrides_and_features(learnlib, single_thread):
    recipe = learnlib.recipe()
    vit = ViTSpec(preset="vit_nano_32")
    model = recipe.build(vit=vit, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert model.hparams.vit == asdict(vit)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)

    class Normalize:
        @staticmethod
        def normalize(x: torch.Tensor) -> torch.Tensor:
            return x.float() / 255

    feats = learnlib.features(model, Normalize(), images, batch=2)  # three batches: 2 + 2 + 1
    whole = model.encode(images.float() / 255)
    torch.testing.assert_close(feats["cls"], whole.cls)
    torch.testing.assert_close(feats["mean"], whole.patch_mean)
