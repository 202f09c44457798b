"""Fixtures for the data tests: tiny datasets written in their exact on-disk layouts."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every data test in its own folder so default paths (data/, data/cache) stay there."""
    monkeypatch.chdir(tmp_path)


def _image_array(index: int, height: int, width: int, channels: int) -> np.ndarray:
    """A distinct deterministic uint8 image ``(H, W, C)`` (``(H, W)`` for one channel)."""
    rng = np.random.default_rng(1000 + index)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


@pytest.fixture
def make_image_tree() -> Callable[..., dict[str, list[tuple[str, np.ndarray, int]]]]:
    """Write ``root/<split>/<class>/<i>.png`` and return ``{split: [(path, HWC array, label)]}``."""

    def make(
        root: Path,
        splits: tuple[str, ...] = ("train", "val"),
        classes: tuple[str, ...] = ("cat", "dog", "emu"),
        per_class: int = 3,
        size: tuple[int, int] = (8, 8),  # (height, width)
        channels: int = 3,
    ) -> dict[str, list[tuple[str, np.ndarray, int]]]:
        written: dict[str, list[tuple[str, np.ndarray, int]]] = {}
        counter = 0
        for split in splits:
            written[split] = []
            for label, name in enumerate(classes):
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    pixels = _image_array(counter, size[0], size[1], channels)
                    counter += 1
                    path = folder / f"{i:03d}.png"
                    Image.fromarray(pixels).save(path)
                    written[split].append((str(path), pixels, label))
        return written

    return make


@pytest.fixture
def write_cifar() -> Callable[..., dict[str, tuple[np.ndarray, list[int]]]]:
    """Write a tiny CIFAR-10 or CIFAR-100 folder; return ``{file name: (data (N, 3072), labels)}``."""

    def write(
        root: Path, variant: str = "cifar10", per_file: int = 3, protocol: int = 2
    ) -> dict[str, tuple[np.ndarray, list[int]]]:
        rng = np.random.default_rng(0)
        if variant == "cifar10":
            folder, label_key = root / "cifar-10-batches-py", "labels"
            files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
            meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
            num_classes = 10
        else:
            folder, label_key = root / "cifar-100-python", "fine_labels"
            files = ["train", "test"]
            meta_name = "meta"
            meta = {
                "fine_label_names": [f"f{i}" for i in range(100)],
                "coarse_label_names": [f"k{i}" for i in range(20)],
            }
            num_classes = 100
        folder.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in files:
            data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, num_classes, size=per_file)]
            # Real CIFAR files come from Python 2 with byte-string keys; vary the key type.
            key = (lambda k: k.encode()) if name.endswith("1") else (lambda k: k)
            entry = {key("data"): data, key(label_key): labels, key("batch_label"): name}
            if variant == "cifar100":
                entry[key("coarse_labels")] = [v // 5 for v in labels]
            with open(folder / name, "wb") as handle:
                pickle.dump(entry, handle, protocol=protocol)
            written[name] = (data, labels)
        with open(folder / meta_name, "wb") as handle:
            pickle.dump(meta, handle, protocol=protocol)
        return written

    return write


def _write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the big-endian idx format of MNIST / FashionMNIST."""
    magic = 0x0800 | array.ndim  # type 0x08 = unsigned byte
    with open(path, "wb") as handle:
        handle.write(struct.pack(">I", magic))
        handle.write(struct.pack(f">{array.ndim}I", *array.shape))
        handle.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def write_fashion_mnist() -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write ``root/FashionMNIST/raw/*-ubyte``; return ``{"train"/"test": (images, labels)}``."""

    def write(
        root: Path, n_train: int = 6, n_test: int = 4
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        written = {}
        for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            labels = rng.integers(0, 10, size=n).astype(np.uint8)
            _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
            _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
            written[split] = (images, labels)
        return written

    return write


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Run data tests on one intra-op thread: their tensors are tiny, and on a small shared
    machine multi-threaded LAPACK calls (the SVD checks) can stall for seconds on contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
