"""Random-number-generator state in checkpoints, so a resumed fit draws what the original would.

Random crops, flips, MAE masks and dropout all draw from the global torch RNG. Lightning does not
checkpoint it: a resumed process starts from ``seed_everything``, so its first batches would get
other augmentations and masks than the uninterrupted run. :class:`RngStateCheckpoint` stores the
torch (CPU and CUDA), Python and NumPy states in every checkpoint and puts them back in
``on_train_start``, after everything a restart runs before its first batch (model setup, a sanity
check) and before that batch is drawn and augmented. For that to reproduce the original run, nothing
may draw random numbers between a checkpoint and the next training batch: validation masks use a
fixed-seed generator, and the data loaders own their generators (see :mod:`maskrank.data.order`).

Under DDP the checkpoint holds rank 0's states and every rank restores them; ranks seeded alike and
drawing alike (as here) have identical states anyway. The states are stored as tensors and plain
Python numbers, so checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["RngStateCheckpoint", "collect_rng_state", "restore_rng_state"]


def collect_rng_state() -> dict[str, Any]:
    """The global RNG states, as tensors and plain Python values (``weights_only``-loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class RngStateCheckpoint(Callback):
    """Save the global RNG states in checkpoints; restore them when a resumed fit starts training.

    Always on in the ``maskrank`` CLI. It changes nothing in a run that is not resumed.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The latest hook before the first training batch is drawn (and augmented) after a restore.
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
