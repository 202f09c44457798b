"""Invariants of the batched augmentation functions."""

from __future__ import annotations

import pytest
import torch

from maskrank.data.images.augment import random_hflip, random_resized_crop, resize_uint8, to_float


def _ramps(batch: int, height: int, width: int) -> torch.Tensor:
    """(B, 2, H, W): channel 0 holds each pixel's column index, channel 1 its row index."""
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    return torch.stack([cols, rows]).expand(batch, 2, height, width).contiguous()


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_identity_crop_reproduces_input(channels: int) -> None:
    images = torch.rand(4, channels, 12, 12)
    out = random_resized_crop(images, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_output_shape_and_dtype(channels: int) -> None:
    images = torch.rand(6, channels, 20, 14, dtype=torch.float64)
    out = random_resized_crop(images, 9)
    assert out.shape == (6, channels, 9, 9)
    assert out.dtype == torch.float64


def test_constant_image_stays_constant() -> None:
    images = torch.full((16, 3, 10, 10), 0.7)
    out = random_resized_crop(images, 6, scale=(0.05, 1.0), ratio=(0.2, 5.0))
    torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_crop_boxes_lie_inside_image_with_requested_area_and_ratio() -> None:
    # Sampling a coordinate ramp exposes each crop box: bilinear sampling of a linear ramp is
    # exact inside the image, so outputs stay affine with no clamped plateaus, and the output's
    # span gives back the box size.
    size, side, scale, ratio = 4, 64, (0.3, 0.6), (0.8, 1.25)
    generator = torch.Generator().manual_seed(3)
    out = random_resized_crop(_ramps(64, side, side), size, scale, ratio, generator=generator)
    cols, rows = out[:, 0], out[:, 1]  # (B, S, S)
    assert cols.min() >= 0 and cols.max() <= side - 1
    assert rows.min() >= 0 and rows.max() <= side - 1
    torch.testing.assert_close(
        cols.diff(n=2, dim=-1), torch.zeros(64, size, size - 2), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        rows.diff(n=2, dim=-2), torch.zeros(64, size - 2, size), atol=1e-3, rtol=0
    )
    # Output pixel centres span (S - 1) / S of the box.
    box_w = (cols[:, 0, -1] - cols[:, 0, 0]) * size / (size - 1)  # (B,)
    box_h = (rows[:, -1, 0] - rows[:, 0, 0]) * size / (size - 1)  # (B,)
    area = box_w * box_h / side**2
    aspect = box_w / box_h
    assert area.min() >= scale[0] - 1e-3 and area.max() <= scale[1] + 1e-3
    assert aspect.min() >= ratio[0] - 1e-3 and aspect.max() <= ratio[1] + 1e-3
    assert area.std() > 0.02  # boxes differ per sample
    assert cols[:, 0, 0].std() > 1.0  # and so do positions


def test_crop_is_reproducible_with_generator() -> None:
    images = torch.rand(5, 3, 16, 16)
    a = random_resized_crop(images, 8, generator=torch.Generator().manual_seed(1))
    b = random_resized_crop(images, 8, generator=torch.Generator().manual_seed(1))
    c = random_resized_crop(images, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": (0.8, 0.2)}, "min <= max"),
        ({"scale": (0.0, 1.0)}, r"\(0.0, 1.0\]"),
        ({"scale": (0.5, 1.5)}, r"\(0.0, 1.0\]"),
        ({"ratio": (-1.0, 1.0)}, "ratio"),
        ({"ratio": (2.0, 1.0)}, "min <= max"),
        ({"size": 0}, "size"),
    ],
)
def test_crop_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        random_resized_crop(torch.rand(2, 3, 8, 8), **args)


def test_crop_rejects_uint8_and_wrong_rank() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        random_resized_crop(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_resized_crop(torch.rand(3, 8, 8), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_hflip_mirrors_exactly_the_flipped_samples(dtype: torch.dtype) -> None:
    images = (torch.rand(32, 3, 5, 7) * 255).to(dtype)
    out = random_hflip(images, p=0.5, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, images, strict=True)])
    assert bool((flipped | kept).all())
    assert 0 < int(flipped.sum()) < 32  # both cases occur at p = 0.5
    assert out.dtype == dtype


def test_hflip_probability_extremes() -> None:
    images = torch.rand(8, 1, 4, 6)
    assert torch.equal(random_hflip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_hflip(images, p=0.0), images)
    with pytest.raises(ValueError, match="p must lie"):
        random_hflip(images, p=1.5)


def test_to_float_normalizes_per_channel() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = (
        images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()
    ) / torch.tensor(std).view(1, 3, 1, 1).double()
    out = to_float(images, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_to_float_single_channel_and_errors() -> None:
    images = torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)
    torch.testing.assert_close(to_float(images, (0.5,), (0.5,)), torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="mean/std"):
        to_float(images, (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        to_float(images, (0.5,), (0.0,))


def test_resize_uint8() -> None:
    images = torch.randint(0, 256, (3, 2, 8, 8), dtype=torch.uint8)
    assert resize_uint8(images, 8) is images
    constant = torch.full((5, 3, 28, 28), 77, dtype=torch.uint8)
    out = resize_uint8(constant, 12, chunk=2)
    assert out.shape == (5, 3, 12, 12) and out.dtype == torch.uint8
    assert bool((out == 77).all())
