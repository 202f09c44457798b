"""A callback that keeps one parameter's gradient after every optimizer step of a real fit
(importable by the CLI as ``testkit.gradients.GradientRecorder``).

It only reads: the gradient is cloned in ``on_train_batch_end``, after the optimizer step and
before the next step zeroes it, so it is the gradient that step used.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["GradientRecorder"]


class GradientRecorder(Callback):
    """Saves ``{"grads": (steps, *shape)}`` of the parameter named ``parameter`` to ``path`` when
    training ends.

    Args:
        path: the file written with ``torch.save``.
        parameter: the parameter's name in ``pl_module.named_parameters()``.
    """

    def __init__(self, path: str, parameter: str) -> None:
        self.path = Path(path)
        self.parameter = parameter
        self._grads: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grad = dict(pl_module.named_parameters())[self.parameter].grad
        self._grads.append(grad.detach().cpu().clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({"grads": torch.stack(self._grads)}, self.path)
