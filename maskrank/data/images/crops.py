"""Crop boxes in an image's original pixel coordinates, drawn from a seeded generator.

These are pure functions of an image's size, the crop settings and a ``random.Random`` generator,
so a worker process that knows ``(seed, epoch, index)`` (see :func:`crop_rng`) draws the same box
in any process, after any restart:

* :func:`random_resized_box`: torchvision's ``RandomResizedCrop.get_params`` rule (area fraction
  uniform in ``scale``, aspect ratio log-uniform in ``ratio``, 10 tries, then the centre crop with
  the ratio clamped), the augmentation of the MAE and timm ImageNet recipes;
* :func:`centre_box`: the evaluation crop, the centre square of side ``crop_pct`` x the shorter
  side, i.e. "resize the shorter side to ``size / crop_pct``, then centre-crop ``size``";
* :func:`draw_crop`: one of the two, plus the horizontal flip, as :class:`CropSpec` says.

A box is resampled to the output size by :mod:`maskrank.data.images.decode`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from maskrank.errors import ConfigError

__all__ = ["CropBox", "CropSpec", "centre_box", "crop_rng", "draw_crop", "random_resized_box"]


@dataclass(frozen=True)
class CropBox:
    """An integer pixel box ``[left, left + width) x [top, top + height)`` inside an image."""

    left: int
    top: int
    width: int
    height: int

    def scaled(self, factor_x: float, factor_y: float) -> CropBox:
        """The same region in an image resized by ``(factor_x, factor_y)`` (at least 1 pixel)."""
        left, top = round(self.left * factor_x), round(self.top * factor_y)
        right = max(left + 1, round((self.left + self.width) * factor_x))
        bottom = max(top + 1, round((self.top + self.height) * factor_y))
        return CropBox(left, top, right - left, bottom - top)


@dataclass(frozen=True)
class CropSpec:
    """How one image becomes a ``size x size`` crop.

    Args:
        size: side of the square output, in pixels.
        train: draw a random resized crop (and flip); ``False`` takes the centre crop.
        scale: ``(min, max)`` area fraction of the random crop, in ``(0, 1]``.
        ratio: ``(min, max)`` aspect ratio (width / height) of the random crop.
        hflip: flip training crops left-right with probability 0.5.
        crop_pct: fraction of the shorter side the evaluation crop keeps, in ``(0, 1]``.
    """

    size: int
    train: bool
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"--data.image_size must be >= 1, got {self.size}")
        if not (len(self.scale) == 2 and 0.0 < self.scale[0] <= self.scale[1] <= 1.0):
            raise ConfigError(f"--data.crop_scale must be (min, max) in (0, 1], got {self.scale}")
        if not (len(self.ratio) == 2 and 0.0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(
                f"crop ratio must be (min, max) with 0 < min <= max, got {self.ratio}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"--data.crop_pct must lie in (0, 1], got {self.crop_pct!r}")


def crop_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation: a pure function of ``(seed, epoch, index)``.

    A string seed is hashed with SHA-512 by ``random.Random``, the same in every process (unlike
    ``hash()``), and costs microseconds where a numpy ``SeedSequence`` costs tenths of a millisecond.
    """
    return random.Random(f"maskrank-crop:{seed}:{epoch}:{index}")


def random_resized_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> CropBox:
    """A random box of an image of ``width x height`` pixels, by torchvision's rule.

    Up to 10 tries draw an area fraction uniformly from ``scale`` and an aspect ratio (width /
    height) log-uniformly from ``ratio``; the first box that fits is placed uniformly at random.
    If none fits, the largest centred box whose ratio is ``ratio`` clamped is returned.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return CropBox(left, top, w, h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def centre_box(width: int, height: int, crop_pct: float) -> CropBox:
    """The centre square of side ``crop_pct * min(width, height)`` (at least 1 pixel)."""
    side = max(1, int(round(crop_pct * min(width, height))))
    return CropBox((width - side) // 2, (height - side) // 2, side, side)


def draw_crop(
    width: int, height: int, spec: CropSpec, rng: random.Random | None
) -> tuple[CropBox, bool]:
    """The box and flip of one image: random for training (``rng`` required), centred otherwise."""
    if not spec.train:
        return centre_box(width, height, spec.crop_pct), False
    if rng is None:
        raise ValueError("draw_crop: a training crop needs a generator")
    box = random_resized_box(width, height, spec.scale, spec.ratio, rng)
    flip = bool(spec.hflip and rng.random() < 0.5)
    return box, flip
