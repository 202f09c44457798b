"""Encoded image bytes -> uint8 tensors, one sample at a time, in loader workers.

The streaming datamodule stores every image as its original encoded file (PNG, JPEG, ...) and
decodes it per sample:

* :func:`train_crop` takes a training crop from the original image (torchvision's
  ``RandomResizedCrop``, bicubic, then a horizontal flip), with every random number drawn from a
  seed, so the same ``(seed, epoch, index)`` gives the same crop in any process, before and after
  a resume;
* :func:`centre_crop` resizes the shorter side and crops the centre square (held-out images);
* :func:`sample_seed` mixes ``(seed, epoch, index)`` into one 63-bit seed.

A sample PIL cannot decode raises :class:`~maskrank.data.image_files.CorruptImageError` with the
caller's description of where the sample lives.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode, RandomHorizontalFlip, RandomResizedCrop
from torchvision.transforms.functional import center_crop, resize

from maskrank.data.image_files import CorruptImageError
from maskrank.data.messages import one_line

__all__ = ["centre_crop", "decode", "sample_seed", "train_crop"]

_DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def decode(data: bytes, in_chans: int, where: str) -> Image.Image:
    """Decode encoded image bytes to an RGB (``in_chans`` 3) or grey (1) PIL image.

    Raises:
        CorruptImageError: naming ``where`` (e.g. the shard and sample index) when PIL cannot
            decode the bytes.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB" if in_chans == 3 else "L")
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"{where} is not a readable image ({one_line(exc)})") from None


def _to_tensor(image: Image.Image) -> Tensor:
    """PIL image -> uint8 ``(C, H, W)``."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3) or (H, W)
    return pixels.permute(2, 0, 1).contiguous() if pixels.ndim == 3 else pixels.unsqueeze(0)


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

    ``RandomResizedCrop(image_size, scale=crop_scale, bicubic)`` then, with ``hflip``, a flip with
    probability 0.5, drawn from the global torch RNG forked and seeded with ``seed`` (the caller's
    RNG state is unchanged afterwards).
    """
    image = decode(data, in_chans, where)
    crop = RandomResizedCrop(
        image_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = crop(image)
        if hflip:
            image = RandomHorizontalFlip(0.5)(image)
    return _to_tensor(image)


def centre_crop(data: bytes, image_size: int, in_chans: int, where: str) -> Tensor:
    """Shorter side resized to ``image_size`` (bicubic), then the centre square: uint8 (C, S, S)."""
    image = decode(data, in_chans, where)
    if image.size != (image_size, image_size):
        image = resize(image, image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        image = center_crop(image, [image_size, image_size])
    return _to_tensor(image)
