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

from maskrank.errors import ConfigError, check_interval, flag_of
from maskrank.models.lora import LoRASpec, LoRAView, apply_lora

__all__ = [
    "Adaptation",
    "check_adaptation",
    "check_dropout_acts",
    "fold_probe_head",
    "init_head",
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


def check_dropout_acts(
    adaptation: str,
    rates: list[float],
    penalty_sites: list[str],
    layers: dict[str, LoRAView],
    lora: LoRASpec | None,
) -> None:
    """Refuse dropout that the adaptation would leave without effect (one line naming ``dropout``).

    Args:
        adaptation: the adaptation mode.
        rates: the rate of every installed dropout spec.
        penalty_sites: names of the ``mlp.fc2`` layers whose forward computes an explicit penalty.
        layers: the LoRA layers :func:`setup_adaptation` returned, by name.
        lora: the LoRA spec with ``adaptation: lora``, else None.
    """
    if adaptation == "linear_probe" and any(rate > 0 for rate in rates):
        # every dropout site is inside the frozen encoder, which the probe keeps in eval mode
        raise ConfigError(
            f"{{field}} is set but {flag_of('adaptation')} is 'linear_probe', which keeps the "
            "frozen encoder in eval mode: its dropout would never act and an explicit penalty "
            "would have no trainable weight; drop the dropout settings or use finetune or lora",
            "dropout",
        )
    if lora is None or lora.engine != "maskrank":
        return
    # maskrank's adapter runs one GEMM with the merged weight instead of calling the wrapped
    # fc2, so the pre-hook that computes the penalty would never fire
    adapted = sorted(set(penalty_sites) & set(layers))
    if adapted:
        raise ConfigError(
            f"{{field}} has mode: explicit, whose penalty is computed in mlp.fc2's forward, but "
            f"{flag_of('lora.targets')} puts maskrank adapters on {adapted[0]}"
            f"{f' and {len(adapted) - 1} more' if len(adapted) > 1 else ''}, which would never "
            "compute it; leave fc2 out of the LoRA targets or drop the explicit mode",
            "dropout",
        )


@torch.no_grad()
def init_head(head: nn.Linear, std: float) -> None:
    """Weight from a normal of ``std`` truncated at ``±2 std``, bias 0: MAE's re-initialisation of
    the head before fine-tuning (``std`` 2e-5: the first logits are near 0, so the first steps
    adapt the head to the loaded features instead of back-propagating a random head's errors)."""
    nn.init.trunc_normal_(head.weight, std=std, a=-2 * std, b=2 * std)
    if head.bias is not None:
        head.bias.zero_()


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
