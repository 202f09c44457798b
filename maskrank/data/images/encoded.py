"""Encoded image bytes -> uint8 tensors, one sample at a time, in loader workers.

The streaming datamodule stores every image as its original encoded file (PNG, JPEG, ...) and
decodes it per sample:

* :func:`train_crop` takes a training crop from the original image with the file-backed path's
  decoder (:func:`maskrank.data.images.decode.decode_crop`), every random number drawn from a seed, so
  the same ``(seed, epoch, index)`` gives the same crop in any process, before and after a resume;
* :func:`centre_crop` resizes the shorter side and crops the centre square (held-out images);
* :func:`sample_seed` mixes ``(seed, epoch, index)`` into one 63-bit seed.

A sample that cannot be decoded raises :class:`~maskrank.data.images.files.CorruptImageError` with the
caller's description of where the sample lives.
"""

from __future__ import annotations

import random

import numpy as np
from torch import Tensor

from maskrank.data.images.crops import CropSpec
from maskrank.data.images.decode import decode_crop
from maskrank.data.images.files import CorruptImageError
from maskrank.data.messages import one_line

__all__ = ["centre_crop", "sample_seed", "train_crop"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def train_crop(
    data: bytes,
    seed: int,
    image_size: int,
    crop_scale: tuple[float, float],
    hflip: bool,
    in_chans: int,
    where: str,
) -> Tensor:
    """A random resized crop of the original image, ``(in_chans, image_size, image_size)`` uint8.

    The file-backed path's crop (:func:`maskrank.data.images.decode.decode_crop`: random resized box,
    ratio (3/4, 4/3), bicubic, a flip with probability 0.5 with ``hflip``, decoding only what the
    box needs), its random numbers drawn from ``random.Random(seed)``.
    """
    spec = CropSpec(size=image_size, train=True, scale=tuple(crop_scale), hflip=hflip)
    return _crop(data, spec, random.Random(seed), in_chans, where)


def centre_crop(data: bytes, image_size: int, in_chans: int, where: str) -> Tensor:
    """Shorter side resized to ``image_size`` (bicubic), then the centre square: uint8 (C, S, S)."""
    return _crop(data, CropSpec(size=image_size, train=False, crop_pct=1.0), None, in_chans, where)


def _crop(
    data: bytes, spec: CropSpec, rng: random.Random | None, in_chans: int, where: str
) -> Tensor:
    try:
        image, _, _ = decode_crop(data, spec, rng, in_chans)
    except CorruptImageError as exc:  # name the shard and sample, not "bytes"
        raise CorruptImageError(f"{where} is not a readable image ({one_line(exc)})") from None
    return image
