"""AdamW with weight-decay and layer-decay parameter groups (pure functions, no Lightning state).

Weight decay applies to tensors with two or more dimensions only (matmul weights, patch-embedding
kernels, position embeddings); biases and normalization scales are not decayed.
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from maskrank.errors import ConfigError, check_interval


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
    module: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """The parameter groups of :func:`adamw`: (layer-wise lr,) decay or no decay; non-empty only.

    Each group carries its own ``lr`` and ``weight_decay``.
    """
    check_interval(lr, "lr", 0.0, low_open=True)
    check_interval(weight_decay, "weight_decay", 0.0)
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
    for g in groups:
        g.setdefault("lr", lr)
    return groups
