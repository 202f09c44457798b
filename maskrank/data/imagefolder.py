"""A datamodule for image folders in the layout ``torchvision.datasets.ImageFolder`` reads.

::

    <root>/train/<class>/<image>      training split
    <root>/val/<class>/<image>        held-out split (or <root>/test/ when there is no val/)

Class folders are indexed with torchvision's public ``find_classes`` / ``make_dataset`` helpers.
With ``in_memory=True`` every image is decoded once (shorter side resized to ``image_size``, centre
crop) into a uint8 tensor; the result is cached under ``cache_dir`` (never inside ``root``, which may
be read-only), keyed by the root, split, geometry and every file's size and mtime, so later runs
load it with one ``torch.load``, and augmentation runs batched on the device. Under DDP every rank
decodes (or loads the cache) in ``setup``; the cache write is atomic, so concurrent ranks do not
corrupt it.

With ``in_memory=False`` (data too large for memory, e.g. ImageNet) the ImageNet recipe runs in the
DataLoader workers (:mod:`maskrank.data.images.file_crops`): a training image is a random resized crop of
the *original* file (area ``crop_scale``, ratio (3/4, 4/3), bicubic) plus a flip, drawn from
``(seed, epoch, index)``, then optionally timm's RandAugment (``auto_augment``, MAE's
fine-tuning uses ``rand-m9-mstd0.5-inc1``) seeded from the same triple; a held-out image is its
centre crop after resizing the shorter side to ``image_size / crop_pct``. Either way batches are
``(uint8 (B, C, S, S), int64 (B,))``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.images.auto_augment import SeededRandAugment
from maskrank.data.images.crops import CropSpec
from maskrank.data.images.file_crops import CroppedImageFiles
from maskrank.data.images.files import (
    cache_key,
    decode_all,
    load_cache,
    save_cache,
)
from maskrank.data.messages import require
from maskrank.data.order import shuffle_seed
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
    ``seed``); ``num_workers`` also sets the worker processes that decode images. With
    ``in_memory=False``, ``augment``, ``crop_scale`` and ``hflip`` act in those workers on the
    original files, and only normalization runs on the device.

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
        in_memory: decode every image once into memory (cached); ``False`` decodes and crops
            each file per batch in the DataLoader workers (the ImageNet recipe).
        cache_dir: folder for the decoded-image cache of ``in_memory``; ``None`` disables it.
        crop_pct: with ``in_memory=False``, held-out images are resized so their shorter side is
            ``image_size / crop_pct``, then centre-cropped; in ``(0, 1]``.
        on_bad_image: with ``in_memory=False``, what an unreadable file does mid-epoch: ``stop``
            the run with an error naming it, or ``skip`` it (left out of its batch, a warning
            names it, and the TensorBoard scalar ``data/skipped_images`` counts them).
        auto_augment: with ``in_memory=False`` and ``augment``, timm's RandAugment of every
            training crop in the loader workers (a string such as MAE's
            ``rand-m9-mstd0.5-inc1``), seeded per (seed, epoch, image) like the crop, so a
            resumed run sees the same images. Not available in memory (the batched device
            augmentation has no PIL image to work on): setting it there is refused. None: off.
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
        crop_pct: float = 0.875,
        on_bad_image: Literal["stop", "skip"] = "stop",
        auto_augment: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(in_chans in (1, 3), "in_chans", "1 (grey) or 3 (RGB)", in_chans)
        require(image_size >= 1, "image_size", ">= 1", image_size)
        require(0.0 < crop_pct <= 1.0, "crop_pct", "in (0, 1]", crop_pct)
        require(on_bad_image in ("stop", "skip"), "on_bad_image", "'stop' or 'skip'", on_bad_image)
        self.crop_pct = float(crop_pct)
        self.on_bad_image = on_bad_image
        self._skipped_logged = 0
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
        self._set_geometry(len(self.classes), in_chans, image_size, mean, std, self.classes)
        self.auto_augment = self._rand_augment(auto_augment, mean)
        if not in_memory:  # held-out files: shorter side to image_size / crop_pct, bicubic
            self.eval_interpolation, self.eval_crop_pct = "bicubic", self.crop_pct

    def _rand_augment(
        self, config: str | None, mean: tuple[float, ...]
    ) -> SeededRandAugment | None:
        """The worker-side RandAugment of ``auto_augment``; refused where it would not run."""
        if config is None:
            return None
        require(
            not self.in_memory,
            "auto_augment",
            "null with in_memory: true (RandAugment runs on decoded files in the loader "
            "workers; set --data.in_memory false)",
            config,
        )
        require(
            self.augment,
            "auto_augment",
            "null with augment: false (it augments the training crops)",
            config,
        )
        return SeededRandAugment(config, self.image_size, mean)

    def describe_classes(self) -> str:
        """Where the classes come from and which they are, for a message about their count."""
        found = ", ".join(self.classes)
        count = f"{len(self.classes)} class folder{'' if len(self.classes) == 1 else 's'}"
        return f"{self._folders['train']} has {count} ({found}); a classifier needs two or more"

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
    def _crop_spec(self, train: bool) -> CropSpec:
        """The crop of a file-backed image: the training recipe's random resized crop (and flip)
        when ``train``, else the evaluation centre crop."""
        return CropSpec(
            size=self.image_size,
            train=train,
            scale=self.crop_scale,
            hflip=self.hflip,
            crop_pct=self.crop_pct,
        )

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
            spec = self._crop_spec(train=split == "train" and self.augment)
            skip = self.on_bad_image == "skip"
            return CroppedImageFiles(
                samples, spec, self.in_chans, shuffle_seed(self.seed), skip, self.auto_augment
            )
        cache_path = self._cache_path(split, samples)
        shape = (self.in_chans, self.image_size, self.image_size)
        cached = load_cache(cache_path, len(samples), shape) if cache_path else None
        if cached is not None:
            return TensorPairs(*cached)
        images, labels = decode_all(samples, self.image_size, self.in_chans, self.num_workers)
        if cache_path is not None:
            save_cache(cache_path, images, labels)
        return TensorPairs(images, labels)

    # ---------------------------------------------------------------- file-backed crops
    def train_dataloader(self) -> Any:
        """Shuffled training batches; file crops are seeded by the run's seed (as the order is)."""
        data = self._split("train")
        if isinstance(data, CroppedImageFiles):
            data.seed = shuffle_seed(self.seed)
        return super().train_dataloader()

    @property
    def augments_on_device(self) -> bool:
        """In memory only: file-backed training crops were taken in the loader workers."""
        return self.augment and self.in_memory

    def _probe_source(self, split: Split) -> PairDataset:
        """File-backed: the split's files with the evaluation crop, so probe images (and the
        k-NN bank drawn from the training split) are the same every call and every epoch."""
        data = self._split(split)
        if isinstance(data, CroppedImageFiles) and data.spec.train:
            return data.with_spec(self._crop_spec(train=False))
        return data

    def augmented_views(
        self, n: int, views: int, seed: int, device: torch.device | None = None
    ) -> Tensor:
        """File-backed: view ``v`` of a probe image is the crop of its *original file* that the
        loader workers would take in epoch ``v`` of a run seeded with ``seed`` (same crop
        function, :func:`~maskrank.data.images.crops.crop_rng`); in memory, the device
        augmentation of the base class.

        Returns:
            ``(n, views, C, S, S)`` normalized float32 on ``device``.
        """
        data = self._split("train")
        if not isinstance(data, CroppedImageFiles):
            return super().augmented_views(n, views, seed, device)
        files = data.with_spec(self._crop_spec(train=self.augment), seed=int(seed))
        indices = self._probe_indices(len(files), n)
        crops = torch.stack(
            [torch.stack([files.crop(i, epoch=v) for v in range(views)]) for i in indices]
        )  # (n, views, C, S, S) uint8
        return self.normalize(crops.flatten(0, 1).to(device)).unflatten(0, crops.shape[:2])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Log ``data/skipped_images`` when the count of skipped files grew, then preprocess."""
        skipped = sum(
            data.skipped for data in self._splits.values() if isinstance(data, CroppedImageFiles)
        )
        trainer = self.trainer
        if skipped != self._skipped_logged and trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics({"data/skipped_images": float(skipped)}, trainer.global_step)
            self._skipped_logged = skipped
        return super().on_after_batch_transfer(batch, dataloader_idx)
