"""What GaLore does, made visible (SCIENCE.md §8): does ``rank`` / ``update_proj_gap`` fit the
measured gradient spectrum?

For every weight that :class:`maskrank.optim.GaLoreAdamW` projects, with ``<module>`` a short name
such as ``enc.b03.qkv`` or ``dec.b01.fc2``:

* ``galore/<module>/captured_energy``: the fraction of the step's gradient energy inside the
  projection the optimizer used for that step (``‖PᵀG‖_F² / ‖G‖_F²``), every ``every_n_steps``
  steps; far below 1 means ``rank`` is too small or the projection is stale (``update_proj_gap``
  too large);
* ``galore/<module>/projection_similarity``: at every refresh of the projection, the subspace
  similarity ``‖P_oldᵀ P_new‖_F² / r`` between the previous and the new basis (1: the gradient
  subspace did not move; about ``r / m``: a fresh, unrelated one);
* ``galore/mean/...``: the average over the projected weights.

The optimizer is only read. Weights are replicated under DDP, so only rank zero measures. The
previous bases are part of the callback's checkpoint state (tensors), so a resumed fit logs the
first similarity after the resume too.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from maskrank.callbacks._common import short_module_name
from maskrank.callbacks.overview_layout import Chart, RunPlan, keep_logged
from maskrank.metrics import captured_energy, subspace_similarity
from maskrank.optim.galore import projects_rows

__all__ = ["GaLoreMonitor"]


def _optimizers(trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
    return [getattr(opt, "optimizer", opt) for opt in trainer.optimizers]


class GaLoreMonitor(pl.Callback):
    """Log the captured gradient energy and the drift of GaLore's projections.

    Args:
        every_n_steps: log ``captured_energy`` after every this many optimizer steps (the
            similarity is logged at every refresh of a projection).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"GaLoreMonitor: every_n_steps = {every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self.last_metrics: dict[str, float] = {}
        self._previous: dict[str, Tensor] = {}  # parameter name -> basis of the last refresh
        self._warned = False

    def planned_tags(
        self, optimizers: list[torch.optim.Optimizer], pl_module: nn.Module, steps: float
    ) -> set[str]:
        """The tags a fit of ``steps`` optimizer steps logs: ``captured_energy`` of every weight a
        group with ``rank < min(m, n)`` projects (from the first due step), and
        ``projection_similarity`` once a projection was refreshed (after ``update_proj_gap``
        steps), with their means."""
        names = {id(p): name for name, p in pl_module.named_parameters()}
        tags: set[str] = set()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                rank = group.get("rank")
                for p in group["params"]:
                    if rank is None or p.ndim != 2 or rank >= min(p.shape) or id(p) not in names:
                        continue
                    short = short_module_name(names[id(p)])
                    if steps >= self.every_n_steps:
                        tags |= {f"galore/{short}/captured_energy", "galore/mean/captured_energy"}
                    if steps > group.get("update_proj_gap", math.inf):
                        tags |= {
                            f"galore/{short}/projection_similarity",
                            "galore/mean/projection_similarity",
                        }
        return tags

    def overview_charts(self, plan: RunPlan, pl_module: pl.LightningModule) -> list[Chart]:
        """GaLore's captured gradient energy and the drift of its projections, every projected
        weight and their mean (SCIENCE.md §8), for the optimizers of ``pl_module``'s trainer."""
        optimizers = _optimizers(pl_module.trainer)
        charts = [
            Chart(
                "optimiser",
                "GaLore captured gradient energy (1: the projection keeps it all)",
                (r"^galore/[^/]+/captured_energy$",),
                order=1,
            ),
            Chart(
                "optimiser",
                "GaLore projection similarity at refresh (1: the subspace did not move)",
                (r"^galore/[^/]+/projection_similarity$",),
                order=2,
            ),
        ]
        return keep_logged(charts, self.planned_tags(optimizers, pl_module, plan.steps))

    def _projected(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """(name, parameter, optimizer state, group) of every weight with a GaLore projector."""
        params = dict(pl_module.named_parameters())
        for optimizer in _optimizers(trainer):
            group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            for name, p in params.items():
                state = optimizer.state.get(p, {})
                if "projector" in state:
                    yield name, p, state, group_of[id(p)]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        due = step > 0 and step % self.every_n_steps == 0
        energy: dict[str, float] = {}
        similarity: dict[str, float] = {}
        for name, p, state, group in self._projected(trainer, pl_module):
            basis = state["projector"]  # (m, r) or (n, r): the one this step used
            rows = projects_rows(tuple(p.shape), group["proj_type"])
            short = short_module_name(name)
            if group.get("refresh_similarity") is not None and "refresh_step" in state:
                # adaptive refresh: the optimizer compared the candidate basis with the one in
                # use when this layer was due (its own gap) and kept the result
                checked = int(state["refresh_step"]) == int(state["step"]) - 1
                value = float(state["similarity"])
                if checked and math.isfinite(value):
                    similarity[short] = value
            # the step counter was incremented by this step: it refreshed iff (count-1) % gap == 0
            elif (int(state["step"]) - 1) % group["update_proj_gap"] == 0:
                previous = self._previous.get(name)
                if previous is not None and previous.shape == basis.shape:
                    similarity[short] = subspace_similarity(previous, basis.detach().cpu())
                self._previous[name] = basis.detach().cpu().clone()
            if due and p.grad is not None and bool(p.grad.any()):
                energy[short] = captured_energy(p.grad.detach(), basis.detach(), rows=rows)
        if due and not energy and not self._warned:
            self._warned = True
            rank_zero_warn("GaLoreMonitor: no weight is trained with a GaLore projection")
        metrics = {f"galore/{k}/captured_energy": v for k, v in energy.items()}
        metrics |= {f"galore/{k}/projection_similarity": v for k, v in similarity.items()}
        if energy:
            metrics["galore/mean/captured_energy"] = fmean(energy.values())
        if similarity:
            metrics["galore/mean/projection_similarity"] = fmean(similarity.values())
        if metrics:
            self.last_metrics = metrics
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": dict(self._previous)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._previous = dict(state_dict.get("previous", {}))
