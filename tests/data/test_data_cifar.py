"""CIFAR-10 / CIFAR-100 datamodules on tiny files in the exact on-disk pickle layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from maskrank.data import CIFAR10DataModule, CIFAR100DataModule
from maskrank.data.safe_pickle import load_pickle
from maskrank.errors import CorruptFileError, DatasetNotFoundError

TRAIN10 = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any torchvision CIFAR construction (the download path) fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torchvision CIFAR class used (network / md5 path)")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", forbidden)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", forbidden)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pixels_and_labels(tmp_path: Path, write_cifar, no_network, protocol: int) -> None:
    written = write_cifar(tmp_path, "cifar10", per_file=3, protocol=protocol)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 3, 32)
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.std == (0.2470, 0.2435, 0.2616)
    dm.prepare_data()
    dm.setup("fit")
    train, held = dm._split("train"), dm._split("heldout")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    data = torch.cat([torch.from_numpy(written[name][0]) for name in TRAIN10])  # (15, 3072)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    n, c, y, x = 7, 2, 5, 30
    assert train.images[n, c, y, x] == data[n, c * 1024 + y * 32 + x]
    assert torch.equal(train.images.reshape(15, -1), data)
    assert train.labels.tolist() == sum((written[name][1] for name in TRAIN10), [])
    assert torch.equal(held.images.reshape(3, -1), torch.from_numpy(written["test_batch"][0]))
    assert held.labels.tolist() == written["test_batch"][1]
    assert dm.classes == [f"c{i}" for i in range(10)]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64


def test_cifar100_fine_labels_and_resize(tmp_path: Path, write_cifar, no_network) -> None:
    written = write_cifar(tmp_path, "cifar100", per_file=4)
    dm = CIFAR100DataModule(root=str(tmp_path), image_size=16, batch_size=2)
    assert dm.num_classes == 100 and dm.image_size == 16
    assert dm.mean == (0.5071, 0.4865, 0.4409) and dm.std == (0.2673, 0.2564, 0.2762)
    dm.setup("fit")
    train = dm._split("train")
    assert train.images.shape == (4, 3, 16, 16)
    assert train.labels.tolist() == written["train"][1]
    assert dm._split("heldout").labels.tolist() == written["test"][1]
    assert dm.classes == [f"f{i}" for i in range(100)]


def test_missing_files_name_the_path_and_the_flag(tmp_path: Path, write_cifar, no_network) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "data"))
    dm.prepare_data()  # download=False: nothing happens, in particular no network
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    expected = os.path.join(str(tmp_path / "data"), "cifar-10-batches-py", "data_batch_1")
    assert expected in message and "--data.download true" in message and "\n" not in message

    write_cifar(tmp_path / "data", "cifar10")
    os.remove(tmp_path / "data" / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DatasetNotFoundError, match="test_batch"):
        CIFAR10DataModule(root=str(tmp_path / "data")).setup("validate")

    with pytest.raises(DatasetNotFoundError, match=os.path.join("cifar-100-python", "train")):
        CIFAR100DataModule(root=str(tmp_path / "data")).setup("fit")


def test_relative_default_root_in_message(no_network) -> None:
    with pytest.raises(DatasetNotFoundError, match="data/cifar-10-batches-py/data_batch_1"):
        CIFAR10DataModule().setup("fit")


def test_failed_download_explains_manual_placement(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert calls == [(str(tmp_path), True, True)]
    assert "www.cs.toronto.edu" in message and "failed" in message
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in message and "\n" not in message


def test_download_skipped_when_files_exist(tmp_path: Path, write_cifar, monkeypatch) -> None:
    written = write_cifar(tmp_path, "cifar10")
    calls: list[tuple] = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: calls.append((a, k)))
    dm = CIFAR10DataModule(root=str(tmp_path), download=True, batch_size=4)
    dm.prepare_data()
    assert calls == []  # every file is there: torchvision's download is never constructed
    dm.setup("fit")  # the files are used as they were written
    assert dm._split("train").labels.tolist() == sum((written[n][1] for n in TRAIN10), [])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused(tmp_path: Path, write_cifar, no_network) -> None:
    write_cifar(tmp_path, "cifar10")
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(CorruptFileError, match="refusing to load global") as info:
        CIFAR10DataModule(root=str(tmp_path)).setup("fit")
    assert str(target) in str(info.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated
        lambda raw: b"garbage bytes that are no pickle at all",
        lambda raw: pickle.dumps({"data": [1, 2, 3], "labels": [0]}),  # wrong content
        lambda raw: pickle.dumps([1, 2, 3]),  # not a dict
    ],
)
def test_damaged_batch_file_names_the_file(tmp_path: Path, write_cifar, no_network, damage) -> None:
    write_cifar(tmp_path, "cifar10")
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(CorruptFileError) as info:
        CIFAR10DataModule(root=str(tmp_path)).setup("fit")
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_out_of_range_labels_are_corrupt(tmp_path: Path, write_cifar, no_network) -> None:
    write_cifar(tmp_path, "cifar10", per_file=2)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = load_pickle(target)
    entry["labels"] = [3, 10]
    target.write_bytes(pickle.dumps(entry))
    with pytest.raises(CorruptFileError, match=r"labels must lie in \[0, 9\]"):
        CIFAR10DataModule(root=str(tmp_path)).setup("validate")
