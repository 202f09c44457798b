"""Fixtures for the callback tests: a tiny MAE, tiny synthetic data, a quiet Trainer factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every callback test runs on one intra-op thread (``single_thread`` in tests/conftest.py)."""


@pytest.fixture
def make_trainer(tmp_path) -> Callable[..., pl.Trainer]:
    """``make_trainer(callbacks, logger=True, **kw)``: a quiet Trainer logging to tmp_path."""

    def make(callbacks=(), logger: bool = True, **kw) -> pl.Trainer:
        args = dict(
            max_epochs=1,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            deterministic=True,
        )
        args.update(kw)
        return pl.Trainer(
            default_root_dir=tmp_path,
            logger=TensorBoardLogger(tmp_path / "runs", name="exp") if logger else False,
            callbacks=list(callbacks),
            **args,
        )

    return make
