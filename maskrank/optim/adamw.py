"""AdamW with weight-decay and layer-decay parameter groups (pure functions, no Lightning state).

Weight decay applies to tensors with two or more dimensions only (matmul weights, patch-embedding
kernels, position embeddings), except the stage's skip list (:mod:`maskrank.optim.plan`: the ViT's
``no_weight_decay()`` names when fine-tuning); biases and normalization scales are not decayed. The decisions are
made by parameter name on the unwrapped model (:mod:`maskrank.optim.plan`), so a sharded copy of
the model gets the same groups.
"""

from __future__ import annotations

import torch
from torch import nn

from maskrank.errors import ConfigError, check_interval
from maskrank.optim.plan import OptimizerPlan, plan_parameters, planned_parameters


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
    groups = param_groups(module, lr, weight_decay, layer_decay)
    if fused is None:
        fused = default_fused(groups)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def default_fused(groups: list[dict]) -> bool:
    """Whether every parameter of ``groups`` is on a device with torch's fused Adam kernel."""
    return all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    plan: OptimizerPlan | None = None,
) -> list[dict]:
    """The parameter groups of :func:`adamw`: (layer-wise lr,) decay or no decay; non-empty only.

    Each group carries its own ``lr`` and ``weight_decay``. The layout is timm's: without layer
    decay a no-decay group then a decay group (everything in the no-decay group when
    ``weight_decay`` is 0); with it one group per (layer, decay) in the order the layers first
    appear, ``lr`` scaled by the layer's factor. ``plan`` holds the decisions made on the
    unwrapped model (:func:`maskrank.optim.plan.plan_parameters` with the same ``layer_decay``);
    without it they are made now from ``module``, which must then be unwrapped.
    """
    check_interval(lr, "lr", 0.0, low_open=True)
    check_interval(weight_decay, "weight_decay", 0.0)
    if plan is None:
        plan = plan_parameters(module, layer_decay)
    elif plan.layer_decay != layer_decay:
        raise ValueError(f"plan made with layer_decay={plan.layer_decay}, not {layer_decay}")
    live = planned_parameters(module, plan)
    if not live:
        raise ConfigError("the model has no trainable parameters")
    groups: dict[tuple[float, bool], dict] = {}
    if layer_decay >= 1.0:  # no decay first, as timm orders them
        groups[1.0, False] = {"params": [], "lr": lr, "weight_decay": 0.0}
        groups[1.0, True] = {"params": [], "lr": lr, "weight_decay": weight_decay}
    for _, p, entry in live:
        # timm's layer-decay groups keep "decay" apart even when weight_decay is 0
        decay = entry.decay and (weight_decay > 0 or layer_decay < 1.0)
        key = (entry.lr_scale, decay)
        if key not in groups:
            wd = weight_decay if decay else 0.0
            groups[key] = {"params": [], "lr": lr * entry.lr_scale, "weight_decay": wd}
        groups[key]["params"].append(p)
    return [g for g in groups.values() if g["params"]]
