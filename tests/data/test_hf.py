"""HFDataModule and ``maskrank data optimize`` on Hugging Face datasets built locally by the test."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from maskrank.cli import main
from maskrank.cli.data import data_command
from maskrank.data import HFDataModule, StreamingDataModule
from maskrank.data.stream.layout import read_meta
from maskrank.errors import ConfigError, DatasetNotFoundError
from testkit.streaming import flat_image, identities

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["ant", "bee", "cat"]


def _pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _save(path: Path, columns: dict[str, dict], features: datasets.Features) -> Path:
    splits = {name: datasets.Dataset.from_dict(c, features=features) for name, c in columns.items()}
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def _classified(path: Path, train: int = 24, test: int = 6) -> Path:
    """``train`` / ``test`` splits of 32x32 random images with ClassLabel labels ``i % 3``."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}
    )
    ids = {"train": range(train), "test": range(train, train + test)}
    columns = {
        split: {
            "image": [Image.fromarray(_pixels(i)) for i in r],
            "label": [i % 3 for i in r],
        }
        for split, r in ids.items()
    }
    return _save(path, columns, features)


@pytest.mark.parametrize("in_memory", [True, False])
def test_hf_batches_hold_the_dataset_images_and_labels(tmp_path, in_memory):
    path = _classified(tmp_path / "hf")
    dm = HFDataModule(str(path), image_size=32, batch_size=4, augment=False, in_memory=in_memory)
    assert dm.num_classes == 3 and dm.classes == NAMES
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    expected = torch.stack([torch.from_numpy(_pixels(i)).permute(2, 0, 1) for i in range(24, 28)])
    assert torch.equal(images, expected)  # 32 px images are not resampled
    assert labels.tolist() == [i % 3 for i in range(24, 28)]
    seen = torch.cat([labels for _, labels in dm.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(i % 3 for i in range(24))  # every row, once
    probe, _ = dm.probe_batch(3)
    assert torch.equal(probe, HFDataModule(str(path), image_size=32).probe_batch(3)[0])


def test_hf_columns_by_name_and_integer_labels(tmp_path):
    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "y": datasets.Value("int64"),
            "note": datasets.Value("string"),
        }
    )
    columns = {
        s: {
            "picture": [Image.fromarray(_pixels(i)) for i in range(8)],
            "y": [i % 5 for i in range(8)],
            "note": ["x"] * 8,
        }
        for s in ("train", "validation")
    }
    path = _save(tmp_path / "hf", columns, features)
    # the Image column is detected; integer labels 0..4 give 5 classes
    assert HFDataModule(str(path), label_column="y").num_classes == 5
    dm = HFDataModule(str(path), image_column="picture", label_column="y", num_classes=7)
    assert dm.num_classes == 7
    with pytest.raises(ConfigError) as error:
        HFDataModule(str(path), label_column="label")
    assert "'label' is not" in str(error.value) and "picture, y, note" in str(error.value)
    with pytest.raises(ConfigError, match="--data.num_classes 3 is too small.*reach 4"):
        HFDataModule(str(path), label_column="y", num_classes=3)


def test_hf_dataset_without_an_image_or_label_column_lists_its_columns(tmp_path):
    path = _save(
        tmp_path / "hf",
        {s: {"caption": ["a", "b"], "score": [0.5, 1.0]} for s in ("train", "test")},
        datasets.Features(
            {"caption": datasets.Value("string"), "score": datasets.Value("float32")}
        ),
    )
    with pytest.raises(ConfigError) as error:
        HFDataModule(str(path))
    assert "no image column" in str(error.value) and "caption, score" in str(error.value)


def test_bad_hf_input_through_the_cli_is_one_line(tmp_path, capsys):
    path = _classified(tmp_path / "hf", train=8, test=4)
    fit = [
        "fit",
        "--model",
        "ImageClassifier",
        "--data",
        "HFDataModule",
        "--trainer.max_epochs",
        "1",
    ]
    cases = [
        ([f"--data.path={tmp_path / 'nowhere'}"], "not a local folder"),
        ([f"--data.path={path}", "--data.num_classes=5"], "--data.num_classes 5 disagrees"),
        ([f"--data.path={path}", "--data.label_column=target"], "its columns: image, label"),
    ]
    capsys.readouterr()  # drop save_to_disk's progress bar
    for flags, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*fit, *flags])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("maskrank: error:") and expected in err[0], err


def test_hub_names_need_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--data.download true"):
        HFDataModule("someone/some-dataset")


def test_optimize_from_a_hf_dataset_streams_the_same_rows(tmp_path):
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}
    )
    columns = {
        split: {"image": [flat_image(i) for i in ids], "label": [i % 3 for i in ids]}
        for split, ids in (("train", range(16)), ("validation", range(16, 20)))
    }
    src = _save(tmp_path / "hf", columns, features)
    data_command(["optimize", "--src", str(src), "--out", str(tmp_path / "out")])
    meta = read_meta(str(tmp_path / "out"))
    assert meta.classes == tuple(NAMES) and meta.splits == {"train": 16, "val": 4}
    dm = StreamingDataModule(str(tmp_path / "out"), image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    seen: list[int] = []
    for images, labels in dm.train_dataloader():
        ids = identities(images)
        assert labels.tolist() == [i % 3 for i in ids]
        seen += ids
    assert sorted(seen) == list(range(16))
    val = [i for images, _ in dm.val_dataloader() for i in identities(images)]
    assert val == list(range(16, 20))
