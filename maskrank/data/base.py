"""Common behaviour of every maskrank datamodule: uint8 batches, augmentation on the device.

A subclass only says how to load a split (:meth:`InMemoryImageDataModule._load_split`) and sets the
image geometry (``num_classes``, ``in_chans``, ``image_size``, ``mean``, ``std``) in ``__init__`` so
the CLI can link them into the model before ``setup``. Everything else lives here:

* batches are ``(images uint8 (B, C, H, W), labels int64 (B,))`` gathered straight from memory;
* ``on_after_batch_transfer`` (on the training device) turns them into normalized float32 and, while
  the trainer is training, applies a batched random resized crop and horizontal flip;
* splits: ``train`` for fitting, and one held-out split for validate, test and predict;
* the data contract (:class:`maskrank.data.contract.ImageData`): :meth:`probe_batch` returns a
  fixed unaugmented subset of a split, :meth:`augmented_views` views of fixed training images by the
  training augmentation from a seed, :meth:`normalize` the device-side normalisation;
* the training order is a function of the run's seed and the epoch, and the datamodule's
  ``state_dict`` records where in an epoch a checkpoint was written, so a resumed fit continues
  with exactly the batches the uninterrupted run would have seen (see :mod:`maskrank.data.order`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from maskrank.data.contract import Split
from maskrank.data.images.augment import random_hflip, random_resized_crop, to_float
from maskrank.data.messages import require
from maskrank.data.order import (
    EpochShuffleSampler,
    ResumableDataLoader,
    ResumePosition,
    probe_indices,
    shuffle_seed,
)
from maskrank.data.pairs import PairDataset, keep_batch
from maskrank.errors import ConfigError

__all__ = ["InMemoryImageDataModule", "Split", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class InMemoryImageDataModule(ResumePosition, pl.LightningDataModule, abc.ABC):
    """Base datamodule: uint8 batches from memory, normalization and augmentation on the device.

    Attributes set by every subclass's ``__init__`` (available before ``setup``):
        num_classes: number of classes.
        in_chans: image channels (3 for RGB, 1 for grey).
        image_size: side of the square images the model sees.
        mean: per-channel normalization mean on the 0..1 scale (length ``in_chans``).
        std: per-channel normalization std on the 0..1 scale (length ``in_chans``).
        classes: class names in label order (``"0".."K-1"`` where the data has none).

    Args:
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes (0 is right for in-memory data).
        augment: apply random resized crop (and flip) to training batches on the device.
        crop_scale: ``(min, max)`` fraction of the image area kept by the random resized crop,
            in ``(0, 1]``.
        hflip: also flip training images left-right with probability 0.5 (when ``augment``).
        train_subset: use only this many training images, the first ones after a shuffle seeded
            by ``seed`` (for quick experiments); ``None`` uses all of them. A value larger than
            the training set uses the whole set.
        seed: seed for the ``train_subset`` shuffle and for the ``probe_batch`` subset. The
            per-epoch training shuffle uses the run's ``seed_everything`` seed instead (this one
            when the run is not seeded), as Lightning's ``DistributedSampler`` does.
    """

    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    # Held-out images are the stored images, resized once (bilinear) when their side differs.
    eval_interpolation: str = "bilinear"
    eval_crop_pct: float = 1.0
    # Known only for data built with a set rank (SyntheticLowRank sets it); see contract.py.
    intrinsic_rank: int | None = None

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        train_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require(batch_size >= 1, "batch_size", ">= 1", batch_size)
        require(num_workers >= 0, "num_workers", ">= 0", num_workers)
        cores = available_cores()
        if num_workers > cores:
            rank_zero_warn(
                f"--data.num_workers {num_workers} is more than the {cores} CPU cores available "
                f"to this process; workers will compete for them (use at most {cores})"
            )
        crop_scale = tuple(float(s) for s in crop_scale)  # type: ignore[assignment]
        require(
            len(crop_scale) == 2 and 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0,
            "crop_scale",
            "a pair (min, max) with 0 < min <= max <= 1",
            crop_scale,
        )
        require(train_subset is None or train_subset >= 1, "train_subset", ">= 1", train_subset)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.crop_scale: tuple[float, float] = crop_scale
        self.hflip = hflip
        self.train_subset = train_subset
        self.seed = seed
        self._splits: dict[str, PairDataset] = {}

    # ----------------------------------------------------------------------------- geometry
    def _set_geometry(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
    ) -> None:
        """Set the attributes the model is built from; called by subclasses in ``__init__``.

        ``classes`` names the labels in order; None numbers them ``"0".."K-1"``.
        """
        require(image_size >= 1, "image_size", ">= 1", image_size)
        require(len(mean) == in_chans, "mean", f"{in_chans} value(s), one per channel", mean)
        require(len(std) == in_chans, "std", f"{in_chans} value(s), one per channel", std)
        require(all(s > 0 for s in std), "std", "positive", std)
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        names = [str(c) for c in classes] if classes is not None else None
        self.classes = names if names else [str(i) for i in range(self.num_classes)]

    # ----------------------------------------------------------------------------- splits
    @abc.abstractmethod
    def _load_split(self, split: Split) -> PairDataset:
        """Load ``split`` ("train" or "heldout") as uint8 ``(N, C, S, S)`` images + labels."""

    def _split(self, split: Split) -> PairDataset:
        """Return ``split``, loading it (and applying ``train_subset``) on first use."""
        if split not in self._splits:
            data = self._load_split(split)
            if split == "train" and self.train_subset is not None:
                data = data.subset(self._subset_indices(len(data), self.train_subset))
            self._splits[split] = data
        return self._splits[split]

    def _subset_indices(self, size: int, n: int) -> Tensor:
        """First ``n`` indices of a permutation of ``range(size)`` seeded by ``seed``, sorted."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(size, generator=generator)[:n].sort().values  # (min(n, size),)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs: train + held-out for fit, held-out otherwise."""
        if stage in (None, "fit"):
            train = self._split("train")
            # under DDP every process sees its 1/world share of the training set
            world = self.trainer.world_size if self.trainer is not None else 1
            if len(train) // world < self.batch_size:
                hint = " (or raise --data.train_subset)" if self.train_subset is not None else ""
                share = (
                    f"the {len(train)} training images"
                    if world == 1
                    else f"the {len(train) // world} training images each of the {world} "
                    f"processes gets (of {len(train)})"
                )
                raise ConfigError(
                    f"--data.batch_size {self.batch_size} is larger than {share}, so no full "
                    f"training batch exists; lower --data.batch_size{hint}"
                )
        self._split("heldout")

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, data: PairDataset, train: bool) -> DataLoader:
        """A DataLoader whose dataset returns whole batches via ``__getitems__``.

        Training batches come in a per-epoch order fixed by the seed (:class:`EpochShuffleSampler`)
        from a loader that can start mid-epoch after a restore. Every loader owns its generator,
        so iterating one never advances the global RNG that augmentation, masking and dropout use.
        """
        common: dict[str, Any] = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=keep_batch,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if not train:
            return DataLoader(data, shuffle=False, drop_last=False, **common)  # type: ignore[arg-type]
        position = self.take_resume_position()
        return ResumableDataLoader(
            data,  # type: ignore[arg-type]
            sampler=EpochShuffleSampler(data, shuffle_seed(self.seed)),
            drop_last=True,
            start_epoch=position.get("epoch", 0),
            skip_batches=position.get("skip_batches", 0),
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch is dropped."""
        return self._loader(self._split("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out batches in a fixed order."""
        return self._loader(self._split("heldout"), train=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out split, as for validation."""
        return self._loader(self._split("heldout"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """The held-out split, as for validation."""
        return self._loader(self._split("heldout"), train=False)

    # ----------------------------------------------------------------------------- device side
    @property
    def augments_on_device(self) -> bool:
        """Whether training batches are cropped and flipped here, on the device (in memory); a
        subclass that crops in the loader workers returns False."""
        return self.augment

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """``(B, C, H, W)`` uint8 -> normalized float32, on the input's device."""
        return to_float(images_uint8, self.mean, self.std)

    def _augment(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training augmentation of normalized ``(B, C, H, W)`` images on their device:
        random resized crop to ``image_size`` (and flip), drawn from ``generator`` when given."""
        images = random_resized_crop(
            images, self.image_size, scale=self.crop_scale, generator=generator
        )
        return random_hflip(images, generator=generator) if self.hflip else images

    def preprocess(self, images_uint8: Tensor, train: bool) -> Tensor:
        """Normalize ``(B, C, H, W)`` uint8 images; augment them too when ``train`` and the
        augmentation runs on the device (:attr:`augments_on_device`)."""
        images = self.normalize(images_uint8)  # (B, C, H, W) float32
        return self._augment(images) if train and self.augments_on_device else images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning hook (on the device): uint8 batch -> normalized float32, augmented in training."""
        images, labels = batch
        training = self.trainer is not None and bool(self.trainer.training)
        return self.preprocess(images, train=training), labels

    # ----------------------------------------------------------------------------- probes
    def _probe_indices(self, size: int, n: int) -> list[int]:
        """The probe set's positions in a split of ``size`` images (:func:`probe_indices`)."""
        return probe_indices(size, n, self.seed)

    def _probe_source(self, split: Split) -> PairDataset:
        """Where the unaugmented probe images of ``split`` come from: the split itself, whose
        images are stored unaugmented (a subclass that crops in its workers overrides this)."""
        return self._split(split)

    def probe_batch(self, n: int, split: Split = "heldout") -> tuple[Tensor, Tensor]:
        """A fixed, seeded subset of ``n`` unaugmented images (uint8) of ``split`` and labels.

        The same ``seed`` always gives the same images; a smaller ``n`` gives a prefix of a larger
        one. ``n`` larger than the split is clamped to its size. ``split="train"`` (after
        ``train_subset``) gives e.g. the labelled bank of a k-NN evaluation.

        Returns:
            ``(images uint8 (n, C, S, S), labels int64 (n,))``.
        """
        data = self._probe_source(split)
        return data.__getitems__(self._probe_indices(len(data), n))

    def augmented_views(
        self, n: int, views: int, seed: int, device: torch.device | None = None
    ) -> Tensor:
        """``views`` augmented versions of ``probe_batch(n, "train")``'s images, from ``seed``.

        The in-memory augmentation (random resized crop and flip of the normalized image) on
        ``device``, every random number drawn from a generator seeded with ``seed``: the same
        views on every call and every rank, and the global RNG training uses is not touched.

        Returns:
            ``(n, views, C, S, S)`` normalized float32 on ``device``.
        """
        raw, _ = self.probe_batch(n, "train")  # (n, C, S, S) uint8
        images = self.normalize(raw.to(device))
        generator = torch.Generator(device=images.device).manual_seed(int(seed))
        return torch.stack([self._augment(images, generator) for _ in range(views)], dim=1)
