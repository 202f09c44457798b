"""``compile: true`` of the tasks: ``torch.compile`` of every transformer block, checked first.

Each block is compiled in place (``nn.Module.compile``), the regional compilation torch
recommends for repeated blocks: one compiled graph serves every block of the same shape, parameter
names and checkpoints stay those of the plain modules, and what runs between the blocks stays
eager: the MAE's masking (random indices, a ``torch.Generator``, a visible-token count that may
change per batch), LoRA/peft wrappers around the blocks' Linear layers compile inside them.

``torch.compile`` builds its kernels lazily, at the first forward; :func:`check_compile` compiles
a tiny function on the training device first, so that a missing C++ compiler (inductor on CPU) or
GPU toolchain is refused in one line before training starts instead of failing inside the first
step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from maskrank.errors import ConfigError

__all__ = ["check_compile", "compile_blocks"]

_CHECKED: set[str] = set()  # device types whose probe compiled, once per process


def compile_blocks(blocks: Iterable[nn.Module]) -> None:
    """Compile every module of ``blocks`` in place (its state-dict names do not change)."""
    for block in blocks:
        block.compile()


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x * 2.0 + 1.0).sum()


def check_compile(device: torch.device) -> None:
    """Refuse ``compile: true`` (``ConfigError`` naming the flag) if ``torch.compile`` cannot build
    and run a forward and backward kernel on ``device``."""
    if device.type in _CHECKED:
        return
    x = torch.ones(4, device=device, requires_grad=True)
    try:
        torch.compile(_probe, dynamic=False)(x).backward()
    except Exception as err:  # inductor wraps the cause (no compiler, bad toolchain) in its own
        reason = " ".join(str(err).split()).split(" Set TORCHDYNAMO_VERBOSE")[0][:300]
        raise ConfigError(
            f"{{field}} is true but torch.compile cannot build kernels on {device.type} "
            f"({type(err).__name__}: {reason}); install what it names (on CPU a C++ compiler "
            "such as g++) or set it to false",
            "compile",
        ) from None
    _CHECKED.add(device.type)
