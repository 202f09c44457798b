"""Dropout's explicit regularizer on every ViT MLP, measured on the probe set (SCIENCE.md §4).

In a timm MLP, ``fc1 → act → drop1 → norm → fc2 → drop2``: dropout ``drop1`` acts on the input ``a``
of ``fc2`` (``norm`` is the identity in ViTs), so with ``U = fc2.weight`` (out, hidden) it adds, in
expectation, ``R_drop = λ Σ_j ‖u_j‖² mean_x(a_j²)`` to the squared loss (Mianjy, Arora & Vidal, ICML
2018). After every ``every_n_epochs`` validation epochs, forward pre-hooks on each ``mlp.fc2``
(attached only during the pass, model in eval mode so ``a`` is undropped) record ``mean(a_j²)`` over
the probe images and tokens. For an ``MAEPretraining`` module the pass is the MAE forward at its
validation mask ratio with a fixed-seed local generator, i.e. the inputs dropout sees in training,
and it reaches the decoder MLPs; for other modules it is ``encode`` (encoder only, unmasked).

Logged per MLP that trains with dropout (``p > 0``; ``<module>`` = ``enc.b03.mlp`` /
``dec.b01.mlp``) and averaged over those blocks (``enc.mlp_mean``, ``dec.mlp_mean``):

* ``dropout/<module>/penalty``: ``R_drop`` at the run's drop rate ``p``;
* ``dropout/<module>/penalty_per_lambda``: ``Σ_j ‖u_j‖² mean(a_j²)`` (``R_drop / λ``);
* ``dropout/<module>/equalization``: coefficient of variation over ``j`` of ``‖u_j‖ · rms(a_j)``
  (0 = dropout's equalized solution).

An MLP without dropout (``p = 0``: its penalty is 0 at every step) is not measured; with
``all_metrics`` it logs ``penalty_per_lambda`` and ``equalization``, the baseline a dropout run is
compared with (never ``penalty``). A model with nothing to measure gets one info line and no
forward pass. Only ``mean(a_j²)`` per unit is kept (both metrics depend on nothing else), so memory
is O(hidden) whatever the probe size. Rank zero measures; the scalars reach every logger.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from maskrank.callbacks._common import (
    due_after_validation,
    eval_mode,
    log_from_rank_zero,
    module_type_name,
    observed,
    probe_images,
    sharded_skip,
    short_module_name,
    skip_nonfinite,
)
from maskrank.callbacks.overview_layout import Chart, RunPlan, block_series, keep_logged
from maskrank.metrics import dropout_penalty, equalization_score
from maskrank.models.observed import ObservedTask

__all__ = ["DropoutPenaltyMonitor", "find_mlps"]

_MLP_RE = re.compile(r"(?:^|\.)(?:decoder_)?blocks\.\d+\.mlp$")  # encoder and decoder block MLPs
MASK_SEED = 0  # seed of the probe pass's masks (MAE), fixed so epochs compare like with like


def find_mlps(module: nn.Module) -> dict[str, nn.Module]:
    """Short name (``enc.b03.mlp``) -> every block MLP of ``module`` with an ``nn.Linear`` ``fc2``."""
    return {
        short_module_name(name): m
        for name, m in module.named_modules()
        if _MLP_RE.search(name) and isinstance(getattr(m, "fc2", None), nn.Linear)
    }


def run_drop_rate(mlp: nn.Module) -> float:
    """The drop probability on ``fc2``'s input in this run: ``mlp.drop1.p`` (0 if not Dropout)."""
    drop = getattr(mlp, "drop1", None)
    return float(drop.p) if isinstance(drop, nn.Dropout) else 0.0


class DropoutPenaltyMonitor(pl.Callback):
    """Log the dropout penalty and equalization of every block MLP (SCIENCE.md §4).

    Args:
        every_n_epochs: measure after every this many validation epochs of a fit (a stand-alone
            validate always measures); one pass costs about 0.3 % of a CIFAR-10 epoch of
            ViT-Tiny MAE.
        probe_size: images of the fixed probe set (every token of each counts as a sample).
        batch_size: images per forward pass of the probe (memory, not results).
        drop_rate: drop probability ``p`` of the penalty; None: the rate this run trains with
            (each MLP's ``drop1.p``, or the rate of its explicit penalty when the task adds one).
        summaries: also log the averages over blocks ``dropout/<enc|dec>.mlp_mean/<metric>``.
        all_metrics: also measure the MLPs without dropout (``p = 0``): their
            ``penalty_per_lambda`` and ``equalization``, a baseline for runs with dropout.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        probe_size: int = 256,
        batch_size: int = 256,
        drop_rate: float | None = None,
        summaries: bool = True,
        all_metrics: bool = False,
    ) -> None:
        if every_n_epochs < 1 or probe_size < 1 or batch_size < 1:
            raise ValueError(
                "DropoutPenaltyMonitor: every_n_epochs, probe_size and batch_size must be >= 1"
            )
        if drop_rate is not None and not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DropoutPenaltyMonitor: drop_rate {drop_rate} must be in [0, 1)")
        self.every_n_epochs = every_n_epochs
        self.probe_size = probe_size
        self.batch_size = batch_size
        self.drop_rate = drop_rate
        self.summaries = summaries
        self.all_metrics = all_metrics
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(every_n_epochs={self.every_n_epochs}, "
            f"probe_size={self.probe_size}, drop_rate={self.drop_rate}, "
            f"all_metrics={self.all_metrics})"
        )

    def rates(self, pl_module: nn.Module, mlps: dict[str, nn.Module]) -> dict[str, float]:
        """Short name -> the drop rate ``p`` of the penalty, for every MLP this monitor measures:
        ``drop_rate`` if given, else the rate of the task's explicit penalty on its ``fc2``, else
        its ``drop1.p``; an MLP at ``p = 0`` only with ``all_metrics``."""
        explicit = pl_module.explicit_dropout_rates() if isinstance(pl_module, ObservedTask) else {}
        rates = {}
        for name, mlp in mlps.items():
            p = self.drop_rate
            if p is None:
                p = explicit.get(mlp.fc2, run_drop_rate(mlp))
            if p > 0 or self.all_metrics:
                rates[name] = p
        return rates

    def planned_tags(self, pl_module: nn.Module) -> set[str]:
        """The tags a measurement of ``pl_module`` logs (equalization assumed defined)."""
        tags: set[str] = set()
        for name, p in self.rates(pl_module, find_mlps(pl_module)).items():
            metrics = ["penalty_per_lambda", "equalization"] + (["penalty"] if p > 0 else [])
            modules = [name] + ([f"{module_type_name(name)}_mean"] if self.summaries else [])
            tags.update(f"dropout/{module}/{metric}" for module in modules for metric in metrics)
        return tags

    def overview_charts(self, plan: RunPlan, pl_module: nn.Module) -> list[Chart]:
        """The penalty and the equalization of every MLP with dropout, across blocks (SCIENCE.md
        §4); nothing for a model without dropout."""
        if plan.sharded or plan.validation_measurements(self.every_n_epochs) < 1:
            return []
        charts = [
            Chart(
                "dropout",
                "dropout penalty R_drop per MLP",
                (block_series("dropout", "mlp", "penalty"),),
            ),
            Chart(
                "dropout",
                "equalization per MLP (0: dropout's equalized solution)",
                (block_series("dropout", "mlp", "equalization"),),
            ),
        ]
        return keep_logged(charts, self.planned_tags(pl_module))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        if sharded_skip(trainer, type(self).__name__, self._warned):
            return
        if observed(pl_module, type(self).__name__, self._warned) is None:
            return
        mlps = find_mlps(pl_module)
        rates = self.rates(pl_module, mlps)
        if not rates:  # identical on every rank: no collective is skipped by one rank only
            if "nothing" not in self._warned:
                self._warned.add("nothing")
                rank_zero_info(
                    f"{type(self).__name__}: no block MLP of this model trains with dropout "
                    "(every fc2 input has p = 0), so there is nothing to log; all_metrics: true "
                    "measures them anyway"
                )
            return
        images = probe_images(
            trainer, pl_module, self.probe_size, type(self).__name__, self._warned
        )
        if images is None:
            return
        metrics = None
        if trainer.is_global_zero:
            owner = type(self).__name__
            metrics = skip_nonfinite(trainer, owner, lambda: self.measure(pl_module, images, mlps))
        self.last_metrics = log_from_rank_zero(trainer, pl_module, metrics)

    @torch.no_grad()
    def mean_squares(
        self, pl_module: pl.LightningModule, images: Tensor, mlps: dict[str, nn.Module]
    ) -> dict[str, Tensor]:
        """``mean(a_j²)`` over probe images and tokens of each MLP's ``fc2`` input: name -> (hidden,)."""
        sums: dict[str, list[Any]] = {name: [0.0, 0] for name in mlps}

        def recorder(name: str):
            def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                a = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, hidden)
                sums[name][0] = sums[name][0] + a.square().sum(dim=0)  # (hidden,)
                sums[name][1] += a.shape[0]

            return hook

        handles = [mlp.fc2.register_forward_pre_hook(recorder(n)) for n, mlp in mlps.items()]
        try:
            with eval_mode(pl_module):
                mae, masking = pl_module.masked_autoencoder, pl_module.masking
                if mae is not None and masking is not None:
                    gen = torch.Generator(device=images.device).manual_seed(MASK_SEED)
                    for chunk in images.split(self.batch_size):  # (b, C, H, W)
                        mae(chunk, masking.eval_ratio, masking.strategy, gen)
                else:
                    for chunk in images.split(self.batch_size):
                        pl_module.encode(chunk)
        finally:
            for handle in handles:
                handle.remove()
        return {name: total / max(count, 1) for name, (total, count) in sums.items() if count}

    def measure(
        self, pl_module: pl.LightningModule, images: Tensor, mlps: dict[str, nn.Module]
    ) -> dict[str, float]:
        """The ``dropout/...`` scalars for ``images`` (N, C, H, W), normalized, on the device: of
        the MLPs of :meth:`rates` among ``mlps`` (the others are not even run through hooks)."""
        metrics: dict[str, float] = {}
        # With explicit dropout the penalty in the loss is the one to show (drop1 is off then).
        rates = self.rates(pl_module, mlps)
        measured = {name: mlps[name] for name in rates}
        for name, ms in self.mean_squares(pl_module, images, measured).items():
            weight = mlps[name].fc2.weight  # (out, hidden): u_j = column j
            p = rates[name]
            # Both metrics depend on the activations only through mean(a_j²): pass the RMS as a
            # single sample (1, hidden), which gives exactly the values for all activations.
            rms = ms.sqrt()[None].to(weight.device)  # (1, hidden)
            if p > 0:  # at p = 0 the penalty is 0 whatever the weights: not a series
                metrics[f"dropout/{name}/penalty"] = dropout_penalty(weight, rms, p)
            metrics[f"dropout/{name}/penalty_per_lambda"] = dropout_penalty(weight, rms, 0.5)
            try:
                metrics[f"dropout/{name}/equalization"] = equalization_score(weight, rms)
            except ValueError:  # all-zero weight or dead units: undefined, not logged
                pass
        if self.summaries:
            groups: dict[str, list[float]] = defaultdict(list)
            for tag, value in metrics.items():
                _, module, metric = tag.split("/")
                groups[f"dropout/{module_type_name(module)}_mean/{metric}"].append(value)
            metrics.update({tag: sum(v) / len(v) for tag, v in groups.items()})
        return metrics
