"""Decode one encoded image straight to a square uint8 crop, decoding no more than the crop needs.

:func:`decode_crop` is a pure function of (encoded bytes or a file path, a
:class:`~maskrank.data.images.crops.CropSpec`, a ``random.Random`` generator): it reads the image's size from its
header, draws the crop box there (:func:`~maskrank.data.images.crops.draw_crop`), decodes, and resamples
the box to ``size x size``. :func:`decode_box` does the same for a given box. Both return
``(C, size, size)`` uint8 tensors. Any source of encoded images (files, shards, byte streams) can
call them inside DataLoader workers.

Decoding:

* JPEGs are decoded by ``simplejpeg`` (libjpeg-turbo), which measured faster than PIL on
  ImageNet-sized files (docs/RESULTS.md); other formats, CMYK JPEGs and a missing
  ``simplejpeg`` use PIL.
* When the box is at least twice the output size on both sides, the JPEG is decoded at 1/2, 1/4 or
  1/8 size by libjpeg's DCT scaling (PIL's draft mode does the same), and the box is scaled with
  it. Only these power-of-two factors are used: libjpeg-turbo's other M/8 factors have no SIMD
  path and decode slower than the full image.
* The box is resampled with torch's antialiased bicubic interpolation on uint8, which matches PIL's
  bicubic ``resize`` to a few levels at a third of its cost.

A file that cannot be decoded raises :class:`~maskrank.data.images.files.CorruptImageError` naming
it; the random draw happens before decoding, so a generator advances the same way on every path.
"""

from __future__ import annotations

import io
import math
import os
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from maskrank.data.images.crops import CropBox, CropSpec, draw_crop
from maskrank.data.images.files import CorruptImageError
from maskrank.data.messages import one_line

try:  # optional: PIL decodes everything when it is missing
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

__all__ = ["HAS_SIMPLEJPEG", "Source", "decode_box", "decode_crop", "reduction_factor"]

HAS_SIMPLEJPEG = simplejpeg is not None
Source = bytes | str | os.PathLike
_JPEG_MAGIC = b"\xff\xd8"


def reduction_factor(box: CropBox, size: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides of ``box`` at least ``size`` pixels."""
    factor = 1
    while factor < 8 and min(box.width, box.height) >= 2 * factor * size:
        factor *= 2
    return factor


def _is_bytes(source: Source) -> bool:
    return isinstance(source, bytes | bytearray | memoryview)


def _read(source: Source) -> bytes:
    """The encoded bytes of ``source``."""
    if _is_bytes(source):
        return bytes(source)  # type: ignore[arg-type]
    with open(source, "rb") as handle:
        return handle.read()


class _Decoder:
    """One encoded image: its size from the header, then its pixels at a reduced size."""

    def __init__(self, data: bytes, in_chans: int) -> None:
        self.data, self.in_chans = data, in_chans
        self.pil: Image.Image | None = None
        header = None
        if HAS_SIMPLEJPEG and data[:2] == _JPEG_MAGIC:
            try:
                header = simplejpeg.decode_jpeg_header(data)  # (H, W, colorspace, subsampling)
            except ValueError:
                header = None
        if header is not None and header[2] != "CMYK":
            self.height, self.width = int(header[0]), int(header[1])
        else:
            self.pil = Image.open(io.BytesIO(data))
            self.width, self.height = self.pil.size

    def pixels(self, factor: int) -> np.ndarray:
        """``(H', W', C)`` uint8 pixels, decoded at ``1 / factor`` of the size when possible."""
        if self.pil is None:
            try:
                colorspace = "RGB" if self.in_chans == 3 else "GRAY"
                if factor == 1:
                    return simplejpeg.decode_jpeg(self.data, colorspace=colorspace)
                # simplejpeg picks the smallest scale meeting both minimums: exactly 1 / factor
                min_h, min_w = math.ceil(self.height / factor), math.ceil(self.width / factor)
                return simplejpeg.decode_jpeg(
                    self.data, colorspace=colorspace, min_height=min_h, min_width=min_w
                )
            except ValueError:  # let PIL try (and name the problem if it fails too)
                self.pil = Image.open(io.BytesIO(self.data))
        mode = "RGB" if self.in_chans == 3 else "L"
        if factor > 1 and self.pil.format == "JPEG":
            size = (math.ceil(self.width / factor), math.ceil(self.height / factor))
            self.pil.draft(mode, size)
        array = np.array(self.pil.convert(mode), dtype=np.uint8)  # (H', W'[, 3])
        return array if array.ndim == 3 else array[:, :, None]


def _resample(pixels: np.ndarray, box: CropBox, size: int, flip: bool) -> Tensor:
    """``box`` of ``(H, W, C)`` pixels as a ``(C, size, size)`` uint8 tensor, bicubic."""
    # a contiguous (h, w, C) copy is a channels-last (1, C, h, w) tensor: torch's fast uint8 path
    region = np.ascontiguousarray(
        pixels[box.top : box.top + box.height, box.left : box.left + box.width]
    )
    image = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)
    if (box.height, box.width) != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bicubic", antialias=True)
    out = image[0]  # (C, size, size)
    return (out.flip(-1) if flip else out).contiguous()


def _decode(
    source: Source,
    size: int,
    in_chans: int,
    reduce: bool,
    choose: Callable[[int, int], tuple[CropBox, bool]],
) -> Tensor:
    """Read the size, ``choose(width, height)`` the box and flip, decode, resample."""
    name = "encoded image" if _is_bytes(source) else os.fspath(source)  # type: ignore[arg-type]
    try:
        decoder = _Decoder(_read(source), in_chans)
        box, flip = choose(decoder.width, decoder.height)
        factor = reduction_factor(box, size) if reduce else 1
        pixels = decoder.pixels(factor)  # (H', W', C)
        if factor > 1 or pixels.shape[:2] != (decoder.height, decoder.width):
            box = box.scaled(pixels.shape[1] / decoder.width, pixels.shape[0] / decoder.height)
        return _resample(pixels, box, size, flip)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise CorruptImageError(
            f"{name} is not a readable image ({one_line(exc)}); delete or replace it"
        ) from None


def decode_crop(
    source: Source,
    spec: CropSpec,
    rng: random.Random | None,
    in_chans: int = 3,
    reduce: bool = True,
) -> tuple[Tensor, CropBox, bool]:
    """Decode ``source`` to its ``spec`` crop: ``(image uint8 (C, S, S), box, flipped)``.

    Args:
        source: encoded image bytes, or the path of an image file.
        spec: the crop (random resized + flip for training, centre crop otherwise).
        rng: draws the training crop (see :func:`~maskrank.data.images.crops.crop_rng`); unused for
            evaluation crops.
        in_chans: 3 decodes to RGB, 1 to grey.
        reduce: allow reduced-size (DCT-scaled) decoding of boxes >= 2x the output size.

    Returns:
        the crop, the box in the original image's pixels, and whether it was flipped.
    """
    drawn: list[tuple[CropBox, bool]] = []

    def choose(width: int, height: int) -> tuple[CropBox, bool]:
        drawn.append(draw_crop(width, height, spec, rng))
        return drawn[-1]

    image = _decode(source, spec.size, in_chans, reduce, choose)
    return image, drawn[0][0], drawn[0][1]


def decode_box(
    source: Source,
    box: CropBox,
    size: int,
    flip: bool = False,
    in_chans: int = 3,
    reduce: bool = True,
) -> Tensor:
    """Decode the pixels of ``box`` (original coordinates) to a ``(C, size, size)`` uint8 tensor."""
    return _decode(source, size, in_chans, reduce, lambda width, height: (box, flip))
