"""Optimizer and learning-rate schedule shared by the tasks (pure functions, no Lightning state).

Weight decay applies to tensors with two or more dimensions only (matmul weights, patch-embedding
kernels, position embeddings); biases and normalization scales are not decayed. The schedule is a
linear warmup followed by a cosine decay to ``min_lr_ratio`` times the peak, stepped every
optimizer step.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from maskrank.errors import ConfigError


def adamw(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
    layer_decay: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters, decaying only tensors with ``ndim >= 2``.

    ``layer_decay < 1`` scales the learning rate layer-wise (``module`` is then a timm model with
    a ``group_matcher``, e.g. a ViT): the head keeps ``lr``, block ``i`` of ``L`` gets
    ``lr · layer_decay^(L - i)``, the embeddings the smallest (timm's
    ``param_groups_layer_decay``, as in BEiT/MAE fine-tuning).

    ``fused=None`` picks torch's single-kernel fused implementation when every parameter is on a
    CPU or CUDA device (on CPU torch's own default is a slow per-tensor loop), and torch's default
    elsewhere. The update is the same AdamW step either way.
    """
    if lr <= 0:
        raise ConfigError(f"lr = {lr} (model.init_args.lr) must be positive")
    if weight_decay < 0:
        raise ConfigError(
            f"weight_decay = {weight_decay} (model.init_args.weight_decay) must be >= 0"
        )
    # timm's helpers put ndim <= 1 tensors (and *.bias) in a no-decay group and skip frozen ones.
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(module, weight_decay, layer_decay=layer_decay)
        for g in groups:  # LambdaLR scales each group's initial lr, so the ratios persist
            g["lr"] = lr * g.pop("lr_scale", 1.0)
    else:
        groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=())
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: linear warmup to 1, then cosine decay to ``min_ratio``.

    The first step already uses ``1 / warmup_steps`` of the peak (never 0), and steps past
    ``total_steps`` stay at ``min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float,
    min_lr_ratio: float = 0.0,
) -> dict:
    """A Lightning ``lr_scheduler`` config dict stepping :func:`warmup_cosine` every step."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(
            f"warmup_fraction = {warmup_fraction} (model.init_args.warmup_fraction) must be in [0, 1)"
        )
    total_steps = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps, min_lr_ratio)
    )
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
