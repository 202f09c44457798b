"""Image files cropped in DataLoader workers: the ImageNet recipe's random resized crops.

:class:`CroppedImageFiles` decodes each file with :func:`~maskrank.data.images.decode.decode_crop`, so a
training crop is a random box of the *original* image (not of a pre-resized square), and an
evaluation crop is the centre crop of :class:`~maskrank.data.images.crops.CropSpec`. Batches are
``(images uint8 (B, C, S, S), labels int64 (B,))`` like every other maskrank dataset.

Determinism: sample ``i`` of epoch ``e`` is cropped with ``crop_rng(seed, e, i)``, whichever worker
decodes it, so a run resumed mid-epoch sees the crops the uninterrupted run saw. An optional
RandAugment of the training crop (:class:`~maskrank.data.images.auto_augment.SeededRandAugment`)
is seeded from the same ``(seed, e, i)``. The epoch lives in
a shared-memory tensor that :class:`~maskrank.data.order.ResumableDataLoader` sets from its
sampler before each epoch's workers get their first indices.

Unreadable files: with ``skip_bad=False`` the first one stops the run with a
:class:`~maskrank.data.images.files.CorruptImageError` naming it; with ``skip_bad=True`` it is left
out of its batch (a warning names it) and counted in :attr:`CroppedImageFiles.skipped`, which each
worker increments in its own slot of a shared tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from maskrank.data.images.auto_augment import SeededRandAugment
from maskrank.data.images.crops import CropSpec, crop_rng
from maskrank.data.images.decode import decode_crop
from maskrank.data.images.files import CorruptImageError

__all__ = ["CroppedImageFiles"]

Sample = tuple[str, int]  # (path, class index)
_SLOTS = 257  # slot 0: the main process; slot 1 + (worker id mod 256): a worker


class CroppedImageFiles(Dataset[tuple[Tensor, int]]):
    """Files decoded to ``spec`` crops on access, in whatever process reads them.

    Args:
        samples: ``(path, class index)`` pairs.
        spec: the crop every image gets (training or evaluation).
        in_chans: 3 (RGB) or 1 (grey).
        seed: seed of the per-sample crop generators.
        skip_bad: leave unreadable files out of their batch (and count them) instead of raising.
        auto_augment: RandAugment applied to training crops (``spec.train``) after the crop and
            flip; None: none.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        spec: CropSpec,
        in_chans: int,
        seed: int = 0,
        skip_bad: bool = False,
        auto_augment: SeededRandAugment | None = None,
    ) -> None:
        self.samples = list(samples)
        self.auto_augment = auto_augment
        self.spec = spec
        self.in_chans = in_chans
        self.seed = int(seed)
        self.skip_bad = skip_bad
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._skipped = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Crops of later reads come from epoch ``epoch``'s generators (visible to workers)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @property
    def skipped(self) -> int:
        """Unreadable files left out so far, over all processes."""
        return int(self._skipped.sum())

    def crop(self, index: int, epoch: int | None = None) -> Tensor:
        """Sample ``index`` as a ``(C, S, S)`` uint8 crop of epoch ``epoch`` (None: the current
        one): the same crop in any process."""
        path = self.samples[index][0]
        epoch = self.epoch if epoch is None else int(epoch)
        rng = crop_rng(self.seed, epoch, index) if self.spec.train else None
        image = decode_crop(path, self.spec, rng, self.in_chans)[0]
        if self.spec.train and self.auto_augment is not None:
            image = self.auto_augment(image, self.seed, epoch, index)
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """One ``(image uint8 (C, S, S), label)`` pair."""
        return self.crop(int(index)), self.samples[int(index)][1]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """A stacked batch ``(images uint8 (B, C, S, S), labels int64 (B,))``.

        With ``skip_bad``, unreadable files are left out, so ``B`` can be smaller than
        ``len(indices)``; a batch of nothing but unreadable files raises.
        """
        images: list[Tensor] = []
        labels: list[int] = []
        for index in map(int, indices):
            try:
                images.append(self.crop(index))
            except CorruptImageError as exc:
                if not self.skip_bad:
                    raise
                worker = get_worker_info()
                self._skipped[0 if worker is None else 1 + worker.id % (_SLOTS - 1)] += 1
                warnings.warn(f"skipped: {exc}", stacklevel=2)
                continue
            labels.append(self.samples[index][1])
        if not images:
            raise CorruptImageError(
                f"none of the {len(indices)} files of a batch could be decoded, e.g. "
                f"{self.samples[int(indices[0])][0]}; check the image folder"
            )
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def with_spec(self, spec: CropSpec, seed: int | None = None) -> CroppedImageFiles:
        """The same files with another crop (and seed; None keeps this one's)."""
        seed = self.seed if seed is None else seed
        return CroppedImageFiles(
            self.samples, spec, self.in_chans, seed, self.skip_bad, self.auto_augment
        )

    def subset(self, indices: Tensor) -> CroppedImageFiles:
        """The files at ``indices``, in that order, with the same crop settings."""
        picked = [self.samples[int(i)] for i in indices]
        return CroppedImageFiles(
            picked, self.spec, self.in_chans, self.seed, self.skip_bad, self.auto_augment
        )
