"""A run directory that a failed command leaves behind is removed, so versions stay predictable.

Every fit gets ``runs/<experiment>/version_N``. A command that fails before its first training
step (a dataset that is not there, a bad setting found in ``setup``) would otherwise leave an
empty ``version_N`` behind, and the next good run would become ``version_N+1``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytorch_lightning as pl

__all__ = ["FailedRunCleanup"]


class FailedRunCleanup(pl.Callback):
    """On an exception before the first optimizer step, remove the run directory this command
    created (never one that existed before, e.g. a resumed run's, and never one with a
    checkpoint in it).

    Args:
        run_dir: the run directory the Trainer's logger will write (``trainer.log_dir``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.existed = self.run_dir.exists()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.existed or trainer.global_step > 0 or not trainer.is_global_zero:
            return
        if self.run_dir.is_dir() and not any(self.run_dir.rglob("*.ckpt")):
            # A TensorBoard writer still holding events appends them to its file by path when it
            # flushes; after the folder is gone that raises FileNotFoundError, which would then
            # stand in for the user's error. Finalized first, Lightning's own finalize after this
            # hook finds the writers closed and writes nothing.
            for logger in trainer.loggers:
                logger.finalize("failed")
            shutil.rmtree(self.run_dir, ignore_errors=True)
