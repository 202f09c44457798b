"""Spectra of LoRA updates ``ΔW = (α/r) B A`` while they train (SCIENCE.md §1, §6).

Every ``every_n_steps`` optimizer steps, for every adapted layer (``<module>`` a short name such as
``enc.b03.qkv``), logs ``lora/<module>/``: ``effective_rank``, ``stable_rank``,
``energy_rank_0.9``, ``energy_rank_0.99`` and ``frobenius_norm`` of ``ΔW``, and their averages over
blocks as ``lora/<type>_mean/<metric>`` (e.g. ``lora/enc.qkv_mean/effective_rank``). The rank used
is at most ``r``; how much of it the update fills is the measured answer to "how large must r be".

For a Deep LoRA layer (``lora.depth: 3``, ``ΔW = (α/r) W₃W₂W₁``) it also logs each factor's
spectrum, ``lora/<module>/w<l>/sv_<i>`` (per module only), and ``lora/<module>/w<l>/moved_sv``: how
many of its singular values moved away from their common starting value ``init_scale`` (by more
than 1 %; SCIENCE.md §8): the dimension of the subspace that factor's training used, averaged
over blocks as ``lora/<type>_mean/w<l>/moved_sv``.

``ΔW`` is never formed: with thin QR factors ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``,
``ΔW = (α/r) Q_B (R_B R_Aᵀ) Q_Aᵀ`` has the singular values of the r x r matrix
``(α/r) R_B R_Aᵀ``, exactly, so a measurement costs O((d + k) r²) per layer.
"""

from __future__ import annotations

from collections import defaultdict

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from maskrank.callbacks._common import module_type_name, sharded_skip, short_module_name
from maskrank.callbacks.overview_layout import (
    BLOCK_TYPES,
    Chart,
    RunPlan,
    block_series,
    keep_logged,
)
from maskrank.metrics import moved_singular_values, singular_values, spectrum_metrics
from maskrank.models.lora import LoRAView, lora_layers
from maskrank.models.lora.deep import DeepLoRALinear, deep_layers

__all__ = ["LoRASpectrumMonitor", "deep_factor_spectra", "lora_singular_values"]

_KEYS = ("effective_rank", "stable_rank", "energy_rank_0.9", "energy_rank_0.99", "frobenius_norm")


@torch.no_grad()
def lora_singular_values(view: LoRAView) -> Tensor:
    """Singular values (r,) of ``(α/r) B A`` from its factors, float64, descending."""
    _, r_b = torch.linalg.qr(view.lora_b.detach().double())  # (r, r)
    _, r_a = torch.linalg.qr(view.lora_a.detach().double().t())  # (r, r)
    return singular_values(view.scaling * (r_b @ r_a.t()))


@torch.no_grad()
def deep_factor_spectra(layer: DeepLoRALinear) -> dict[str, float]:
    """``w<l>/sv_<i>`` and ``w<l>/moved_sv`` of a Deep LoRA layer's factors at their current width."""
    values: dict[str, float] = {}
    for index, factor in enumerate(layer.factors(), start=1):
        f = factor.detach().double()
        start = layer.init_scale * torch.eye(*f.shape, dtype=f.dtype, device=f.device)
        for i, sv in enumerate(singular_values(f).tolist(), start=1):
            values[f"w{index}/sv_{i}"] = sv
        values[f"w{index}/moved_sv"] = float(moved_singular_values(f, start))
    return values


class LoRASpectrumMonitor(pl.Callback):
    """Log the spectrum of every LoRA update ``(α/r) B A`` (SCIENCE.md §6).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        per_module: log a tag per adapted layer; False keeps only the per-type averages.
    """

    def __init__(self, every_n_steps: int = 50, per_module: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError("LoRASpectrumMonitor: every_n_steps must be >= 1")
        self.every_n_steps = every_n_steps
        self.per_module = per_module
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    def planned_tags(self, pl_module: nn.Module) -> set[str]:
        """The tags of one measurement, except the Deep LoRA factors' per-module ``w<l>/...``."""
        tags: set[str] = set()
        for name in lora_layers(pl_module):
            short = short_module_name(name)
            if self.per_module:
                tags.update(f"lora/{short}/{key}" for key in _KEYS)
            tags.update(f"lora/{module_type_name(short)}_mean/{key}" for key in _KEYS)
        for name, layer in deep_layers(pl_module).items():
            kind = module_type_name(short_module_name(name))
            tags.update(
                f"lora/{kind}_mean/w{i}/moved_sv" for i in range(1, len(layer.factors()) + 1)
            )
        return tags

    def overview_charts(self, plan: RunPlan, pl_module: nn.Module) -> list[Chart]:
        """How much of its rank ``r`` each update ``(α/r) B A`` uses (SCIENCE.md §6): per layer type
        the effective rank across blocks, the energy rank 0.99 per type, and for Deep LoRA the
        moved singular values of each factor (§8)."""
        if plan.sharded or plan.step_measurements(self.every_n_steps) < 1:
            return []
        charts = [
            Chart(
                "adaptation",
                f"{leaf}: LoRA ΔW effective rank",
                (block_series("lora", leaf, "effective_rank"),),
            )
            for leaf in BLOCK_TYPES
        ]
        charts += [
            Chart(
                "adaptation",
                "LoRA ΔW energy rank 0.99, mean over blocks",
                (r"^lora/(?:enc|dec)\.[a-z0-9]+_mean/energy_rank_0\.99$",),
            ),
            Chart(
                "adaptation",
                "Deep LoRA: moved singular values per factor, mean over blocks",
                (r"^lora/(?:enc|dec)\.[a-z0-9]+_mean/w\d+/moved_sv$",),
            ),
        ]
        return keep_logged(charts, self.planned_tags(pl_module))

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """The tags and values of one measurement (empty for a model without adapters)."""
        metrics: dict[str, float] = {}
        by_type: dict[str, list[dict[str, float]]] = defaultdict(list)
        for name, view in lora_layers(pl_module).items():
            values = spectrum_metrics(sv=lora_singular_values(view))
            values = {k: values[k] for k in _KEYS}
            short = short_module_name(name)
            by_type[module_type_name(short)].append(values)
            if self.per_module:
                metrics.update({f"lora/{short}/{k}": v for k, v in values.items()})
        for kind, rows in by_type.items():
            for key in _KEYS:
                metrics[f"lora/{kind}_mean/{key}"] = sum(r[key] for r in rows) / len(rows)
        moved: dict[str, list[float]] = defaultdict(list)
        for name, layer in deep_layers(pl_module).items():
            short = short_module_name(name)
            values = deep_factor_spectra(layer)
            for key, value in values.items():
                if key.endswith("moved_sv"):
                    moved[f"lora/{module_type_name(short)}_mean/{key}"].append(value)
                if self.per_module:
                    metrics[f"lora/{short}/{key}"] = value
        metrics.update({tag: sum(v) / len(v) for tag, v in moved.items()})
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        if sharded_skip(trainer, type(self).__name__, self._warned):
            return
        self.last_metrics = self.measure(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(self.last_metrics, step=step)
