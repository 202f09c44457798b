"""Datamodules and pure data functions.

Every datamodule yields ``(images uint8 (B, C, H, W), labels int64 (B,))`` batches and normalizes and
augments them on the training device (see :class:`InMemoryImageDataModule`). The CLI imports this
package, so ``--data SyntheticLowRank`` (or any datamodule below) selects a datamodule by name.
"""

from maskrank.data.augment import random_hflip, random_resized_crop, resize_uint8, to_float
from maskrank.data.base import InMemoryImageDataModule
from maskrank.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from maskrank.data.fashion_mnist import FashionMNISTDataModule
from maskrank.data.hf import HFDataModule
from maskrank.data.imagefolder import ImageFolderDataModule
from maskrank.data.streaming import StreamingDataModule
from maskrank.data.synthetic import (
    SyntheticLowRank,
    make_class_bases,
    make_low_rank_images,
    sample_from_bases,
)

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "HFDataModule",
    "ImageFolderDataModule",
    "InMemoryImageDataModule",
    "StreamingDataModule",
    "SyntheticLowRank",
    "make_class_bases",
    "make_low_rank_images",
    "random_hflip",
    "random_resized_crop",
    "resize_uint8",
    "sample_from_bases",
    "to_float",
]
