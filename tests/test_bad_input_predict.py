"""Bad input around predict, export and class counts: exit status 2 and one line saying what is there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from maskrank.cli import main
from maskrank.tasks import ImageClassifier
from testkit.resume import write_config
from testkit.tiny import TINY_VIT

CLASSIFIER = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}


def _one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    return err[0]


def test_one_class_image_folder_names_the_folder_and_its_class(tmp_path, capsys):
    for split in ("train", "val"):
        folder = tmp_path / "tree" / split / "cat"
        folder.mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(folder / "0.png")
    cfg = write_config(tmp_path / "cls.yaml", tmp_path / "runs", CLASSIFIER)
    data = ["--data", "maskrank.data.ImageFolderDataModule", "--data.root"]
    argv = ["fit", "-c", str(cfg), *data, str(tmp_path / "tree"), "--data.cache_dir", "null"]
    message = _one_line_error(argv, capsys)
    assert f"{tmp_path / 'tree' / 'train'} has 1 class folder (cat)" in message
    assert "num_classes = 1 must be >= 2" in message


def test_export_of_a_checkpoint_without_data_config_is_refused(tmp_path, capsys):
    model = ImageClassifier(vit=TINY_VIT, num_classes=3)
    ckpt = tmp_path / "nodata.ckpt"  # what a Trainer without a maskrank datamodule writes
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    message = _one_line_error(["export", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert str(ckpt) in message and "records no data_config" in message
    assert not (tmp_path / "out").exists()


def test_reconstructions_of_a_classifier_are_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "cls.yaml", tmp_path / "runs", CLASSIFIER)
    argv = ["predict", "-c", str(cfg), "--predictions.reconstructions", "true"]
    message = _one_line_error(argv, capsys)
    assert "--predictions.reconstructions true: ImageClassifier has no decoder" in message
    assert not list(Path(tmp_path / "runs").rglob("predictions.*"))
