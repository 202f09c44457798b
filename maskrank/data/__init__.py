"""Datamodules, the data contract and pure data functions.

Every datamodule yields ``(images uint8 (B, C, H, W), labels int64 (B,))`` batches that become
normalized float32 on the training device, and implements the data contract
(:class:`~maskrank.data.contract.ImageData`) that everything outside the training loop reads. The
CLI imports this package, so ``--data SyntheticLowRank`` (or any datamodule below) selects a
datamodule by name.

Layout: ``images/`` decoding and crops, ``stream/`` litdata shards (layout, conversion, dataset,
datamodule), ``hf/`` Hugging Face datasets; the in-memory datamodules, the shared training order
(``order``) and the contract sit at the top.
"""

from maskrank.data.base import InMemoryImageDataModule
from maskrank.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from maskrank.data.contract import ImageData, Split, is_image_data
from maskrank.data.fashion_mnist import FashionMNISTDataModule
from maskrank.data.hf.datamodule import HFDataModule
from maskrank.data.imagefolder import ImageFolderDataModule
from maskrank.data.images.augment import random_hflip, random_resized_crop, resize_uint8, to_float
from maskrank.data.stream.datamodule import StreamingDataModule
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
    "ImageData",
    "ImageFolderDataModule",
    "InMemoryImageDataModule",
    "StreamingDataModule",
    "Split",
    "SyntheticLowRank",
    "make_class_bases",
    "make_low_rank_images",
    "random_hflip",
    "random_resized_crop",
    "resize_uint8",
    "is_image_data",
    "sample_from_bases",
    "to_float",
]
