"""Training order that a resumed fit can reproduce exactly.

Lightning restores a checkpoint's epoch and batch counters, but not where a plain ``DataLoader``
was inside its epoch: after a mid-epoch restart it starts a fresh iterator, and a ``shuffle=True``
loader draws that epoch's order from the global RNG. So a resumed run would see other batches than
the run it continues. Two pieces fix that:

* :class:`EpochShuffleSampler` shuffles with ``randperm(n, seed + epoch)``, the same rule (and, by
  default, the same seed) as the ``DistributedSampler`` Lightning swaps in under DDP, so an epoch's
  order depends on nothing but the seed and the epoch, and one process with batch ``B`` sees the
  same global batches as ``k`` processes with batch ``B / k``.
* :class:`ResumableDataLoader` starts its first iteration at a given epoch and skips the batches a
  checkpoint says were already trained on. The datamodule computes that position when Lightning
  checkpoints it (:func:`resume_position`, kept by :class:`ResumePosition`) and hands it to the
  loader after a restore.

:func:`probe_indices` is the other fixed order of every datamodule: the seeded subset of a split
that probes and k-NN banks read (:meth:`maskrank.data.ImageData.probe_batch`).

The loader also owns its ``generator``: a ``DataLoader`` draws a base seed for its workers at every
``iter()``, from the global RNG unless it has a generator, and that draw would shift the random
augmentations and masks of an uninterrupted run relative to a resumed one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, RandomSampler

__all__ = [
    "EpochShuffleSampler",
    "ResumableDataLoader",
    "ResumePosition",
    "probe_indices",
    "resume_position",
    "shuffle_seed",
]

# Offset added to a datamodule's ``seed`` for the probe subset, so it is not tied to the
# train-subset shuffle.
_PROBE_SEED_OFFSET = 7919


def probe_indices(size: int, n: int, seed: int) -> list[int]:
    """The first ``n`` of a permutation of ``range(size)`` seeded by ``seed``: a split's probe set
    (a smaller ``n`` is a prefix of a larger one; ``n`` above ``size`` is clamped)."""
    if n < 1:
        raise ValueError(f"probe_batch: n must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(int(seed) + _PROBE_SEED_OFFSET)
    return torch.randperm(size, generator=generator)[:n].tolist()


def shuffle_seed(default: int) -> int:
    """The seed training batches are shuffled with: the run's ``seed_everything`` value.

    Lightning exports it as ``PL_GLOBAL_SEED`` and seeds its ``DistributedSampler`` with it, so
    using the same value keeps single-process and DDP orders identical. Without a seeded run (a
    bare ``Trainer`` and no ``seed_everything``) it falls back to ``default`` (the datamodule's seed).
    """
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class EpochShuffleSampler(RandomSampler):
    """A random permutation per epoch that is a pure function of ``(seed, epoch)``.

    Subclasses ``RandomSampler`` because it is one: Lightning recognises a shuffling loader by that
    type and, under DDP, replaces it with a ``DistributedSampler(shuffle=True, seed=seed)``, whose
    permutation for an epoch is exactly this one split across the ranks.

    Args:
        data_source: the dataset (only its length is used).
        seed: the shuffle seed; the order of epoch ``e`` is ``randperm(n)`` seeded with
            ``seed + e``.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (Lightning calls this)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose first iteration can start inside a given epoch.

    Args (besides ``DataLoader``'s):
        start_epoch: the epoch the first iteration belongs to (sets the sampler's epoch; Lightning
            sets it only after the first iterator of a fit exists).
        skip_batches: batches of that epoch already trained on; the first iteration drops them.
            Later iterations are whole epochs.

    Lightning re-creates a loader with the same constructor arguments when it swaps in a
    ``DistributedSampler``, so the position survives that. Skipped batches are fetched and
    discarded: cheap for in-memory data, one extra read of those files for on-disk folders.
    """

    def __init__(
        self, *args: Any, start_epoch: int = 0, skip_batches: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.start_epoch = int(start_epoch)
        self.skip_batches = int(skip_batches)
        self._position_pending = start_epoch > 0 or skip_batches > 0

    def __iter__(self) -> Iterator[Any]:
        pending, self._position_pending = self._position_pending, False
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if pending and callable(set_epoch):
            set_epoch(self.start_epoch)
        # A dataset that augments per (epoch, index) learns the epoch before any index reaches it
        # (the sampler may be Lightning's DistributedSampler, which also has ``epoch``).
        dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(dataset_epoch):
            dataset_epoch(int(getattr(self.sampler, "epoch", 0)))
        iterator = super().__iter__()
        if not pending:
            return iterator
        for _ in range(self.skip_batches):
            if next(iterator, None) is None:
                break
        return iterator

    # Lightning warns that a mid-epoch resume is unreliable unless the loader is "stateful"
    # (has these two methods). The position itself travels in the datamodule's state (see
    # ``resume_position``), which Lightning restores before it builds this loader.
    def state_dict(self) -> dict[str, Any]:
        """Empty: the resume position is kept by the datamodule's ``state_dict``."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load (see :meth:`state_dict`)."""


def resume_position(trainer: pl.Trainer) -> dict[str, int]:
    """Where a fit continues if restored from a checkpoint written now: ``{epoch, skip_batches}``.

    Valid at every point Lightning writes a checkpoint: after a training batch (its count already
    includes that batch), after a validation inside or at the end of an epoch, and at epoch end.
    A finished epoch continues at the start of the next one.
    """
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    epoch = int(trainer.current_epoch)
    total = trainer.num_training_batches
    if done >= total:  # the epoch's batches are all trained on (also when limited)
        return {"epoch": epoch + 1, "skip_batches": 0}
    return {"epoch": epoch, "skip_batches": done}


class ResumePosition:
    """A datamodule's checkpointed state: where in the training order a resumed fit continues.

    Mixed into a ``LightningDataModule`` (before it in the bases). Lightning checkpoints
    :meth:`state_dict` and hands it back to :meth:`load_state_dict` on a restore; the next
    training loader takes the position once (:meth:`take_resume_position`).
    """

    trainer: pl.Trainer | None
    _resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The position a resumed fit continues at (empty outside a fit)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {"resume_position": resume_position(trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the position when resuming a fit; ignored for validate/test/predict, so a later
        fit with this datamodule starts at epoch 0."""
        position = state_dict.get("resume_position")
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if position is not None and fitting:
            self._resume = {k: int(v) for k, v in position.items()}

    def take_resume_position(self) -> dict[str, int]:
        """``{epoch, skip_batches}`` of a restore (once; empty when not resuming)."""
        position, self._resume = self._resume or {}, None
        return position
