"""Downstream adaptation modes of a pretrained ViT classifier (SCIENCE.md §6).

- ``finetune``: every weight trains; with ``layer_decay < 1`` block ``i`` of ``L`` gets the learning
  rate ``lr · layer_decay^(L + 1 - layer_id)`` (timm's grouping: patch embedding lowest, head 1x).
- ``linear_probe``: the encoder is frozen and kept in eval mode; the head is a BatchNorm without
  affine parameters followed by a Linear layer (MAE's protocol: the BatchNorm whitens the frozen
  features' scales so one learning rate suits any encoder). For export the BatchNorm folds into
  the Linear exactly (:func:`fold_probe_head`).
- ``lora``: low-rank adapters on the encoder's Linear layers (:mod:`maskrank.models.lora`); the
  adapters and the head train, everything else is frozen.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from maskrank.errors import ConfigError, check_interval
from maskrank.models.lora import LoRASpec, LoRAView, apply_lora

__all__ = [
    "Adaptation",
    "check_adaptation",
    "fold_probe_head",
    "probe_head",
    "setup_adaptation",
    "trainable_parameters",
]

Adaptation = Literal["finetune", "linear_probe", "lora"]


def check_adaptation(adaptation: str, layer_decay: float) -> None:
    """One-line errors for ``adaptation`` / ``layer_decay``."""
    if adaptation not in get_args(Adaptation):
        raise ConfigError(
            f"adaptation = {adaptation!r} ({{field}}): expected one of "
            f"{', '.join(get_args(Adaptation))}",
            "adaptation",
        )
    check_interval(layer_decay, "layer_decay", 0.0, 1.0, low_open=True, high_open=False)


def probe_head(head: nn.Linear) -> nn.Sequential:
    """``BatchNorm1d(affine=False)`` then ``head``: MAE's linear-probe head."""
    norm = nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6)
    return nn.Sequential(norm, head)


@torch.no_grad()
def fold_probe_head(head: nn.Module) -> nn.Module:
    """A plain Linear equal to a :func:`probe_head` in eval mode (other heads are returned as is).

    ``W (x - μ)/σ + b = (W/σ) x + (b - W μ/σ)`` with the BatchNorm's running statistics.
    """
    if not (isinstance(head, nn.Sequential) and len(head) == 2):
        return head
    norm, linear = head
    if not isinstance(norm, nn.BatchNorm1d) or not isinstance(linear, nn.Linear):
        return head
    inv_std = torch.rsqrt(norm.running_var + norm.eps)  # (D,)
    folded = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device)
    folded.weight.copy_(linear.weight * inv_std)
    bias = linear.bias if linear.bias is not None else torch.zeros_like(folded.bias)
    folded.bias.copy_(bias - (linear.weight * inv_std) @ norm.running_mean)
    return folded


def setup_adaptation(
    vit: nn.Module,
    adaptation: Adaptation,
    lora: LoRASpec | None = None,
) -> dict[str, LoRAView]:
    """Prepare the timm ViT ``vit`` (with its head) for ``adaptation``; returns the LoRA layers.

    Call after the pretrained weights are loaded: ``lora`` wraps the loaded layers.
    """
    if adaptation == "finetune":
        return {}
    if adaptation == "linear_probe":
        vit.requires_grad_(False)
        vit.head = probe_head(vit.head.requires_grad_(True))
        return {}
    layers = apply_lora(vit, lora or LoRASpec())
    vit.head.requires_grad_(True)
    return layers


def trainable_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
