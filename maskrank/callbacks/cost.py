"""What a run costs, logged next to what it learns: step time and trainable parameters.

A sweep compares arms (a full fine-tune against LoRA, PiSSA, Deep LoRA, GaLore) on accuracy *and*
on what they cost; with this callback in a stage, ``maskrank sweep`` puts ``cost/*`` columns
into the results table like any other logged scalar.

Logged tags:

* ``cost/trainable_params`` and ``cost/total_params``: counted once, when training starts (after
  adapters are injected and frozen weights marked);
* ``cost/step_s``: median wall-clock seconds per training batch over the epoch, from the start of
  one ``on_train_batch_start`` to the next batch's, so data loading, forward, backward, the
  optimizer step and every other callback's per-step work are all included. The first
  ``skip_first`` batches of each fit (warm-up: allocator growth, lazy initialisation, one-off
  adapter inits such as ``lora.init: gradient``) are left out, and so is each epoch's last batch
  (its interval would include validation).
"""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl

from maskrank.callbacks.overview_layout import Chart, RunPlan, exact

__all__ = ["TrainingCost"]


class TrainingCost(pl.Callback):
    """Logs ``cost/step_s`` per epoch and ``cost/trainable_params`` once per fit."""

    def __init__(self, skip_first: int = 2) -> None:
        """
        Args:
            skip_first: training batches at the start of each fit that are not timed (>= 0).
        """
        if skip_first < 0:
            raise ValueError(f"TrainingCost: skip_first must be >= 0, got {skip_first}")
        self.skip_first = skip_first
        self._seen = 0
        self._last: float | None = None
        self._times: list[float] = []

    def overview_charts(self, plan: RunPlan, pl_module: pl.LightningModule) -> list[Chart]:
        """Seconds per training step, next to the learning rate (the parameter counts are one
        value per fit: sweep-table columns, not curves)."""
        if plan.steps < self.skip_first + 2:  # no timed interval: nothing logged
            return []
        return [Chart("optimiser", "seconds per training step", (exact("cost/step_s"),), order=3)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen = 0
        params = list(pl_module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        pl_module.log("cost/trainable_params", float(trainable), on_step=False, on_epoch=True)
        pl_module.log("cost/total_params", float(total), on_step=False, on_epoch=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last, self._times = None, []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None and self._seen > self.skip_first:
            self._times.append(now - self._last)
        self._last = now
        self._seen += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._times:
            step = statistics.median(self._times)
            pl_module.log("cost/step_s", step, on_step=False, on_epoch=True)
