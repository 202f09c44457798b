"""FailedRunCleanup: a run that fails before its first step leaves no run directory behind, and
removing it never turns the user's error into a missing-file error from a logger still writing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pytorch_lightning.loggers import TensorBoardLogger

from maskrank.io.run_dir import FailedRunCleanup


def _failing_trainer(logger: TensorBoardLogger, global_step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=global_step, is_global_zero=True, loggers=[logger])


def test_failed_run_is_removed_after_its_loggers_are_finalized(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    cleanup = FailedRunCleanup(logger.log_dir)  # made before the run directory exists
    run_dir = Path(logger.log_dir)
    logger.experiment.add_text("note", "an event the writer may still hold")
    finalized_while_present = []
    finalize = logger.finalize
    logger.finalize = lambda status: (
        finalized_while_present.append(run_dir.exists()),
        finalize(status),
    )
    cleanup.on_exception(_failing_trainer(logger), None, RuntimeError("the user's error"))
    assert finalized_while_present == [True]  # writers flushed and closed before the removal
    assert not run_dir.exists()
    logger.finalize("failed")  # Lightning's call after the hook: nothing left to write
    assert not run_dir.exists()


def test_run_that_existed_or_stepped_is_kept(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    logger.experiment.add_text("note", "x")
    cleanup = FailedRunCleanup(logger.log_dir)  # the directory is already there: a resumed run
    cleanup.on_exception(_failing_trainer(logger), None, RuntimeError())
    assert Path(logger.log_dir).is_dir()
    fresh = TensorBoardLogger(tmp_path, name="other")
    stepped = FailedRunCleanup(fresh.log_dir)
    fresh.experiment.add_text("note", "x")
    stepped.on_exception(_failing_trainer(fresh, global_step=3), None, RuntimeError())
    assert Path(fresh.log_dir).is_dir()
