"""A datamodule that streams a dataset written by ``maskrank data optimize`` (litdata chunks).

For data that does not fit on one machine's disk, or training on many machines: litdata shards the
chunks over ranks and nodes (every sample once per epoch, the same count on every rank), downloads
them from an object store in the background into a local cache, and can start mid-epoch. See
docs/guides/streaming.md for the multi-node recipe.

Batches are ``(uint8 (B, C, S, S), int64 (B,))`` like every maskrank datamodule. Training crops are
taken from the original image in the loader workers (``RandomResizedCrop`` + flip, seeded by
``(seed, epoch, sample index)``), so the device only normalizes. A resumed fit continues with the
batches the uninterrupted run would have seen: the datamodule's ``state_dict`` records the position
the trainer reached and the loader replays litdata's shard assignment from there.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from maskrank.data.contract import Split
from maskrank.data.heads import check_model_classes
from maskrank.data.images.augment import to_float
from maskrank.data.messages import require
from maskrank.data.order import ResumePosition, probe_indices, shuffle_seed
from maskrank.data.stream.dataset import ImageStream, PositionedStreamingLoader, stack_pairs
from maskrank.data.stream.layout import join, read_meta
from maskrank.errors import ConfigError

__all__ = ["StreamingDataModule"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FOLDER: dict[Split, str] = {"train": "train", "heldout": "val"}


class StreamingDataModule(ResumePosition, pl.LightningDataModule):
    """Stream ``<root>/train`` and ``<root>/val`` written by ``maskrank data optimize``.

    Attributes (set from ``<root>/maskrank.json`` in ``__init__``):
        classes: class names; ``num_classes``, ``in_chans``, ``image_size``, ``mean``, ``std``
            as every maskrank datamodule.

    Args:
        root: the dataset folder or object-store URL (``s3://bucket/imagenet``, ``gs://...``,
            ``azure://...``, ``local:/path`` to stream a local folder through the cache).
        image_size: side of the square crops the model sees.
        in_chans: 3 converts images to RGB, 1 to grey.
        mean: per-channel normalization mean (0..1 scale); None: ImageNet's (3 channels), 0.5 (1).
        std: per-channel normalization std (0..1 scale); None: ImageNet's (3 channels), 0.5 (1).
        batch_size: images per batch, per device.
        num_workers: loader worker processes per device; they download, decode and crop.
        augment: random resized crops (and flips) of the original training images; False:
            centre crops.
        crop_scale: ``(min, max)`` fraction of the image area kept by the random resized crop.
        hflip: flip training crops left-right with probability 0.5 (when ``augment``).
        seed: shuffle and augmentation seed when the run is not seeded (a seeded run uses its
            ``seed_everything`` value), and the seed of the probe subset.
        cache_dir: local folder for chunks downloaded from a URL; None: litdata's default.
        max_cache_size: most disk the chunk cache may use, e.g. ``"50GB"``; None: litdata's
            default (a share of the free disk).
    """

    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # held-out images: shorter side resized to image_size (bicubic), centre crop (images.encoded)
    eval_interpolation = "bicubic"
    eval_crop_pct = 1.0
    intrinsic_rank: int | None = None  # stored images: not known by construction

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        in_chans: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        batch_size: int = 128,
        num_workers: int = 4,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
    ) -> None:
        super().__init__()
        require(batch_size >= 1, "batch_size", ">= 1", batch_size)
        require(num_workers >= 0, "num_workers", ">= 0", num_workers)
        require(image_size >= 1, "image_size", ">= 1", image_size)
        require(in_chans in (1, 3), "in_chans", "1 (grey) or 3 (RGB)", in_chans)
        crop_scale = tuple(float(s) for s in crop_scale)  # type: ignore[assignment]
        require(
            len(crop_scale) == 2 and 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0,
            "crop_scale",
            "a pair (min, max) with 0 < min <= max <= 1",
            crop_scale,
        )
        mean = tuple(mean) if mean is not None else _IMAGENET_MEAN if in_chans == 3 else (0.5,)
        std = tuple(std) if std is not None else _IMAGENET_STD if in_chans == 3 else (0.5,)
        require(len(mean) == in_chans, "mean", f"{in_chans} value(s), one per channel", mean)
        require(len(std) == in_chans and all(s > 0 for s in std), "std", "positive", std)
        self.root = root
        self.meta = read_meta(root)
        self.classes = list(self.meta.classes)
        self.num_classes = len(self.classes)
        self.in_chans, self.image_size = in_chans, image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment, self.crop_scale, self.hflip = augment, crop_scale, hflip
        self.seed, self.cache_dir, self.max_cache_size = seed, cache_dir, max_cache_size
        self._streams: dict[str, ImageStream] = {}
        self._probes: dict[Split, ImageStream] = {}  # random access, for probe_batch

    # ----------------------------------------------------------------------------- splits
    def _stream(self, split: str) -> ImageStream:
        """The split's dataset, built on first use (after DDP started: litdata reads the ranks)."""
        if split not in self._streams:
            self._streams[split] = self._new_stream(split)
        return self._streams[split]

    def _new_stream(self, split: str, train: bool | None = None) -> ImageStream:
        """A dataset over ``split``'s folder: shuffled training crops when ``train`` (default: for
        the ``train`` folder), else centre crops in the stored order."""
        return ImageStream(
            join(self.root, split),
            train=split == "train" if train is None else train,
            image_size=self.image_size,
            in_chans=self.in_chans,
            augment=self.augment,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
            seed=shuffle_seed(self.seed),
            cache_dir=self.cache_dir,
            max_cache_size=self.max_cache_size,
        )

    def setup(self, stage: str | None = None) -> None:
        """Check the model's head against the classes; refuse a batch larger than the data."""
        check_model_classes(self.trainer, self.num_classes, self.root)
        world = self.trainer.world_size if self.trainer is not None else 1
        train = self.meta.splits["train"]
        if stage in (None, "fit") and train < self.batch_size * world:
            raise ConfigError(
                f"--data.batch_size {self.batch_size} x {world} process(es) is more than the "
                f"{train} training images of {self.root}; lower --data.batch_size"
            )

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, split: str, **kwargs: Any) -> PositionedStreamingLoader:
        """A loader over ``split``; it owns its generator, so iterating it never advances the
        global RNG that masking and dropout draw from (see :mod:`maskrank.data.order`)."""
        return PositionedStreamingLoader(
            self._stream(split),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=stack_pairs,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def train_dataloader(self) -> PositionedStreamingLoader:
        """Shuffled training batches sharded over the ranks; incomplete batches are dropped."""
        position = self.take_resume_position()
        return self._loader(
            "train",
            drop_last=True,
            start_epoch=position.get("epoch", 0),
            skip_batches=position.get("skip_batches", 0),
        )

    def val_dataloader(self) -> PositionedStreamingLoader:
        """Held-out batches, centre-cropped, in the stored order (sharded over the ranks)."""
        return self._loader("val")

    def test_dataloader(self) -> PositionedStreamingLoader:
        """The held-out split, as for validation."""
        return self._loader("val")

    def predict_dataloader(self) -> PositionedStreamingLoader:
        """The held-out split, as for validation."""
        return self._loader("val")

    # ----------------------------------------------------------------------------- device side
    def normalize(self, images_uint8: Tensor) -> Tensor:
        """``(B, C, S, S)`` uint8 -> normalized float32; crops were taken in the workers."""
        return to_float(images_uint8, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning hook (on the device): uint8 batch -> normalized float32."""
        images, labels = batch
        return self.normalize(images), labels

    # ----------------------------------------------------------------------------- probes
    def _probe_stream(self, split: Split) -> ImageStream:
        """Random access to ``split`` in its stored order, centre-cropped (never augmented).

        Its own dataset, not the loader's. ``iter()`` sets it up to fetch whole chunks into the
        cache: litdata's default for random access reads byte ranges on demand, which fails for
        a ``local:`` URL.
        """
        if split not in self._probes:
            stream = self._new_stream(_FOLDER[split], train=False)
            iter(stream)
            self._probes[split] = stream
        return self._probes[split]

    def _probe_indices(self, split: Split, n: int) -> list[int]:
        """The probe set's positions in ``split`` (:func:`probe_indices`, as every datamodule)."""
        return probe_indices(self.meta.splits[_FOLDER[split]], n, self.seed)

    def probe_batch(self, n: int, split: Split = "heldout") -> tuple[Tensor, Tensor]:
        """A fixed, seeded subset of ``n`` images of ``split`` (uint8 centre crops) and labels.

        Read by random access, so every rank reads the same images, every epoch. ``n`` larger
        than the split is clamped to its size.
        """
        stream = self._probe_stream(split)
        return stack_pairs([stream[i] for i in self._probe_indices(split, n)])

    def augmented_views(
        self, n: int, views: int, seed: int, device: torch.device | None = None
    ) -> Tensor:
        """View ``v`` of a probe training image is the crop of its original encoded image that
        the loader workers would take in epoch ``v`` of a run seeded with ``seed``.

        Returns:
            ``(n, views, C, S, S)`` normalized float32 on ``device``.
        """
        stream = self._probe_stream("train")
        crops = torch.stack(
            [
                torch.stack([stream.train_view(i, int(seed), v) for v in range(views)])
                for i in self._probe_indices("train", n)
            ]
        )  # (n, views, C, S, S) uint8
        return self.normalize(crops.flatten(0, 1).to(device)).unflatten(0, crops.shape[:2])
