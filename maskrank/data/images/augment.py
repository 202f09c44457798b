"""Pure, batched augmentation functions that run on whatever device the batch lives on.

Every function takes a whole batch ``(B, C, H, W)`` and draws its per-sample random numbers in one
call, so a batch is augmented with a handful of kernel launches instead of a Python loop over
images. Nothing here holds state: the datamodules call these from ``on_after_batch_transfer``
(on the training device), and anything else can call them directly.

Random numbers come from ``generator`` when one is given (it must live on the batch's device),
otherwise from the device's global generator, which ``pl.seed_everything`` seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_hflip", "random_resized_crop", "resize_uint8", "to_float"]


def _check_batch(images: Tensor, name: str) -> None:
    """Raise ValueError unless ``images`` is a 4-D ``(B, C, H, W)`` tensor."""
    if images.ndim != 4:
        raise ValueError(f"{name} expects images of shape (B, C, H, W), got {tuple(images.shape)}")


def _check_range(name: str, bounds: Sequence[float], low: float, high: float | None) -> None:
    """Raise ValueError unless ``bounds`` is an ordered pair inside ``(low, high]``."""
    if len(bounds) != 2:
        raise ValueError(f"{name} must be a pair (min, max), got {tuple(bounds)}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo <= hi:
        raise ValueError(f"{name} must satisfy min <= max, got ({lo}, {hi})")
    if not lo > low or (high is not None and not hi <= high):
        upper = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must lie in ({low}, {upper}, got ({lo}, {hi})")


def to_float(images_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Convert uint8 images to normalized float32: ``(x / 255 - mean) / std``.

    The division and subtraction are folded into a single fused multiply-add
    ``x * (1 / (255 std)) + (-mean / std)``.

    Args:
        images_uint8: ``(B, C, H, W)`` images, any integer or float dtype on the 0..255 scale.
        mean: per-channel mean on the 0..1 scale; length ``C`` (or 1, broadcast to all channels).
        std: per-channel standard deviation on the 0..1 scale; same length rules as ``mean``.

    Returns:
        ``(B, C, H, W)`` float32 tensor on the input's device.
    """
    _check_batch(images_uint8, "to_float")
    channels = images_uint8.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(
            f"to_float: mean/std need 1 or {channels} values for {channels}-channel images, "
            f"got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"to_float: std values must be positive, got {tuple(std)}")
    device = images_uint8.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)  # (1, C, 1, 1)
    shift = -mean_t / std_t  # (1, C, 1, 1)
    return torch.addcmul(shift, images_uint8.to(torch.float32), scale)  # (B, C, H, W)


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random box from every image and resample it to ``size x size`` (bilinear).

    Per sample, the box covers a fraction of the image area drawn uniformly from ``scale`` and has
    an aspect ratio (width / height) drawn log-uniformly from ``ratio``. A box wider or taller than
    the image is clipped to the image (which changes its aspect ratio), and its position is drawn
    uniformly among the positions that keep it inside the image, so no padding is ever sampled.
    The whole batch is resampled at once with ``F.affine_grid`` + ``F.grid_sample``.

    With ``scale=(1, 1)``, ``ratio=(1, 1)`` and ``size`` equal to a square input's side, the output
    equals the input (the sampling grid falls exactly on pixel centres).

    Args:
        images: ``(B, C, H, W)`` floating-point images, any number of channels.
        size: side of the square output, in pixels.
        scale: ``(min, max)`` fraction of the image area covered by the box, in ``(0, 1]``.
        ratio: ``(min, max)`` aspect ratio (width / height) of the box, positive.
        generator: optional generator on ``images.device``.

    Returns:
        ``(B, C, size, size)`` tensor with the dtype and device of ``images``.
    """
    _check_batch(images, "random_resized_crop")
    if not images.is_floating_point():
        raise TypeError(f"random_resized_crop expects floating-point images, got {images.dtype}")
    if size < 1:
        raise ValueError(f"random_resized_crop: size must be >= 1, got {size}")
    _check_range("random_resized_crop: scale", scale, 0.0, 1.0)
    _check_range("random_resized_crop: ratio", ratio, 0.0, None)

    batch, channels, height, width = images.shape
    device = images.device
    uniform = torch.rand(batch, 4, device=device, generator=generator)  # (B, 4) in [0, 1)
    area = scale[0] + (scale[1] - scale[0]) * uniform[:, 0]  # (B,) area fraction
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform[:, 1])  # (B,) width / height

    # Box size in pixels, clipped to the image; then as a fraction of the image side.
    target_area = area * (height * width)
    box_w = torch.sqrt(target_area * aspect).clamp(max=width)  # (B,)
    box_h = torch.sqrt(target_area / aspect).clamp(max=height)  # (B,)
    frac_w = box_w / width  # (B,) in (0, 1]
    frac_h = box_h / height  # (B,)

    # Box centre in normalized [-1, 1] coordinates, uniform over positions inside the image.
    centre_x = (2.0 * uniform[:, 2] - 1.0) * (1.0 - frac_w)  # (B,)
    centre_y = (2.0 * uniform[:, 3] - 1.0) * (1.0 - frac_h)  # (B,)

    # theta maps output coordinates in [-1, 1] to input coordinates: x_in = frac * x_out + centre.
    theta = torch.zeros(batch, 2, 3, device=device, dtype=images.dtype)  # (B, 2, 3)
    theta[:, 0, 0] = frac_w
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = frac_h
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)  # (B,S,S,2)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, S, S)


def random_hflip(
    images: Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """Mirror each image left-right independently with probability ``p``.

    Args:
        images: ``(B, C, H, W)`` images of any dtype.
        p: flip probability in ``[0, 1]``.
        generator: optional generator on ``images.device``.

    Returns:
        ``(B, C, H, W)`` tensor: flipped samples are exact mirrors, the others are unchanged.
    """
    _check_batch(images, "random_hflip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must lie in [0, 1], got {p}")
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p  # (B,)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def resize_uint8(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Resize uint8 images to ``size x size`` once, bilinear with antialiasing, in chunks.

    Used to bring a whole in-memory dataset to the model's resolution after loading; works in
    chunks of ``chunk`` images so the float32 intermediate stays small.

    Args:
        images: ``(N, C, H, W)`` uint8 images.
        size: side of the square output.
        chunk: images resized per step.

    Returns:
        ``(N, C, size, size)`` uint8 tensor (the input itself when it already has that size).
    """
    _check_batch(images, "resize_uint8")
    if size < 1:
        raise ValueError(f"resize_uint8: size must be >= 1, got {size}")
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(
        (images.shape[0], images.shape[1], size, size), dtype=torch.uint8, device=images.device
    )  # (N, C, size, size)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float32)  # (n, C, H, W)
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out
