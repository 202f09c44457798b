"""Under FSDP the monitors that read whole weights, or run the model on rank zero only, skip with one
logged line instead of measuring a shard or stalling the other ranks. FSDP itself cannot run on this
CPU-only machine (Lightning refuses it without a GPU), so these tests drive the hooks with a
trainer stand-in that carries Lightning's FSDPStrategy."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    LoRASpectrumMonitor,
    ReconstructionLogger,
    WeightSpectrumMonitor,
)
from maskrank.callbacks._common import sharded_skip


def _trainer(strategy) -> SimpleNamespace:
    return SimpleNamespace(
        strategy=strategy,
        is_global_zero=True,
        global_rank=0,
        world_size=2,
        sanity_checking=False,
        current_epoch=0,
        global_step=50,
        loggers=[],
        state=SimpleNamespace(fn="fit"),
    )


def test_sharded_strategies_skip_with_one_warning_per_monitor():
    warned: set[str] = set()
    assert not sharded_skip(_trainer(DDPStrategy()), "M", warned) and not warned
    with pytest.warns(UserWarning, match="M: parameters are sharded \\(fsdp\\); skipped"):
        assert sharded_skip(_trainer(FSDPStrategy()), "M", warned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time is silent
        assert sharded_skip(_trainer(FSDPStrategy()), "M", warned)


class _Untouchable(pl.LightningModule):
    """A module whose weights and forward must not be touched by a skipping monitor."""

    def __getattr__(self, name):
        if name in ("named_parameters", "parameters", "modules", "forward", "mae"):
            raise AssertionError(f"a skipping monitor touched pl_module.{name}")
        return super().__getattr__(name)


@pytest.mark.parametrize(
    "monitor, hook",
    [
        (WeightSpectrumMonitor(every_n_steps=1), "on_fit_start"),
        (DropoutPenaltyMonitor(every_n_epochs=1), "on_validation_epoch_end"),
        (ReconstructionLogger(every_n_epochs=1), "on_validation_epoch_end"),
        (LoRASpectrumMonitor(every_n_steps=1), "on_train_batch_end"),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, str) else x,
)
def test_monitors_skip_under_fsdp_without_touching_the_model(monitor, hook):
    trainer, module = _trainer(FSDPStrategy()), _Untouchable()
    extra = (None, None, 0) if hook == "on_train_batch_end" else ()  # outputs, batch, batch_idx
    with pytest.warns(UserWarning, match=f"{type(monitor).__name__}: parameters are sharded"):
        getattr(monitor, hook)(trainer, module, *extra)


def test_lightning_refuses_fsdp_on_cpu():
    """What was not run here: FSDP fits need a GPU (see docs/guides/streaming.md)."""
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", devices=1, strategy="fsdp")
