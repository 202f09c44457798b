"""A datamodule for image folders in the layout ``torchvision.datasets.ImageFolder`` reads.

::

    <root>/train/<class>/<image>      training split
    <root>/val/<class>/<image>        held-out split (or <root>/test/ when there is no val/)

Class folders are indexed with torchvision's public ``find_classes`` / ``make_dataset`` helpers.
With ``in_memory=True`` every image is decoded once (shorter side resized to ``image_size``, centre
crop) into a uint8 tensor; the result is cached under ``cache_dir`` (never inside ``root``, which may
be read-only), keyed by the root, split, geometry and every file's size and mtime, so later runs
load it with one ``torch.load``. With ``in_memory=False`` images are decoded per batch in DataLoader
workers. Either way batches are ``(uint8 (B, C, S, S), int64 (B,))`` and augmentation runs batched
on the device. Under DDP every rank decodes (or loads the cache) in ``setup``; the cache write is
atomic, so concurrent ranks do not corrupt it.
"""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.utilities import rank_zero_warn
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.image_files import (
    ImageFiles,
    cache_key,
    decode_all,
    load_cache,
    save_cache,
)
from maskrank.data.messages import require
from maskrank.data.pairs import PairDataset, TensorPairs
from maskrank.errors import DatasetNotFoundError

__all__ = ["ImageFolderDataModule"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = "<root>/train/<class>/<image> and <root>/val/<class>/<image> (or test/)"


class ImageFolderDataModule(InMemoryImageDataModule):
    """Images from ``<root>/train`` and ``<root>/val`` (or ``test``) class folders.

    Also accepts the common arguments of :class:`~maskrank.data.base.InMemoryImageDataModule`
    (``batch_size``, ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset``,
    ``seed``); ``num_workers`` also sets the worker processes that decode images.

    Attributes:
        classes: class folder names, sorted; the label of ``classes[i]`` is ``i``.

    Args:
        root: folder with ``train/`` and ``val/`` (or ``test/``) sub-folders of class folders.
        image_size: side of the square images (shorter side resized, then centre crop).
        in_chans: 3 converts images to RGB, 1 to grey.
        mean: per-channel normalization mean (0..1 scale); ``None`` uses the ImageNet mean for
            3 channels and 0.5 for 1.
        std: per-channel normalization std (0..1 scale); ``None`` uses the ImageNet std for
            3 channels and 0.5 for 1.
        in_memory: decode every image once into memory (cached); ``False`` decodes per batch.
        cache_dir: folder for the decoded-image cache of ``in_memory``; ``None`` disables it.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        in_chans: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        in_memory: bool = True,
        cache_dir: str | None = "data/cache",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(in_chans in (1, 3), "in_chans", "1 (grey) or 3 (RGB)", in_chans)
        require(image_size >= 1, "image_size", ">= 1", image_size)
        self.root = root
        self.in_memory = in_memory
        self.cache_dir = cache_dir
        self._folders: dict[Split, str] = {"train": self._find_train(), "heldout": ""}
        self._folders["heldout"] = self._find_heldout()
        self.classes, self.class_to_idx = self._find_classes(self._folders["train"])
        if mean is None:
            mean = _IMAGENET_MEAN if in_chans == 3 else (0.5,)
        if std is None:
            std = _IMAGENET_STD if in_chans == 3 else (0.5,)
        self._set_geometry(len(self.classes), in_chans, image_size, mean, std)

    # ---------------------------------------------------------------- layout
    def _find_train(self) -> str:
        """``<root>/train``, or a DatasetNotFoundError explaining the expected layout."""
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(
                f"--data.root {self.root} is not a folder; expected an image folder laid out as "
                f"{_LAYOUT}"
            )
        train = os.path.join(self.root, "train")
        if not os.path.isdir(train):
            raise DatasetNotFoundError(f"{train} does not exist; expected {_LAYOUT}")
        return train

    def _find_heldout(self) -> str:
        """``<root>/val`` if it exists, else ``<root>/test``."""
        for name in ("val", "test"):
            folder = os.path.join(self.root, name)
            if os.path.isdir(folder):
                return folder
        raise DatasetNotFoundError(
            f"{self.root} has neither val/ nor test/ for the held-out split; expected {_LAYOUT}"
        )

    @staticmethod
    def _find_classes(folder: str) -> tuple[list[str], dict[str, int]]:
        """Sorted class folder names of ``folder`` and their indices."""
        try:
            return find_classes(folder)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"{folder} has no class folders; expected {folder}/<class>/<image>"
            ) from None

    def _samples(self, split: Split) -> list[tuple[str, int]]:
        """Sorted ``(path, label)`` pairs of ``split``, labelled with the train classes."""
        folder = self._folders[split]
        if split == "heldout":
            extra = sorted(set(self._find_classes(folder)[0]) - set(self.classes))
            if extra:
                rank_zero_warn(
                    f"{folder} has class folders that train/ lacks, ignored: {', '.join(extra)}"
                )
        samples = make_dataset(folder, self.class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DatasetNotFoundError(
                f"{folder} contains no images in its class folders; accepted extensions: "
                f"{', '.join(IMG_EXTENSIONS)}"
            )
        return samples

    # ---------------------------------------------------------------- loading
    def _cache_path(self, split: Split, samples: list[tuple[str, int]]) -> str | None:
        """Where the decoded tensors of ``split`` are cached, or None when caching is off."""
        if self.cache_dir is None:
            return None
        key = cache_key(self.root, split, self.image_size, self.in_chans, samples)
        return os.path.join(self.cache_dir, f"imagefolder-{split}-{key[:24]}.pt")

    def _load_split(self, split: Split) -> PairDataset:
        """Decode (or load from the cache) ``split``; or index its files when not in memory."""
        samples = self._samples(split)
        if not self.in_memory:
            return ImageFiles(samples, self.image_size, self.in_chans)
        cache_path = self._cache_path(split, samples)
        shape = (self.in_chans, self.image_size, self.image_size)
        cached = load_cache(cache_path, len(samples), shape) if cache_path else None
        if cached is not None:
            return TensorPairs(*cached)
        images, labels = decode_all(samples, self.image_size, self.in_chans, self.num_workers)
        if cache_path is not None:
            save_cache(cache_path, images, labels)
        return TensorPairs(images, labels)
