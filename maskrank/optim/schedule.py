"""Learning-rate schedule shared by the tasks: linear warmup, then cosine decay (pure functions).

The decay goes to ``min_lr_ratio`` times the peak and is stepped every optimizer step.
"""

from __future__ import annotations

import math

import torch

from maskrank.errors import check_interval


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
    check_interval(warmup_fraction, "warmup_fraction", 0.0, 1.0)
    total_steps = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps, min_lr_ratio)
    )
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
