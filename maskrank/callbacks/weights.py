"""Spectra of weights, their updates and gradients while training (SCIENCE.md §3).

Every ``every_n_steps`` optimizer steps, for every trainable 2-D weight whose name matches
``pattern`` (by default the attention ``qkv`` / ``proj`` and MLP ``fc1`` / ``fc2`` weights of the
encoder blocks and the MAE decoder blocks; not ``patch_embed.proj``, not heads), with ``<module>``
a short name such as ``enc.b03.qkv`` or ``dec.b01.fc2`` and ``<type>`` its layer type over blocks
(``enc.qkv``, ``dec.fc2``). Logged by default, where the weights and their updates go:

* ``updates/<module>/effective_rank`` of ``ΔW = W - W0`` (``W0``: the weights at the start of the
  fit), ``updates/<module>/moved_singular_values`` (how many singular values of ``W`` differ from
  those of ``W0`` by more than ``moved_rtol``) and ``updates/<module>/subspace_similarity_top<k>``
  (``‖U_tᵀU_s‖_F² / k`` between the top-``k`` left singular vectors of ``ΔW`` now and at the
  previous measurement; from the second measurement on);
* ``weights/<type>_mean/effective_rank``: the weight's effective rank, averaged over blocks.

With ``all_metrics`` also, per module and as ``<kind>/<type>_mean/<metric>`` averages:

* ``weights/<module>/``: ``effective_rank``, ``stable_rank``, ``spectral_norm``, ``nuclear_norm``;
* ``updates/<module>/``: ``energy_rank_0.9``, ``energy_rank_0.99`` besides the defaults;
* ``grads/<module>/``: ``norm`` (``‖G‖_F``) and, while it exceeds ``grad_norm_floor``,
  ``effective_rank`` and ``stable_rank`` of the gradient of the step just taken (captured unscaled
  in ``on_before_optimizer_step``, only on measured steps and only with ``all_metrics``).

Weights are replicated under DDP, so only rank zero measures. The work is a few batched ``eigh``
calls on CPU copies; with ``background`` it runs in a thread while training goes on, and each result
is logged at the step it describes as soon as it is ready. ``W0`` and the previous bases are part of
the callback's checkpoint state, so a resumed run keeps measuring against the same ``W0``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from maskrank.callbacks._common import sharded_skip, short_module_name
from maskrank.callbacks._weight_spectra import (
    GRAD_KEYS,
    UPDATE_KEYS,
    WEIGHT_KEYS,
    Group,
    Snapshot,
    compute,
    select,
    subspace_key,
)
from maskrank.callbacks.overview_layout import (
    BLOCK_TYPES,
    Chart,
    RunPlan,
    block_series,
    keep_logged,
)

__all__ = ["DEFAULT_WEIGHT_PATTERN", "WeightSpectrumMonitor"]

# blocks.N.attn.qkv / .attn.proj / .mlp.fc1 / .mlp.fc2 weights of encoder and decoder blocks.
DEFAULT_WEIGHT_PATTERN = (
    r"(?:^|\.)(?:decoder_)?blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.fc[12])\.weight$"
)

Result = tuple[int, dict[str, float], dict[str, Tensor], dict[str, Tensor]]


class WeightSpectrumMonitor(pl.Callback):
    """Log spectra of weights ``W``, updates ``W - W0`` and gradients (SCIENCE.md §3).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        pattern: regular expression (``re.search``) selecting parameters by full name, e.g.
            ``mae.encoder.blocks.3.attn.qkv.weight``; only trainable 2-D weights are measured.
        subspace_k: number of top left singular vectors of ``ΔW`` compared between measurements.
        grad_norm_floor: gradient rank metrics only while ``‖G‖_F`` is above this (at convergence
            the gradient is noise and its rank is meaningless); ``grads/<module>/norm`` is always
            logged when a gradient exists.
        moved_rtol: a singular value of ``W`` counts as moved when it differs from the same-index
            one of ``W0`` by more than this fraction.
        per_module: log a tag per weight; False keeps only the per-type averages.
        summaries: log the per-type averages over blocks (``<kind>/<type>_mean/<metric>``).
        all_metrics: log every series (weight norms and ranks per module, energy ranks of the
            update, gradient spectra); the default keeps the update's effective rank, moved
            singular values and subspace similarity per layer and the weight's effective rank
            per layer type.
        background: compute in a background thread (training only waits for the CPU copies);
            None: when the model is on an accelerator (on a CPU-only run a thread would compete
            with training for the same cores).
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        pattern: str = DEFAULT_WEIGHT_PATTERN,
        subspace_k: int = 8,
        grad_norm_floor: float = 1e-6,
        moved_rtol: float = 1e-2,
        per_module: bool = True,
        summaries: bool = True,
        all_metrics: bool = False,
        background: bool | None = None,
    ) -> None:
        if every_n_steps < 1 or subspace_k < 1 or grad_norm_floor < 0 or not 0 < moved_rtol < 1:
            raise ValueError(
                "WeightSpectrumMonitor: every_n_steps and subspace_k must be >= 1, "
                "grad_norm_floor >= 0 and 0 < moved_rtol < 1"
            )
        self.every_n_steps = every_n_steps
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self.subspace_k = subspace_k
        self.grad_norm_floor = grad_norm_floor
        self.moved_rtol = moved_rtol
        self.per_module = per_module
        self.summaries = summaries
        self.all_metrics = all_metrics
        self.background = background
        self.last_metrics: dict[str, float] = {}
        self._w0: dict[str, Tensor] | None = None  # name -> W0 on the CPU (rank zero only)
        self._sv0: dict[str, Tensor] = {}  # name -> singular values of W0 (a cache, not saved)
        self._bases: dict[str, Tensor] = {}  # name -> top-k left singular vectors of ΔW, (m, k)
        self._loaded = False
        self._grads: tuple[int, dict[str, Tensor]] | None = None  # (step, name -> gradient)
        self._last_step = -1
        self._use_thread = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Result] | None = None
        self._ready: list[tuple[int, dict[str, float]]] = []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(every_n_steps={self.every_n_steps}, pattern={self.pattern!r}, "
            f"subspace_k={self.subspace_k}, grad_norm_floor={self.grad_norm_floor}, "
            f"all_metrics={self.all_metrics})"
        )

    # ------------------------------------------------------------------------------ selection
    def matched_parameters(self, module: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters this callback measures: trainable, 2-D, name matching ``pattern``."""
        return {
            name: p
            for name, p in module.named_parameters()
            if p.ndim == 2 and p.requires_grad and self._regex.search(name)
        }

    def planned_tags(self, module: nn.Module, measurements: float = 2) -> set[str]:
        """The tags a fit of ``module`` with ``measurements`` measurements logs (the gradient rank
        tags as if every gradient were above the floor): the selection of :meth:`_compute`, run
        on placeholder values."""
        if measurements < 1:
            return set()
        placeholders: dict[str, float] = {}
        for name, p in self.matched_parameters(module).items():
            short = short_module_name(name)
            keys = [f"weights/{short}/{m}" for m in WEIGHT_KEYS]
            keys += [f"updates/{short}/{m}" for m in UPDATE_KEYS]
            if measurements >= 2 and min(p.shape) >= self.subspace_k:
                keys.append(f"updates/{short}/{subspace_key(self.subspace_k)}")
            if self.all_metrics:
                keys += [f"grads/{short}/{m}" for m in GRAD_KEYS]
            placeholders.update(dict.fromkeys(keys, 0.0))
        selected = select(
            placeholders,
            per_module=self.per_module,
            summaries=self.summaries,
            all_metrics=self.all_metrics,
        )
        return set(selected)

    def overview_charts(self, plan: RunPlan, module: nn.Module) -> list[Chart]:
        """Per layer type, one chart across blocks each of the update's effective rank, its
        moved singular values and its subspace similarity; and the weights' effective rank per
        layer type (SCIENCE.md §3). Only charts this fit fills."""
        if plan.sharded:
            return []
        tags = self.planned_tags(module, plan.step_measurements(self.every_n_steps))
        similarity = subspace_key(self.subspace_k)
        rows = (
            ("effective_rank", "update effective rank"),
            ("moved_singular_values", "moved singular values"),
            (similarity, f"update subspace similarity (top {self.subspace_k})"),
        )
        charts = [
            Chart("weights and updates", f"{leaf}: {what}", (block_series("updates", leaf, key),))
            for key, what in rows
            for leaf in BLOCK_TYPES
        ]
        pattern = r"^weights/(?:enc|dec)\.[a-z0-9]+_mean/effective_rank$"
        charts.append(Chart("weights and updates", "weight effective rank per type", (pattern,)))
        return keep_logged(charts, tags)

    def _due(self, step: int) -> bool:
        return step > 0 and step % self.every_n_steps == 0

    # ------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or sharded_skip(trainer, type(self).__name__, set()):
            self._w0 = None  # weights are replicated: only rank zero measures
            return
        params = self.matched_parameters(pl_module)
        if not params:
            rank_zero_warn(f"WeightSpectrumMonitor: no parameter matches {self.pattern!r}.")
        keep = (
            self._loaded
            and self._w0 is not None
            and all(
                name in self._w0 and self._w0[name].shape == p.shape for name, p in params.items()
            )
        )
        if not keep:  # a fresh start: W0 = the weights now (a resumed fit keeps its saved W0)
            self._w0 = {name: p.detach().to("cpu", copy=True) for name, p in params.items()}
            self._sv0, self._bases = {}, {}
        self._loaded = False
        self._last_step = -1
        if self.background is None:
            self._use_thread = pl_module.device.type != "cpu"
        else:
            self._use_thread = self.background

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        step = trainer.global_step + 1  # the step this optimizer step completes
        if not self.all_metrics or self._w0 is None or not trainer.loggers or not self._due(step):
            return  # gradient spectra are all_metrics series: no copy without them
        grads = {
            name: p.grad.detach()
            for name, p in self.matched_parameters(pl_module).items()
            if p.grad is not None
        }
        self._grads = (step, grads) if grads else None  # copied to the CPU with the weights

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._collect(block=False)
        self._flush(trainer)
        step = trainer.global_step
        if (
            self._w0 is None
            or not trainer.loggers
            or not self._due(step)
            or step == self._last_step
        ):
            return
        self._last_step = step
        grads = self._grads[1] if self._grads is not None and self._grads[0] == step else {}
        self._grads = None
        snapshot = self._snapshot(step, self.matched_parameters(pl_module), grads)
        self._collect(block=True)  # at most one measurement in flight, in step order
        self._flush(trainer)
        if self._use_thread:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="weight-spectra")
            self._pending = self._executor.submit(self._compute, snapshot)
        else:
            self._accept(self._compute(snapshot))
            self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(block=True)
        self._flush(trainer)
        self._shutdown()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._shutdown()

    # ------------------------------------------------------------------------------ work
    def _snapshot(
        self, step: int, params: dict[str, nn.Parameter], grads: dict[str, Tensor]
    ) -> Snapshot:
        """CPU copies of the weights (and gradients), stacked by shape: one transfer per shape."""
        by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for name, p in params.items():
            if name in self._w0:  # type: ignore[operator]
                by_shape[tuple(p.shape)].append(name)
        groups = []
        for names in by_shape.values():
            weights = torch.stack([params[n].detach() for n in names]).to("cpu", torch.float32)
            index = [i for i, n in enumerate(names) if n in grads]
            stacked = (
                torch.stack([grads[names[i]] for i in index]).to("cpu", torch.float32)
                if index
                else None
            )  # (G, m, n)
            short = [short_module_name(n) for n in names]
            groups.append(Group(names, short, weights, stacked, index))
        return Snapshot(step, groups)

    def _compute(self, snapshot: Snapshot) -> Result:
        metrics, bases, sv0 = compute(
            snapshot,
            self._w0,  # type: ignore[arg-type]
            dict(self._sv0),
            dict(self._bases),
            subspace_k=self.subspace_k,
            grad_norm_floor=self.grad_norm_floor,
            moved_rtol=self.moved_rtol,
            per_module=self.per_module,
            summaries=self.summaries,
            all_metrics=self.all_metrics,
        )
        return snapshot.step, metrics, bases, sv0

    def _accept(self, result: Result) -> None:
        step, metrics, bases, sv0 = result
        self._bases.update(bases)
        self._sv0.update(sv0)
        self._ready.append((step, metrics))

    def _collect(self, block: bool) -> None:
        """Take the background result if it is ready (or wait for it with ``block``)."""
        if self._pending is not None and (block or self._pending.done()):
            pending, self._pending = self._pending, None
            self._accept(pending.result())

    def _flush(self, trainer: pl.Trainer) -> None:
        """Write the finished measurements to every logger, each at the step it describes."""
        for step, metrics in self._ready:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
            self.last_metrics = metrics
        self._ready = []

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending = None

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``W0`` and the last top-k bases, so a resumed run measures against the same start."""
        self._collect(block=True)
        if self._w0 is None:
            return {}
        return {"w0": dict(self._w0), "bases": dict(self._bases)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "w0" in state_dict:
            self._w0 = dict(state_dict["w0"])
            self._bases = dict(state_dict.get("bases", {}))
            self._sv0 = {}
            self._loaded = True
