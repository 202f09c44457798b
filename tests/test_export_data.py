"""An exported classifier carries its training data's preprocessing and class names to timm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
import yaml
from PIL import Image

from maskrank.cli import main
from maskrank.cli.lightning import build_cli
from testkit.tiny import TINY_VIT

CLASSES = ["cat", "dog", "frog"]
MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    """40x40 RGB PNGs: a class colour plus noise, so resizing to 32 resamples every pixel."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((40, 40, 3)) + 60
                base[..., k] += 80
                pixels = np.clip(base + rng.normal(0, 50, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def _config(tmp_path: Path, root: Path) -> Path:
    cfg = {
        "trainer": {
            "max_epochs": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "exp"},
            },
        },
        "model": {
            "class_path": "maskrank.tasks.ImageClassifier",
            "init_args": {"vit": TINY_VIT, "lr": 3e-3, "warmup_fraction": 0.0},
        },
        "data": {
            "class_path": "maskrank.data.ImageFolderDataModule",
            "init_args": {
                "root": str(root),
                "image_size": 32,
                "mean": list(MEAN),
                "std": list(STD),
                "cache_dir": None,
                "batch_size": 8,
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_timm_data_config_of_the_export_reproduces_maskrank_accuracy(tmp_path, capsys):
    root = tmp_path / "images"
    _image_folder(root, {"train": 16, "val": 10})
    cfg = _config(tmp_path, root)
    main(["fit", "-c", str(cfg)])
    ckpt = tmp_path / "runs" / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    tested = build_cli(["test", "-c", str(cfg), "--ckpt_path", str(ckpt)])
    maskrank_acc = float(tested.trainer.callback_metrics["test/acc"])
    main(["predict", "-c", str(cfg), "--ckpt_path", str(ckpt)])
    predicted = torch.load(
        tmp_path / "runs" / "exp" / "version_2" / "predictions.pt", weights_only=True
    )
    assert predicted["class_names"] == CLASSES
    main(["export", str(ckpt), "--out", str(tmp_path / "out")])

    folder = tmp_path / "out" / "timm"
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == CLASSES
    pretrained_cfg = config["pretrained_cfg"]
    for borrowed in ("tag", "license", "hf_hub_id", "url"):
        assert borrowed not in pretrained_cfg
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, 32, 32)
    assert data_config["mean"] == pytest.approx(MEAN) and data_config["std"] == pytest.approx(STD)
    transform = timm.data.create_transform(**data_config)
    # the held-out images in the datamodule's order (class folders, then file names, sorted)
    files = [
        (p, k) for k, name in enumerate(CLASSES) for p in sorted((root / "val" / name).iterdir())
    ]
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in files])
        logits = model(batch)
    labels = torch.tensor([k for _, k in files])
    timm_acc = float((logits.argmax(-1) == labels).float().mean())
    assert torch.equal(predicted["label"], labels)
    assert torch.allclose(logits, predicted["logits"], atol=1e-4)
    assert timm_acc == pytest.approx(maskrank_acc, abs=1e-6)
    # the check can fail: the architecture's own timm defaults (mean/std 0.5) differ
    own = timm.models.get_pretrained_cfg(config["architecture"])
    assert own is not None and tuple(own.mean) != tuple(data_config["mean"])
