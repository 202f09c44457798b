"""Decode image files to uint8 tensors, one by one or all at once, with an on-disk cache.

* :func:`load_image` opens one file with PIL, converts it to RGB or grey, resizes its shorter side
  to ``image_size`` and centre-crops a square: ``(C, S, S)`` uint8.
* :class:`ImageFiles` is a dataset over ``(path, label)`` pairs that decodes in DataLoader workers
  and returns whole stacked batches from ``__getitems__``.
* :func:`decode_all` decodes a file list through a DataLoader into one ``(N, C, S, S)`` tensor.
* :func:`cache_key`, :func:`load_cache` and :func:`save_cache` keep decoded tensors in a
  ``torch.save`` file keyed by everything that determines them, written atomically.

A file PIL cannot read raises :class:`CorruptImageError`, a
:class:`~maskrank.errors.CorruptFileError` naming the file, also when raised in a worker process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from maskrank.data.messages import one_line
from maskrank.data.pairs import keep_batch
from maskrank.errors import CorruptFileError
from maskrank.io.atomic import atomic_torch_save

__all__ = [
    "CorruptImageError",
    "ImageFiles",
    "cache_key",
    "decode_all",
    "decode_dataset",
    "load_cache",
    "load_image",
    "save_cache",
]

Sample = tuple[str, int]  # (path, class index)
_CACHE_VERSION = 1


class CorruptImageError(CorruptFileError):
    """An image file PIL cannot decode; the message names the file.

    When raised in a DataLoader worker, torch re-raises it in the main process as
    ``CorruptImageError("Caught CorruptImageError in DataLoader worker ... Traceback ...")``; the
    constructor keeps only the original one-line message so the user sees no traceback.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            last = message.rstrip().splitlines()[-1]  # "<module>.CorruptImageError: <message>"
            message = last.split("CorruptImageError: ", 1)[-1]
        super().__init__(message)


def load_image(path: str, image_size: int, in_chans: int) -> Tensor:
    """Decode ``path`` to a ``(in_chans, image_size, image_size)`` uint8 tensor.

    The shorter side is resized to ``image_size`` (bilinear, antialiased by PIL when shrinking),
    then the centre square is cropped. Images already of that size are not resampled.
    """
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB" if in_chans == 3 else "L")
        width, height = image.size
        if (width, height) != (image_size, image_size):
            scale = image_size / min(width, height)
            new_w = max(image_size, round(width * scale))
            new_h = max(image_size, round(height * scale))
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
            image = image.crop((left, top, left + image_size, top + image_size))
        pixels = np.array(image, dtype=np.uint8)  # (S, S, 3) or (S, S)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise CorruptImageError(
            f"{path} is not a readable image ({one_line(exc)}); delete or replace it"
        ) from None
    tensor = torch.from_numpy(pixels)
    return tensor.permute(2, 0, 1).contiguous() if tensor.ndim == 3 else tensor.unsqueeze(0)


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """Images decoded from files on access, for data that does not fit in memory.

    Args:
        samples: ``(path, class index)`` pairs.
        image_size: side of the square uint8 images returned.
        in_chans: 3 (RGB) or 1 (grey).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, in_chans: int) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """One ``(image uint8 (C, S, S), label)`` pair."""
        path, label = self.samples[index]
        return load_image(path, self.image_size, self.in_chans), label

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """A stacked batch ``(images uint8 (B, C, S, S), labels int64 (B,))``."""
        images = torch.stack([self[int(i)][0] for i in indices])  # (B, C, S, S)
        labels = torch.tensor([self.samples[int(i)][1] for i in indices], dtype=torch.int64)
        return images, labels

    def subset(self, indices: Tensor) -> ImageFiles:
        """The files at ``indices``, in that order."""
        return ImageFiles([self.samples[int(i)] for i in indices], self.image_size, self.in_chans)


def decode_all(
    samples: Sequence[Sample], image_size: int, in_chans: int, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Decode every file through a DataLoader with ``num_workers`` worker processes.

    Returns:
        ``(images uint8 (N, C, S, S), labels int64 (N,))`` in the order of ``samples``.
    """
    return decode_dataset(ImageFiles(samples, image_size, in_chans), num_workers)


def decode_dataset(dataset: Dataset, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Every item of a dataset whose ``__getitems__`` returns stacked ``(uint8 (B, C, S, S),
    int64 (B,))`` batches, decoded through a DataLoader into one tensor pair, in order."""
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=256,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=keep_batch,
    )
    images: Tensor | None = None
    labels = torch.empty(len(dataset), dtype=torch.int64)  # type: ignore[arg-type]
    start = 0
    for batch_images, batch_labels in loader:  # (B, C, S, S), (B,)
        if images is None:  # one allocation: the geometry is the first batch's
            images = batch_images.new_empty((len(labels), *batch_images.shape[1:]))
        images[start : start + len(batch_labels)] = batch_images
        labels[start : start + len(batch_labels)] = batch_labels
        start += len(batch_labels)
    if images is None:
        raise ValueError("decode_dataset: the dataset is empty")
    return images, labels


def cache_key(
    root: str, split: str, image_size: int, in_chans: int, samples: Sequence[Sample]
) -> str:
    """Hash of everything that determines the decoded tensors of one split.

    Covers the absolute root, the split, the output geometry and, for every file in (sorted)
    sample order, its path relative to the root, label, size and modification time.
    """
    absolute = os.path.realpath(root)
    digest = hashlib.sha256()
    header = {"v": _CACHE_VERSION, "root": absolute, "split": split, "size": image_size}
    digest.update(json.dumps({**header, "c": in_chans}, sort_keys=True).encode())
    prefix = os.path.join(root, "")  # sample paths are built by joining onto root
    for path, label in samples:
        stat = os.stat(path)
        rel = path[len(prefix) :] if path.startswith(prefix) else path
        digest.update(f"{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_cache(path: str, count: int, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor] | None:
    """Load a cache file written by :func:`save_cache`; ``None`` if absent, unreadable or stale."""
    if not os.path.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = entry["images"], entry["labels"]
    except Exception as exc:  # a damaged cache is rebuilt, not fatal
        rank_zero_warn(f"ignoring unreadable image cache {path} ({one_line(exc)}); rebuilding it")
        return None
    if images.shape != (count, *shape) or images.dtype != torch.uint8 or labels.shape != (count,):
        return None
    return images, labels


def save_cache(path: str, images: Tensor, labels: Tensor) -> None:
    """Write the cache atomically (:func:`maskrank.io.atomic.atomic_torch_save`).

    A failure to write (read-only or full disk) only warns: the data is already decoded.
    """
    try:
        atomic_torch_save({"images": images, "labels": labels}, path)
    except OSError as exc:
        rank_zero_warn(
            f"could not write image cache {path} ({one_line(exc)}); continuing without it"
        )
