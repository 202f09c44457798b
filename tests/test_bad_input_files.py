"""Bad input on file-backed image folders, through ``maskrank`` itself: a JPEG that fails mid-epoch
in a loader worker (stop naming it, or skip and count it), ``crop_pct`` outside (0, 1], and more
loader workers than CPU cores (a warning naming the count)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.cli import main
from maskrank.data.base import available_cores
from testkit.resume import write_config
from testkit.tiny import TINY_VIT

pytestmark = pytest.mark.usefixtures("single_thread")


def jpeg_folder(root: Path, per_class: int = 6, truncate: str | None = None) -> Path:
    """``root/{train,val}/{a,b}/<i>.jpg`` (40 x 48 pixels); ``truncate`` cuts one file short."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg", quality=90)
    if truncate:
        bad = root / truncate
        bad.write_bytes(bad.read_bytes()[:300])  # the header reads; the scan data ends early
    return root


def folder_config(tmp_path: Path, root: Path, **data) -> Path:
    """A tiny classifier fit (1 epoch) on ``root``, decoded in one loader worker."""
    model = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "runs", model, max_epochs=1)
    content = yaml.safe_load(cfg.read_text())
    init = dict(root=str(root), image_size=32, batch_size=4, num_workers=1, in_memory=False)
    content["data"] = {"class_path": "maskrank.data.ImageFolderDataModule", "init_args": init}
    content["data"]["init_args"].update(data)
    cfg.write_text(yaml.safe_dump(content))
    return cfg


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err[-5:]
    return err[0]


def test_jpeg_failing_mid_epoch_stops_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = jpeg_folder(tmp_path / "imgs", truncate="train/b/3.jpg")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(folder_config(tmp_path, root))])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert str(root / "train" / "b" / "3.jpg") in line and "not a readable image" in line


def test_jpeg_failing_mid_epoch_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = jpeg_folder(tmp_path / "imgs", truncate="train/b/3.jpg")
    main(["fit", "-c", str(folder_config(tmp_path, root, on_bad_image="skip"))])
    run = tmp_path / "runs" / "exp" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped_images")] == [1.0]
    assert [e.step for e in events.Scalars("train/loss")]  # the epoch trained on


def test_crop_pct_outside_the_unit_interval_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = jpeg_folder(tmp_path / "imgs", per_class=2)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(folder_config(tmp_path, root)), "--data.init_args.crop_pct", "1.5"])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert "--data.crop_pct" in line and "(0, 1]" in line and "1.5" in line


def test_more_workers_than_cores_warns_with_the_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = jpeg_folder(tmp_path / "imgs", per_class=2)
    cores = available_cores()
    cfg = folder_config(tmp_path, root, num_workers=cores + 1)
    match = f"--data.num_workers {cores + 1} is more than the {cores} CPU cores"
    with pytest.warns(UserWarning, match=match):
        main(["validate", "-c", str(cfg)])
