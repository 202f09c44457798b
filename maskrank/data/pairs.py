"""Datasets that hand out whole ``(images, labels)`` batches in one call.

``torch.utils.data.DataLoader`` calls ``dataset.__getitems__(indices)`` when the dataset defines it,
then passes the result to ``collate_fn``. :class:`TensorPairs` answers with one indexing operation
on two in-memory tensors, and :func:`keep_batch` passes the batch through unchanged, so loading a
batch costs one gather instead of ``batch_size`` ``__getitem__`` calls plus a stack. The loader is
still an ordinary ``DataLoader`` with ``batch_size``/``shuffle``/``drop_last``, so Lightning can swap
in a ``DistributedSampler`` under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["PairDataset", "TensorPairs", "keep_batch"]

Batch = tuple[Tensor, Tensor]


@runtime_checkable
class PairDataset(Protocol):
    """What the datamodules need from a split: a length, batched access and subsetting."""

    def __len__(self) -> int: ...

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """Return ``(images uint8 (B, C, H, W), labels int64 (B,))`` for ``indices``."""
        ...

    def subset(self, indices: Tensor) -> PairDataset:
        """Return the dataset restricted to ``indices`` (int64 ``(M,)``), in that order."""
        ...


class TensorPairs(Dataset[Batch]):
    """Images and labels held as two tensors in memory.

    Args:
        images: ``(N, C, H, W)`` uint8 images.
        labels: ``(N,)`` int64 class indices.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"TensorPairs expects images (N, C, H, W) and labels (N,), "
                f"got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images  # (N, C, H, W) uint8
        self.labels = labels.to(torch.int64)  # (N,)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Batch:
        """Return one ``(image (C, H, W), label ())`` pair."""
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """Return ``(images (B, C, H, W), labels (B,))`` with one gather per tensor."""
        idx = torch.as_tensor(indices, dtype=torch.int64)  # (B,)
        return self.images[idx], self.labels[idx]

    def subset(self, indices: Tensor) -> TensorPairs:
        """Return a new :class:`TensorPairs` holding only ``indices`` (copies those rows)."""
        return TensorPairs(self.images[indices], self.labels[indices])


def keep_batch(batch: Batch) -> Batch:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a stacked batch.

    Module-level so that it pickles into DataLoader worker processes.
    """
    return batch
