"""One page of TensorBoard that answers: did it learn, are the representations collapsing, where
does the rank of the weights and their updates go.

At the start of training, :class:`TensorBoardOverview` writes a custom-scalars layout (TensorBoard's
CUSTOM SCALARS tab) built from what this run will log: every callback that has an
``overview_charts(plan, pl_module)`` method names the charts it fills (the monitors of this
package do), and for the task's own tags and the callbacks that do not (yet) say,
the adapters below do. Categories (``maskrank.callbacks.overview_layout.CATEGORIES``):

* **overview** (unfolded): ``train/loss``, ``val/loss`` and ``val/loss_trivial`` (the loss of
  predicting zeros, the level an MAE's ``val/loss`` is read against); every accuracy (k-NN,
  linear probes, ``val/acc``); the final CLS and mean-token effective rank with LiDAR and the
  data's intrinsic rank as a line (``rank/intrinsic``, logged by this callback after every
  validation epoch where the data knows it, SCIENCE.md §1-2, §9);
* **per block**: one chart per encoder block, its CLS and mean-token effective rank;
* **weights and updates**, **optimiser**, **adaptation**, **dropout**: what
  WeightSpectrumMonitor, LearningRateMonitor, TrainingCost, GaLoreMonitor, LoRASpectrumMonitor and
  DropoutPenaltyMonitor log (folded).

A chart is there only if a tag this run logs matches it, and its patterns do not depend on values
(run names, hyperparameters), so every cell of a sweep with one config shape writes the same
layout and TensorBoard draws one chart per question with a line per cell. Rank zero only; a
no-op without a TensorBoardLogger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy

from maskrank.callbacks._common import tensorboard
from maskrank.callbacks.knn import OnlineKNN
from maskrank.callbacks.overview_layout import (
    Chart,
    RunPlan,
    build_layout,
    exact,
    keep_logged,
    layout_summary,
)
from maskrank.callbacks.representation import RepresentationRankMonitor
from maskrank.data import is_image_data
from maskrank.models.observed import ObservedTask

__all__ = ["INTRINSIC_TAG", "ProvidesCharts", "TensorBoardOverview", "overview_charts", "run_plan"]

INTRINSIC_TAG = "rank/intrinsic"
ACCURACY = "accuracy"
_FINAL_RANKS = ("rank/final_cls/effective_rank", "rank/final_mean/effective_rank")


@runtime_checkable
class ProvidesCharts(Protocol):
    """A callback that says which overview charts its tags fill in this run."""

    def overview_charts(self, plan: RunPlan, pl_module: pl.LightningModule) -> list[Chart]:
        """The charts, reduced to those a tag of this run matches (``keep_logged``)."""
        ...


def run_plan(trainer: pl.Trainer) -> RunPlan:
    """What the fit ``trainer`` is starting will do (call from ``on_train_start`` or later)."""
    steps = float(trainer.estimated_stepping_batches)
    max_epochs = trainer.max_epochs
    epochs = math.inf if max_epochs is None or max_epochs < 0 else float(max_epochs)
    validates = trainer.limit_val_batches != 0
    every = trainer.check_val_every_n_epoch or 1  # None: validation by steps, every epoch
    dm = trainer.datamodule
    return RunPlan(
        steps=steps,
        epochs=epochs,
        validation_every=every if validates else 0,
        sharded=isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)),
        intrinsic_rank=dm.intrinsic_rank if is_image_data(dm) else None,
    )


# ---------------------------------------------------------------------------- task and adapters
def task_charts(plan: RunPlan, pl_module: pl.LightningModule) -> list[Chart]:
    """The task's own loss and accuracy tags, decided by submodule name (an ``online_probe``
    logs ``eval/online_linear_acc``; ``train_acc`` / ``val_acc`` metrics log ``train/acc`` and
    ``val/acc``) and by the MAE, whose validation also logs ``val/loss_trivial``."""
    if not isinstance(pl_module, ObservedTask):
        return []
    children = {name for name, _ in pl_module.named_children()}
    validates = plan.validation_measurements(1) >= 1
    tags = {"train/loss"}
    if "train_acc" in children:
        tags.add("train/acc")
    if validates:
        tags.add("val/loss")
        if pl_module.masked_autoencoder is not None:
            tags.add("val/loss_trivial")
        if "val_acc" in children:
            tags.add("val/acc")
        if "online_probe" in children:
            tags.add("eval/online_linear_acc")
    charts = [
        Chart(
            "overview",
            "loss (val/loss_trivial: predicting zeros)",
            (exact("train/loss"), exact("val/loss"), exact("val/loss_trivial")),
            order=0,
        ),
        Chart(
            "overview",
            ACCURACY,
            (exact("val/acc"), exact("train/acc"), exact("eval/online_linear_acc")),
            order=1,
        ),
    ]
    return keep_logged(charts, tags)


def representation_charts(
    monitor: RepresentationRankMonitor, plan: RunPlan, pl_module: pl.LightningModule
) -> list[Chart]:
    """Final CLS and mean-token effective rank (with LiDAR and the intrinsic rank) and one chart
    per encoder block (SCIENCE.md §1-2, §9)."""
    if plan.validation_measurements(monitor.every_n_epochs) < 1:
        return []
    tags = set(_FINAL_RANKS)
    if monitor.lidar is not None:
        tags |= {"rank/final_cls/lidar", "rank/final_mean/lidar"}
    if plan.intrinsic_rank is not None:
        tags.add(INTRINSIC_TAG)
    depth = len(getattr(getattr(pl_module, "encoder", None), "blocks", ()))
    blocks = range(depth) if monitor.per_block else range(0)
    tags |= {f"rank/block{i:02d}_{kind}/effective_rank" for i in blocks for kind in ("cls", "mean")}
    charts = [
        Chart(
            "overview",
            "representation effective rank (final CLS and mean token)",
            (
                r"^rank/final_(?:cls|mean)/effective_rank$",
                r"^rank/final_(?:cls|mean)/lidar$",
                exact(INTRINSIC_TAG),
            ),
            order=2,
        )
    ]
    charts += [
        Chart(
            "per block",
            f"block {i:02d}: effective rank of the CLS and mean token",
            (rf"^rank/block{i:02d}_(?:cls|mean)/effective_rank$",),
            order=i,
        )
        for i in blocks
    ]
    return keep_logged(charts, tags)


def knn_charts(monitor: OnlineKNN, plan: RunPlan, pl_module: pl.LightningModule) -> list[Chart]:
    """The k-NN (and offline linear probe) accuracies, in the overview's accuracy chart."""
    if plan.validation_measurements(monitor.every_n_epochs) < 1:
        return []
    tags = {"eval/knn_acc/final_cls", "eval/knn_acc/final_mean"}
    if monitor.linear_probe:
        tags |= {"eval/linear_acc/final_cls", "eval/linear_acc/final_mean"}
    patterns = (r"^eval/knn_acc/final_(?:cls|mean)$", r"^eval/linear_acc/final_(?:cls|mean)$")
    return keep_logged([Chart("overview", ACCURACY, patterns, order=1)], tags)


def lr_charts(
    monitor: LearningRateMonitor, plan: RunPlan, pl_module: pl.LightningModule
) -> list[Chart]:
    """LearningRateMonitor's ``lr-<optimizer>[/pg<i>]`` tags, when there is an optimizer."""
    if plan.steps < 1 or not pl_module.trainer.optimizers:
        return []
    return [Chart("optimiser", "learning rate", (r"^lr-.+$",), order=0)]


# Callbacks of other modules that have no overview_charts method: their tags, from their settings.
ADAPTERS: dict[type, Callable[..., list[Chart]]] = {
    RepresentationRankMonitor: representation_charts,
    OnlineKNN: knn_charts,
    LearningRateMonitor: lr_charts,
}


def overview_charts(
    callbacks: list[pl.Callback], plan: RunPlan, pl_module: pl.LightningModule
) -> list[Chart]:
    """The task's charts, then every callback's, in the order of ``callbacks``."""
    charts = task_charts(plan, pl_module)
    for callback in callbacks:
        if isinstance(callback, ProvidesCharts):
            charts += callback.overview_charts(plan, pl_module)
            continue
        adapter = next((f for kind, f in ADAPTERS.items() if isinstance(callback, kind)), None)
        if adapter is not None:
            charts += adapter(callback, plan, pl_module)
    return charts


class TensorBoardOverview(pl.Callback):
    """Write the run's custom-scalars layout at the start of training (see the module doc).

    Args:
        enabled: False: write nothing (the callback stays in the list, e.g. always on in the CLI).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.charts: list[Chart] = []
        self._intrinsic: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(enabled={self.enabled})"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.charts, self._intrinsic = [], None
        logger = tensorboard(trainer)
        if not self.enabled or not trainer.is_global_zero or logger is None:
            return
        first = next(c for c in trainer.callbacks if isinstance(c, TensorBoardOverview))
        if first is not self:  # listed in the config and always on in the CLI: one layout
            return
        plan = run_plan(trainer)
        self.charts = overview_charts(trainer.callbacks, plan, pl_module)
        if not self.charts:
            return
        # SummaryWriter.add_custom_scalars builds its own proto without the categories' `closed`
        # flag (every category would open at once); the layout goes to the same event file.
        writer = logger.experiment._get_file_writer()
        writer.add_summary(layout_summary(build_layout(self.charts)), trainer.global_step)
        if any(chart.matches(INTRINSIC_TAG) for chart in self.charts):
            self._intrinsic = plan.intrinsic_rank

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``rank/intrinsic`` next to the measured ranks, so the chart draws it as a line."""
        logger = tensorboard(trainer)
        if self._intrinsic is None or trainer.sanity_checking or logger is None:
            return
        logger.log_metrics({INTRINSIC_TAG: float(self._intrinsic)}, step=trainer.global_step)
