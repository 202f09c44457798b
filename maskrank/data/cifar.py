"""CIFAR-10 and CIFAR-100, read from their standard python-pickle layout into uint8 tensors.

On-disk layout (what the official tarballs extract to, and what torchvision downloads)::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

We read these files ourselves instead of constructing ``torchvision.datasets.CIFAR10``: that class
re-hashes every file (md5) at every construction and unpickles with the unrestricted ``pickle``
module, which runs whatever code a tampered file names. Here each file is loaded with
:class:`~maskrank.data.safe_pickle.RestrictedUnpickler` (numpy arrays and builtin containers only)
and checked for the expected shapes and label range, so a bad file fails with a one-line
:class:`~maskrank.errors.CorruptFileError` naming it. torchvision is used only to download, in
``prepare_data`` and only with ``download=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.download import download_or_raise
from maskrank.data.images.augment import resize_uint8
from maskrank.data.messages import require
from maskrank.data.pairs import TensorPairs
from maskrank.data.safe_pickle import load_pickle
from maskrank.errors import CorruptFileError, DatasetNotFoundError

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]

_NATIVE_SIZE = 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and how its pickles are keyed."""

    name: str  # human-readable, for messages
    folder: str  # sub-folder of root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # key of the label list inside each batch dict
    names_key: str  # key of the class-name list inside the meta dict
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str
    torchvision_class: str  # used only for downloading


CIFAR10_LAYOUT = CifarLayout(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    torchvision_class="CIFAR10",
)

CIFAR100_LAYOUT = CifarLayout(
    name="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    torchvision_class="CIFAR100",
)


def _field(entry: Any, key: str, path: str) -> Any:
    """``entry[key]`` for a dict keyed by str or by bytes (Python 2 pickles); CorruptFileError if absent."""
    if isinstance(entry, dict):
        for candidate in (key, key.encode()):
            if candidate in entry:
                return entry[candidate]
    raise CorruptFileError(f"{path} is not a CIFAR batch: it has no '{key}' entry")


def read_cifar_batch(path: str, label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """Read one CIFAR batch file safely.

    Returns:
        ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``; each stored row is the 1024 red,
        then green, then blue pixels of a 32x32 image, i.e. already channel-first.
    """
    entry = load_pickle(path)
    data = _field(entry, "data", path)
    labels = np.asarray(_field(entry, label_key, path))
    row = 3 * _NATIVE_SIZE * _NATIVE_SIZE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CorruptFileError(f"{path}: 'data' must be a uint8 array of shape (N, {row})")
    if data.shape[1] != row or labels.shape != (data.shape[0],):
        raise CorruptFileError(
            f"{path}: expected 'data' (N, {row}) and '{label_key}' (N,), "
            f"got {data.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptFileError(f"{path}: labels must lie in [0, {num_classes - 1}]")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, _NATIVE_SIZE, _NATIVE_SIZE)
    return images, torch.from_numpy(labels.astype(np.int64))


class _CIFARDataModule(InMemoryImageDataModule):
    """Shared implementation of the CIFAR datamodules; see the public subclasses."""

    layout: CifarLayout

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(image_size is None or image_size >= 1, "image_size", ">= 1 or null", image_size)
        self.root = root
        self.download = download
        layout = self.layout
        self._set_geometry(
            layout.num_classes, 3, image_size or _NATIVE_SIZE, layout.mean, layout.std
        )
        self._names_read = False  # ``classes`` are numbered until the meta file is read

    # ---------------------------------------------------------------- files
    @property
    def folder(self) -> str:
        """The folder that holds the batch files, e.g. ``data/cifar-10-batches-py``."""
        return os.path.join(self.root, self.layout.folder)

    @property
    def meta_path(self) -> str:
        """The file with the class names, e.g. ``data/cifar-10-batches-py/batches.meta``."""
        return os.path.join(self.folder, self.layout.meta_file)

    def _batch_paths(self, split: Split) -> list[str]:
        """The batch files of ``split``, in order."""
        names = self.layout.train_files if split == "train" else self.layout.test_files
        return [os.path.join(self.folder, name) for name in names]

    def _paths(self, split: Split | None = None) -> list[str]:
        """Every file ``split`` needs (all files when ``split`` is None), the meta file last."""
        splits: list[Split] = ["train", "heldout"] if split is None else [split]
        return [p for s in splits for p in self._batch_paths(s)] + [self.meta_path]

    def _require_files(self, split: Split) -> None:
        """Raise one DatasetNotFoundError naming the first missing file of ``split``."""
        for path in self._paths(split):
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"{self.layout.name} not found: {path} does not exist; pass "
                    f"--data.download true to download it, or set --data.root to the folder "
                    f"that contains {self.layout.folder}/"
                )

    def prepare_data(self) -> None:
        """Download the dataset with torchvision, only if ``download`` and files are missing."""
        if not self.download or all(os.path.isfile(p) for p in self._paths()):
            return
        dataset_class = getattr(torchvision.datasets, self.layout.torchvision_class)
        download_or_raise(
            lambda: dataset_class(self.root, train=True, download=True),
            self.layout.name,
            self.layout.url,
            f"{self.folder}{os.sep} ({', '.join(os.path.basename(p) for p in self._paths())})",
        )

    # ---------------------------------------------------------------- loading
    def _read_class_names(self) -> list[str]:
        """Class names from the meta file, checked against ``num_classes``."""
        path = self.meta_path
        names = [str(n) for n in _field(load_pickle(path), self.layout.names_key, path)]
        if len(names) != self.num_classes:
            raise CorruptFileError(
                f"{path}: expected {self.num_classes} class names, found {len(names)}"
            )
        return names

    def _load_split(self, split: Split) -> TensorPairs:
        """Read every batch file of ``split`` into one uint8 tensor, resized if asked."""
        self._require_files(split)
        if not self._names_read:
            self.classes, self._names_read = self._read_class_names(), True
        files = self._batch_paths(split)
        parts = [read_cifar_batch(p, self.layout.label_key, self.num_classes) for p in files]
        images = torch.cat([p[0] for p in parts])  # (N, 3, 32, 32) uint8
        labels = torch.cat([p[1] for p in parts])  # (N,) int64
        return TensorPairs(resize_uint8(images, self.image_size), labels)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes), held in memory.

    Batches are ``(uint8 (B, 3, S, S), int64 (B,))``; normalization and augmentation happen on the
    device (see :class:`~maskrank.data.base.InMemoryImageDataModule`, whose arguments
    ``batch_size``, ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset`` and
    ``seed`` are accepted too). The test set serves as the validation split.

    Args:
        root: folder that contains ``cifar-10-batches-py/``.
        download: download the dataset into ``root`` (in ``prepare_data``) if it is missing.
        image_size: resize images once in memory to this side; ``None`` keeps the native 32.
    """

    layout = CIFAR10_LAYOUT


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (50,000 train / 10,000 test 32x32 RGB images, 100 fine classes), in memory.

    Batches are ``(uint8 (B, 3, S, S), int64 (B,))``; normalization and augmentation happen on the
    device (see :class:`~maskrank.data.base.InMemoryImageDataModule`, whose arguments
    ``batch_size``, ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset`` and
    ``seed`` are accepted too). Labels are the fine labels; the test set is the validation split.

    Args:
        root: folder that contains ``cifar-100-python/``.
        download: download the dataset into ``root`` (in ``prepare_data``) if it is missing.
        image_size: resize images once in memory to this side; ``None`` keeps the native 32.
    """

    layout = CIFAR100_LAYOUT
