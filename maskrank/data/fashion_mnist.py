"""FashionMNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes), held in memory.

Files are read with ``torchvision.datasets.FashionMNIST(root, train=..., download=False)``, which
parses the raw idx files in ``<root>/FashionMNIST/raw/`` without hashing them (md5 checks happen
only while downloading). Downloading happens only in ``prepare_data`` and only with
``download=True``. torchvision's errors are turned into one-line
:class:`~maskrank.errors.DatasetNotFoundError` / :class:`~maskrank.errors.CorruptFileError`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torchvision
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.download import download_or_raise
from maskrank.data.images.augment import resize_uint8
from maskrank.data.messages import one_line, require
from maskrank.data.pairs import TensorPairs
from maskrank.errors import CorruptFileError, DatasetNotFoundError

__all__ = ["FashionMNISTDataModule"]

_NATIVE_SIZE = 28
_MEAN = (0.2860,)
_STD = (0.3530,)
_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FILES: dict[str, tuple[str, str]] = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionMNISTDataModule(InMemoryImageDataModule):
    """FashionMNIST in memory: batches ``(uint8 (B, 1, S, S), int64 (B,))``.

    Normalization and augmentation happen on the device (see
    :class:`~maskrank.data.base.InMemoryImageDataModule`, whose arguments ``batch_size``,
    ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset`` and ``seed`` are
    accepted too). The test set serves as the validation split.

    Args:
        root: folder that contains ``FashionMNIST/raw/`` with the four unzipped idx files.
        download: download the dataset into ``root`` (in ``prepare_data``) if it is missing.
        image_size: resize images once in memory to this side; ``None`` keeps the native 28.
    """

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
        classes = torchvision.datasets.FashionMNIST.classes
        self._set_geometry(10, 1, image_size or _NATIVE_SIZE, _MEAN, _STD, classes)

    @property
    def raw_folder(self) -> str:
        """Where torchvision keeps the idx files, e.g. ``data/FashionMNIST/raw``."""
        return os.path.join(self.root, "FashionMNIST", "raw")

    def _paths(self, split: Split) -> tuple[str, str]:
        """``(images file, labels file)`` of ``split``."""
        images, labels = _FILES[split]
        return os.path.join(self.raw_folder, images), os.path.join(self.raw_folder, labels)

    def prepare_data(self) -> None:
        """Download the dataset with torchvision, only if ``download`` and files are missing."""
        paths = [*self._paths("train"), *self._paths("heldout")]
        if not self.download or all(os.path.isfile(p) for p in paths):
            return

        def fetch() -> None:
            for train in (True, False):
                torchvision.datasets.FashionMNIST(self.root, train=train, download=True)

        names = ", ".join(os.path.basename(p) for p in paths)
        download_or_raise(fetch, "FashionMNIST", _URL, f"{self.raw_folder}{os.sep} ({names})")

    def _load_split(self, split: Split) -> TensorPairs:
        """Read ``split`` through torchvision into uint8 ``(N, 1, S, S)`` + int64 ``(N,)``."""
        for path in self._paths(split):
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"FashionMNIST not found: {path} does not exist; pass --data.download true "
                    "to download it, or set --data.root to the folder that contains FashionMNIST/"
                )
        try:
            dataset = torchvision.datasets.FashionMNIST(
                self.root, train=split == "train", download=False
            )
        except RuntimeError as exc:
            if "not found" in str(exc):
                raise DatasetNotFoundError(
                    f"FashionMNIST not found in {self.raw_folder}; pass --data.download true"
                ) from None
            raise self._corrupt(split, exc) from None
        except Exception as exc:  # malformed idx files fail with AssertionError, ValueError, ...
            raise self._corrupt(split, exc) from None
        images: Tensor = dataset.data  # (N, 28, 28) uint8
        labels: Tensor = dataset.targets  # (N,) int64
        if images.ndim != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise self._corrupt(split, ValueError("image and label files do not match"))
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise self._corrupt(split, ValueError("labels outside 0..9"))
        images = resize_uint8(images.unsqueeze(1), self.image_size)  # (N, 1, S, S)
        return TensorPairs(images, labels.to(torch.int64))

    def _corrupt(self, split: Split, exc: BaseException) -> CorruptFileError:
        """A CorruptFileError naming the file of ``split`` that fails to parse on its own."""
        images_path, labels_path = self._paths(split)
        culprit = f"{images_path} or {labels_path}"
        for path, reader in ((images_path, read_image_file), (labels_path, read_label_file)):
            try:
                reader(path)
            except Exception as file_exc:  # this file does not parse: it is the culprit
                culprit, exc = path, file_exc
                break
        detail = one_line(exc) or type(exc).__name__
        return CorruptFileError(
            f"{culprit} is not a valid FashionMNIST idx file ({detail}); "
            "delete it and download the dataset again"
        )
