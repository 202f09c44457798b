"""``maskrank test`` and ``maskrank predict`` on both tasks: metrics and files on disk."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from maskrank.cli import main
from maskrank.data import SyntheticLowRank
from testkit.events import event_tags
from testkit.tiny import TINY_DATA, TINY_VIT

CLASSIFIER = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}
MAE = {
    "class_path": "maskrank.tasks.MAEPretraining",
    "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
}


def _config(tmp_path: Path, model: dict) -> Path:
    """One epoch on the tiny data, logging to ``tmp_path/runs/exp/version_N``."""
    logger = {"save_dir": str(tmp_path / "runs"), "name": "exp"}
    cfg = {
        "trainer": {
            "max_epochs": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": logger,
            },
        },
        "model": model,
        "data": TINY_DATA,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _heldout() -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny data's held-out images (normalized, as the model sees them) and labels."""
    data = SyntheticLowRank(**TINY_DATA["init_args"])
    data.setup("predict")
    images, labels = zip(*data.predict_dataloader(), strict=True)
    return data.normalize(torch.cat(images)), torch.cat(labels)


def _fit(tmp_path: Path, model: dict) -> tuple[Path, Path]:
    cfg = _config(tmp_path, model)
    main(["fit", "-c", str(cfg)])
    return cfg, tmp_path / "runs" / "exp" / "version_0" / "checkpoints" / "last.ckpt"


def test_mae_test_and_predict_write_loss_and_features(tmp_path, capsys):
    cfg, ckpt = _fit(tmp_path, MAE)
    main(["test", "-c", str(cfg), "--ckpt_path", str(ckpt)])
    assert "test/loss" in event_tags(tmp_path / "runs" / "exp" / "version_1")
    capsys.readouterr()
    main(["predict", "-c", str(cfg), "--ckpt_path", str(ckpt)])
    out = tmp_path / "runs" / "exp" / "version_2" / "predictions.pt"
    assert f"predictions: {out}" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"cls", "patch_mean", "label"}
    assert saved["cls"].shape == (32, 64) and saved["patch_mean"].shape == (32, 64)
    assert torch.isfinite(saved["cls"]).all()
    # one row per held-out image, in the held-out order
    assert torch.equal(saved["label"], _heldout()[1])
    assert not torch.allclose(saved["cls"][0], saved["cls"][1])


def test_mae_predict_reconstructions_keep_visible_patches(tmp_path):
    cfg, ckpt = _fit(tmp_path, MAE)
    main(
        [
            "predict",
            "-c",
            str(cfg),
            "--ckpt_path",
            str(ckpt),
            "--predictions.reconstructions",
            "true",
        ]
    )
    saved = torch.load(
        tmp_path / "runs" / "exp" / "version_1" / "predictions.pt", weights_only=True
    )
    recon, mask = saved["recon"], saved["mask"]  # (N, C, H, W), (N, L)
    assert recon.shape == (32, 3, 32, 32) and mask.shape == (32, 16)
    assert mask.float().mean().item() == pytest.approx(0.75)
    # visible patches are the input's own (normalized) pixels, masked ones the decoder's
    images = _heldout()[0]
    visible = (1 - mask)[:, None, :].repeat_interleave(64, 1)  # (N, P, L), P = 8*8 pixels
    fold = torch.nn.functional.fold
    keep = fold(visible.float().repeat(1, 3, 1), (32, 32), 8, stride=8).bool()  # (N, 3, 32, 32)
    assert torch.allclose(recon[keep], images[keep], atol=1e-5)
    assert not torch.allclose(recon[~keep], images[~keep], atol=1e-2)


def test_classifier_predict_writes_csv_with_class_names(tmp_path, capsys):
    cfg, ckpt = _fit(tmp_path, CLASSIFIER)
    capsys.readouterr()
    main(["predict", "-c", str(cfg), "--ckpt_path", str(ckpt)])
    run = tmp_path / "runs" / "exp" / "version_1"
    printed = capsys.readouterr().out
    assert str(run / "predictions.csv") in printed
    saved = torch.load(run / "predictions.pt", weights_only=True)
    assert saved["class_names"] == ["0", "1", "2", "3"]  # SyntheticLowRank has no names
    assert torch.equal(saved["pred"], saved["logits"].argmax(-1))
    assert torch.allclose(saved["probs"].sum(-1), torch.ones(32))
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 32
    for row, pred, label in zip(rows, saved["pred"], saved["label"], strict=True):
        assert int(row["pred"]) == int(pred) and row["pred_name"] == str(int(pred))
        assert int(row["label"]) == int(label)
