"""The end of ``maskrank fit|validate|test``: the run's summary, printed and saved as JSON.

What is read from the Trainer after the command: the run directory (``trainer.log_dir``), the
checkpoint callback's last and best checkpoints with the best score and its monitor (restored from
the checkpoint on a resumed fit, so they cover the whole run), the epoch and step counters, and
the last value of every logged metric (``trainer.logged_metrics`` over
``trainer.callback_metrics``). Paths are absolute, so the file means the same from anywhere.
``validate`` and ``test`` restore the checkpoint callback's state with the weights but not the loop
counters (their Trainer stays at step 0), so their epoch and step are read from the evaluated
checkpoint. Schema, file names and the selected tags: :mod:`maskrank.io.summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from maskrank.errors import MaskRankError
from maskrank.io.checkpoints import load_checkpoint
from maskrank.io.summary import build_summary, format_summary, write_summary

__all__ = ["report_run", "run_summary"]


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One-element tensors and numbers of ``metrics`` as floats (the rest is left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _checkpoint_counters(path: str | None) -> tuple[int, int]:
    """(epochs trained, global step) of the checkpoint at ``path``; (0, 0) without one.

    Lightning stores the index of the epoch being trained (``epoch``); the fit loop's count of
    epochs whose training was processed is the number a fit's summary reports.
    """
    if not path:
        return 0, 0
    try:
        ckpt = load_checkpoint(path, mmap=True)  # tensors stay on disk
    except MaskRankError:
        return 0, 0
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    epochs = progress.get("current", {}).get("processed", ckpt.get("epoch", 0))
    return int(epochs), int(ckpt.get("global_step", 0))


def _absolute(path: str | None) -> str | None:
    """``path`` from the filesystem root (the summary is read from other directories), or None."""
    return str(Path(path).absolute()) if path else None


def _checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def _run_dir(trainer: pl.Trainer) -> str | None:
    """The first logger's run directory, read locally: ``trainer.log_dir`` broadcasts it, a
    collective that rank zero alone (the only caller here) would wait on forever, or fail on
    once the other processes (other nodes) have exited."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    return getattr(logger, "log_dir", None) or logger.save_dir


def run_summary(trainer: pl.Trainer, command: str) -> dict[str, Any] | None:
    """The summary of the command ``trainer`` just ran, or None without a run directory."""
    run_dir = _run_dir(trainer)
    if run_dir is None:
        return None
    ckpt = _checkpoint_callback(trainer)
    score = getattr(ckpt, "best_model_score", None)
    if command == "fit":
        epoch, step = trainer.current_epoch, trainer.global_step
    else:
        epoch, step = _checkpoint_counters(trainer.ckpt_path)
    metrics = {**_scalars(trainer.callback_metrics), **_scalars(trainer.logged_metrics)}
    return build_summary(
        command,
        _absolute(run_dir),
        last_checkpoint=_absolute(getattr(ckpt, "last_model_path", None)),
        best_checkpoint=_absolute(getattr(ckpt, "best_model_path", None)),
        best_score=None if score is None else float(score),
        monitor=getattr(ckpt, "monitor", None),
        epoch=epoch,
        global_step=step,
        metrics=metrics,
    )


def report_run(
    trainer: pl.Trainer, command: str, echo: Callable[[str], None] = print
) -> Path | None:
    """Write the summary file and print the summary (rank zero; nothing without a run
    directory). Returns the file written, or None."""
    if not trainer.is_global_zero:
        return None
    summary = run_summary(trainer, command)
    if summary is None:
        return None
    path = write_summary(summary)
    note = None
    if command != "fit" and trainer.ckpt_path:
        note = f"weights of {trainer.ckpt_path}"
    elif trainer.interrupted:
        note = "interrupted"
    for line in format_summary(summary, path, note):
        echo(line)
    return path
