"""A datamodule for image classification datasets in the Hugging Face ``datasets`` format.

Reads a folder written by ``DatasetDict.save_to_disk`` (``load_from_disk``) or any local folder
``load_dataset`` reads; a Hub dataset name only with ``download: true``. Images are decoded from the
dataset's encoded bytes (shorter side resized to ``image_size``, centre crop), either all at once
into memory (``in_memory``) or per batch in loader workers, and batches are ``(uint8 (B, C, S, S),
int64 (B,))`` augmented on the device exactly as for every in-memory datamodule
(:class:`~maskrank.data.base.InMemoryImageDataModule`): same crops, flips, order and resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset as HFDataset
from torch import Tensor
from torch.utils.data import Dataset

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.heads import check_model_classes
from maskrank.data.hf.source import (
    class_names,
    encoded_image,
    find_columns,
    load_splits,
    undecoded,
)
from maskrank.data.images.encoded import centre_crop
from maskrank.data.images.files import decode_dataset
from maskrank.data.messages import require
from maskrank.data.pairs import PairDataset, TensorPairs

__all__ = ["HFDataModule", "HFImages"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class HFImages(Dataset[tuple[Tensor, int]]):
    """Rows of a ``datasets.Dataset`` decoded on access to ``(uint8 (C, S, S), label)``.

    Args:
        data: the split, its image column undecoded (``{"bytes", "path"}``).
        image: image column name.
        label: label column name.
        image_size: side of the square output (shorter side resized, centre crop).
        in_chans: 3 (RGB) or 1 (grey).
        where: the dataset and split, for error messages.
        rows: the rows of ``data`` this dataset holds, in order (None: all).
    """

    def __init__(
        self,
        data: HFDataset,
        image: str,
        label: str,
        image_size: int,
        in_chans: int,
        where: str,
        rows: Sequence[int] | None = None,
    ) -> None:
        self.data, self.image, self.label = data, image, label
        self.image_size, self.in_chans, self.where = image_size, in_chans, where
        self.rows = list(range(len(data))) if rows is None else [int(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """A stacked batch ``(images uint8 (B, C, S, S), labels int64 (B,))``."""
        rows = [self.rows[int(i)] for i in indices]
        columns = self.data[rows]  # one Arrow gather for the whole batch
        images = [
            centre_crop(
                encoded_image(value), self.image_size, self.in_chans, f"{self.where} row {row}"
            )
            for row, value in zip(rows, columns[self.image], strict=True)
        ]
        labels = torch.as_tensor(columns[self.label], dtype=torch.int64)  # (B,)
        return torch.stack(images), labels

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        images, labels = self.__getitems__([index])
        return images[0], int(labels[0])

    def subset(self, indices: Tensor) -> HFImages:
        """The rows at ``indices``, in that order."""
        rows = [self.rows[int(i)] for i in indices]
        return HFImages(
            self.data, self.image, self.label, self.image_size, self.in_chans, self.where, rows
        )


class HFDataModule(InMemoryImageDataModule):
    """Images and labels from a Hugging Face ``datasets`` dataset.

    Also accepts the common arguments of :class:`~maskrank.data.base.InMemoryImageDataModule`
    (``batch_size``, ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset``,
    ``seed``).

    Attributes:
        classes: class names (the ``ClassLabel`` names, or ``"0".."K-1"`` for integer labels).

    Args:
        path: a folder written by ``save_to_disk``, a folder ``load_dataset`` reads, or (with
            ``download``) a Hub dataset name such as ``uoft-cs/cifar10``.
        image_column: the image column; None: the first ``datasets.Image`` column (or one named
            image/img).
        label_column: the label column; None: the first ``ClassLabel`` column (or one named
            label/labels/fine_label).
        train_split: the training split's name.
        val_split: the held-out split; None: the first of validation, val, test.
        num_classes: None: from the ``ClassLabel`` feature or the largest integer label + 1;
            a number must agree with a ``ClassLabel`` and exceed every integer label.
        download: allow fetching ``path`` from the Hugging Face Hub (otherwise local only).
        cache_dir: ``datasets`` cache for ``load_dataset`` (None: its default).
        image_size: side of the square images (shorter side resized, then centre crop).
        in_chans: 3 converts images to RGB, 1 to grey.
        mean: per-channel normalization mean (0..1 scale); None: ImageNet's for 3 channels,
            0.5 for 1.
        std: per-channel normalization std (0..1 scale); None: ImageNet's for 3 channels, 0.5
            for 1.
        in_memory: decode every image once into memory; False decodes per batch in workers.
    """

    # held-out rows: shorter side resized to image_size (bicubic), centre crop (images.encoded)
    eval_interpolation = "bicubic"

    def __init__(
        self,
        path: str,
        image_column: str | None = None,
        label_column: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        num_classes: int | None = None,
        download: bool = False,
        cache_dir: str | None = None,
        image_size: int = 32,
        in_chans: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        in_memory: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(in_chans in (1, 3), "in_chans", "1 (grey) or 3 (RGB)", in_chans)
        require(num_classes is None or num_classes >= 2, "num_classes", ">= 2", num_classes)
        self.path = path
        self.in_memory = in_memory
        train, held, held_name = load_splits(path, train_split, val_split, download, cache_dir)
        image, label = find_columns(train, image_column, label_column, f"{path} [{train_split}]")
        find_columns(held, image, label, f"{path} [{held_name}]")
        self.classes = class_names(train, label, num_classes, f"{path} [{train_split}]")
        class_names(held, label, len(self.classes), f"{path} [{held_name}]")
        self._sources: dict[Split, HFImages] = {}
        for split, data, name in (("train", train, train_split), ("heldout", held, held_name)):
            self._sources[split] = HFImages(
                undecoded(data, image), image, label, image_size, in_chans, f"{path} [{name}]"
            )
        if mean is None:
            mean = _IMAGENET_MEAN if in_chans == 3 else (0.5,)
        if std is None:
            std = _IMAGENET_STD if in_chans == 3 else (0.5,)
        self._set_geometry(len(self.classes), in_chans, image_size, mean, std, self.classes)

    def setup(self, stage: str | None = None) -> None:
        """Check the model's head against the classes, then load the splits."""
        check_model_classes(self.trainer, self.num_classes, self.path)
        super().setup(stage)

    def _load_split(self, split: Split) -> PairDataset:
        """The split's rows, decoded into memory when ``in_memory``."""
        source = self._sources[split]
        return TensorPairs(*decode_dataset(source, self.num_workers)) if self.in_memory else source
