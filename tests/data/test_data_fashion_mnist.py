"""FashionMNISTDataModule on tiny idx-ubyte files in torchvision's raw layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from maskrank.data import FashionMNISTDataModule
from maskrank.errors import CorruptFileError, DatasetNotFoundError


def test_pixels_labels_and_shapes(tmp_path: Path, write_fashion_mnist) -> None:
    written = write_fashion_mnist(tmp_path, n_train=6, n_test=4)
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=3)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 28)
    assert dm.mean == (0.2860,) and dm.std == (0.3530,)
    dm.setup("fit")
    for split, key in (("train", "train"), ("heldout", "test")):
        data = dm._split(split)
        images, labels = written[key]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert data.labels.dtype == torch.int64
        assert data.labels.tolist() == labels.tolist()
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == torch.uint8


def test_resized_in_memory(tmp_path: Path, write_fashion_mnist) -> None:
    write_fashion_mnist(tmp_path)
    dm = FashionMNISTDataModule(root=str(tmp_path), image_size=14, batch_size=2)
    dm.setup("fit")
    assert dm.image_size == 14 and dm._split("train").images.shape == (6, 1, 14, 14)


def test_missing_files(tmp_path: Path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("network used with download=False")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", forbidden)
    dm = FashionMNISTDataModule(root=str(tmp_path))
    dm.prepare_data()  # download=False: no network
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    expected = os.path.join(str(tmp_path), "FashionMNIST", "raw", "train-images-idx3-ubyte")
    assert expected in message and "--data.download true" in message and "\n" not in message


def test_failed_download(tmp_path: Path, monkeypatch) -> None:
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNISTDataModule(root=str(tmp_path), download=True).prepare_data()
    message = str(info.value)
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message
    assert os.path.join(str(tmp_path), "FashionMNIST", "raw") in message


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "train-images-idx3-ubyte"])
def test_corrupt_file_is_named(tmp_path: Path, write_fashion_mnist, name: str) -> None:
    write_fashion_mnist(tmp_path)
    target = tmp_path / "FashionMNIST" / "raw" / name
    target.write_bytes(b"\x00\x00\x0f\x07nonsense")
    with pytest.raises(CorruptFileError) as info:
        FashionMNISTDataModule(root=str(tmp_path), batch_size=2).setup("fit")
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_mismatched_counts_are_corrupt(tmp_path: Path, write_fashion_mnist) -> None:
    write_fashion_mnist(tmp_path, n_train=6)
    other = tmp_path / "other"
    write_fashion_mnist(other, n_train=5)
    raw = "FashionMNIST/raw/train-labels-idx1-ubyte"
    (tmp_path / raw).write_bytes((other / raw).read_bytes())
    with pytest.raises(CorruptFileError, match="do not match"):
        FashionMNISTDataModule(root=str(tmp_path), batch_size=2).setup("fit")
