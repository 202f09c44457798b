"""Synthetic images with a known low-rank structure: a union of smooth class subspaces.

Each class ``k`` owns a random ``class_rank``-dimensional subspace of pixel space, spanned by smooth
images (Gaussian noise low-pass filtered with a Gaussian of width ``smoothness`` pixels, then
orthonormalised by QR). A sample of class ``k`` is ``128 + B_k c`` with ``c ~ N(0, s^2 I)``, ``s``
chosen so the per-pixel std is about ``signal_std`` (on the 0..255 scale), plus optional Gaussian
pixel noise, rounded to uint8. The few samples whose peak would leave 0..255 are shrunk toward 128
as a whole (a scalar multiple stays in the subspace) rather than clipped. Without noise, the centred pixel matrix ``images - 128`` therefore
has rank ``num_classes * class_rank`` (the *intrinsic rank*) up to uint8 rounding, and each class is
a different subspace, so a small ViT can learn to tell them apart.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from maskrank.data.base import InMemoryImageDataModule, Split
from maskrank.data.messages import require
from maskrank.data.pairs import TensorPairs

__all__ = ["SyntheticLowRank", "make_class_bases", "make_low_rank_images", "sample_from_bases"]

_CENTRE = 128.0
_MAX_DEVIATION = 127.0  # 128 +- 127 stays inside 0..255 after rounding


def _as_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator: ``seed`` itself, or a new one seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def _gaussian_blur(noise: Tensor, sigma: float) -> Tensor:
    """Low-pass filter ``(M, C, H, W)`` images with a periodic Gaussian of std ``sigma`` px (FFT)."""
    if sigma <= 0:
        return noise
    height, width = noise.shape[-2:]
    fy = torch.fft.fftfreq(height, dtype=noise.dtype).view(-1, 1)  # (H, 1) cycles / px
    fx = torch.fft.rfftfreq(width, dtype=noise.dtype).view(1, -1)  # (1, W//2+1)
    transfer = torch.exp(-2.0 * math.pi**2 * sigma**2 * (fx**2 + fy**2))  # (H, W//2+1)
    spectrum = torch.fft.rfft2(noise)  # (M, C, H, W//2+1)
    return torch.fft.irfft2(spectrum * transfer, s=(height, width))  # (M, C, H, W)


def make_class_bases(
    num_classes: int,
    class_rank: int,
    image_size: int,
    in_chans: int,
    smoothness: float = 2.0,
    seed: int | torch.Generator = 0,
) -> Tensor:
    """Draw one orthonormal basis of smooth images per class.

    Returns:
        ``(K, class_rank, C*H*W)`` float64 tensor; ``bases[k]`` has orthonormal rows.
    """
    dim = in_chans * image_size * image_size
    if num_classes < 1 or class_rank < 1 or image_size < 1 or in_chans < 1:
        raise ValueError("make_class_bases: all sizes must be >= 1")
    if class_rank > dim:
        raise ValueError(f"make_class_bases: class_rank {class_rank} exceeds pixel dim {dim}")
    generator = _as_generator(seed)
    shape = (num_classes * class_rank, in_chans, image_size, image_size)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)  # (K*d, C, H, W)
    smooth = _gaussian_blur(noise, smoothness).reshape(num_classes, class_rank, dim)  # (K, d, D)
    q, _ = torch.linalg.qr(smooth.transpose(1, 2))  # (K, D, d) orthonormal columns
    return q.transpose(1, 2).contiguous()  # (K, d, D)


def sample_from_bases(
    bases: Tensor,
    num_samples: int,
    image_size: int,
    in_chans: int,
    signal_std: float = 32.0,
    noise_std: float = 0.0,
    seed: int | torch.Generator = 1,
) -> tuple[Tensor, Tensor]:
    """Draw class-balanced samples ``128 + B_k c (+ noise)`` from per-class ``bases``.

    Args:
        bases: ``(K, d, C*H*W)`` orthonormal class bases from :func:`make_class_bases`.
        num_samples: number of images N; labels cycle through the classes, then are shuffled.
        image_size: H = W of the images.
        in_chans: C.
        signal_std: per-pixel std of the signal on the 0..255 scale (the measured std comes out
            a few percent lower, because samples that would leave 0..255 are shrunk).
        noise_std: std of i.i.d. Gaussian pixel noise added before rounding.
        seed: seed or CPU generator for labels, coefficients and noise.

    Returns:
        ``(images uint8 (N, C, H, W), labels int64 (N,))``.
    """
    num_classes, class_rank, dim = bases.shape
    if dim != in_chans * image_size * image_size:
        raise ValueError(f"sample_from_bases: bases have dim {dim}, not C*H*W for the given sizes")
    generator = _as_generator(seed)
    order = torch.randperm(num_samples, generator=generator)  # (N,)
    labels = torch.arange(num_samples, dtype=torch.int64)[order] % num_classes  # (N,) balanced
    # Per-pixel variance of B_k c is (d / D) * coef_std^2 on average over pixels.
    coef_std = signal_std * math.sqrt(dim / class_rank)
    coefs = torch.randn(num_samples, class_rank, generator=generator, dtype=torch.float64)
    signal = torch.empty(num_samples, dim, dtype=torch.float64)  # (N, D)
    for k in range(num_classes):  # one matmul per class keeps memory at O(N * D)
        members = labels == k  # (N,)
        signal[members] = (coef_std * coefs[members]) @ bases[k].to(torch.float64)  # (n_k, D)
    # Shrink the rare samples whose peak would leave 0..255 toward 128 by a scalar, instead of
    # clipping pixels: a scaled sample stays in its class subspace, so the rank stays exact.
    peak = signal.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)  # (N, 1)
    signal = signal * (_MAX_DEVIATION / peak).clamp(max=1.0)  # (N, D)
    if noise_std > 0:
        signal = signal + noise_std * torch.randn(
            signal.shape, generator=generator, dtype=torch.float64
        )
    pixels = (signal + _CENTRE).round_().clamp_(0, 255).to(torch.uint8)  # (N, D)
    return pixels.view(num_samples, in_chans, image_size, image_size), labels


def make_low_rank_images(
    num_classes: int,
    class_rank: int,
    num_samples: int,
    image_size: int,
    in_chans: int,
    smoothness: float = 2.0,
    signal_std: float = 32.0,
    noise_std: float = 0.0,
    seed: int = 0,
    sample_seed: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate a labelled union-of-subspaces image set (bases from ``seed``).

    Args:
        num_classes: K, number of classes (one subspace each).
        class_rank: d, dimension of each class subspace.
        num_samples: N, number of images.
        image_size: H = W.
        in_chans: C.
        smoothness: std in pixels of the Gaussian low-pass applied to the basis images.
        signal_std: per-pixel std of the signal on the 0..255 scale.
        noise_std: std of i.i.d. Gaussian pixel noise (0 keeps the rank exact up to rounding).
        seed: seed of the class bases.
        sample_seed: seed of labels/coefficients/noise; ``None`` uses ``seed + 1``. Different
            sample seeds with the same ``seed`` give new samples of the same subspaces.

    Returns:
        ``(images uint8 (N, C, H, W), labels int64 (N,), bases float64 (K, d, C*H*W))``.
    """
    bases = make_class_bases(num_classes, class_rank, image_size, in_chans, smoothness, seed)
    images, labels = sample_from_bases(
        bases,
        num_samples,
        image_size,
        in_chans,
        signal_std,
        noise_std,
        seed + 1 if sample_seed is None else sample_seed,
    )
    return images, labels, bases


class SyntheticLowRank(InMemoryImageDataModule):
    """Synthetic union-of-subspaces images whose intrinsic rank is known exactly.

    Attributes:
        class_rank: dimension d of each class subspace.
        intrinsic_rank: ``num_classes * class_rank``, the rank of the centred pixel matrix
            ``images - 128`` (up to uint8 rounding) when ``noise_std`` is 0.
        bases: ``(K, d, C*H*W)`` float64 class bases (drawn in ``__init__`` from ``seed``).

    Also accepts the common arguments of :class:`~maskrank.data.base.InMemoryImageDataModule`
    (``batch_size``, ``num_workers``, ``augment``, ``crop_scale``, ``hflip``, ``train_subset``,
    ``seed``). ``seed`` fixes the bases; the train and validation samples use seeds derived from it.

    Args:
        num_classes: number of classes K, one subspace each.
        class_rank: dimension d of each class subspace.
        image_size: side of the square images.
        in_chans: image channels.
        train_size: number of training images.
        val_size: number of held-out images (validation / test / predict).
        smoothness: std in pixels of the Gaussian low-pass that makes basis images smooth.
        signal_std: per-pixel std of the signal on the 0..255 scale (32 keeps clipping rare).
        noise_std: std of Gaussian pixel noise added to every image (0.0 = exact low rank).
    """

    def __init__(
        self,
        num_classes: int = 10,
        class_rank: int = 4,
        image_size: int = 32,
        in_chans: int = 3,
        train_size: int = 5000,
        val_size: int = 1000,
        smoothness: float = 2.0,
        signal_std: float = 32.0,
        noise_std: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(num_classes >= 1, "num_classes", ">= 1", num_classes)
        require(class_rank >= 1, "class_rank", ">= 1", class_rank)
        require(in_chans >= 1, "in_chans", ">= 1", in_chans)
        require(image_size >= 1, "image_size", ">= 1", image_size)
        dim = in_chans * image_size * image_size
        require(
            num_classes * class_rank <= dim,
            "class_rank",
            f"at most {dim // max(num_classes, 1)} so that num_classes * class_rank <= C*H*W",
            class_rank,
        )
        require(train_size >= 1, "train_size", ">= 1", train_size)
        require(val_size >= 1, "val_size", ">= 1", val_size)
        require(smoothness >= 0, "smoothness", ">= 0", smoothness)
        require(signal_std > 0, "signal_std", "> 0", signal_std)
        require(noise_std >= 0, "noise_std", ">= 0", noise_std)
        self._set_geometry(
            num_classes, in_chans, image_size, (0.5,) * in_chans, (signal_std / 255.0,) * in_chans
        )
        self.class_rank = class_rank
        self.intrinsic_rank = num_classes * class_rank
        self.train_size = train_size
        self.val_size = val_size
        self.smoothness = smoothness
        self.signal_std = signal_std
        self.noise_std = noise_std
        self.bases = make_class_bases(
            num_classes, class_rank, image_size, in_chans, smoothness, self.seed
        )  # (K, d, D)

    def _load_split(self, split: Split) -> TensorPairs:
        """Sample ``split`` from the shared bases with a seed derived from ``seed`` and the split."""
        size = self.train_size if split == "train" else self.val_size
        sample_seed = 2 * self.seed + (1 if split == "train" else 2) + 1_000_003
        images, labels = sample_from_bases(
            self.bases,
            size,
            self.image_size,
            self.in_chans,
            self.signal_std,
            self.noise_std,
            sample_seed,
        )
        return TensorPairs(images, labels)
