"""Never train on a NaN: stop (or skip the step) when the loss or the gradients are not finite.

A NaN loss gives NaN gradients, one optimizer step turns every weight into NaN, and from then on the
run logs NaN while ``last.ckpt`` is overwritten with garbage. :class:`NonFiniteGuard` checks, before
every optimizer step, that the loss(es) since the last step and the gradients are finite. If not,
it drops the gradients (``grad = None``: torch optimizers leave such parameters and their state
untouched, so the step changes nothing) and then

* ``action="stop"`` (default): raises :class:`~maskrank.errors.NonFiniteLossError`; the CLI prints
  one line naming the global step and the last good checkpoint, and exits with status 2;
* ``action="skip"``: goes on with the next batch and logs ``train/nonfinite_steps_skipped``; after
  ``max_consecutive_skips`` skipped steps in a row it stops as above (the run is not recovering).

It also refuses to write a checkpoint whose weights are not finite, whatever made them so. The
decision is reduced over DDP ranks, so all of them stop or skip together. With a float16
``GradScaler`` only the loss is checked: the scaler itself skips steps whose gradients overflowed.
Cost: one host sync per optimizer step and one pass over the gradients (an inf-norm).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from maskrank.errors import NonFiniteLossError

__all__ = ["NonFiniteGuard"]

Action = Literal["stop", "skip"]


def _grads_finite(grads: list[Tensor]) -> bool:
    """Whether every gradient entry is finite (the inf-norm of inf/NaN entries is inf/NaN)."""
    if not grads:
        return True
    norm = torch.nn.utils.get_total_norm(grads, norm_type=math.inf, foreach=True)
    return bool(torch.isfinite(norm))


def _last_good_checkpoint(trainer: pl.Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if path:
        return f"last good checkpoint: {path} (resume with --ckpt_path last)"
    return "no checkpoint was written yet"


class NonFiniteGuard(Callback):
    """Stop, or skip the optimizer step, when the loss or gradients become NaN/inf.

    Args:
        action: ``stop`` raises a one-line error naming the global step and the last good
            checkpoint; ``skip`` drops that step's gradients and continues.
        check_grads: also check the gradients (a finite loss can still give inf gradients).
        max_consecutive_skips: with ``skip``, stop after this many skipped steps in a row.
    """

    def __init__(
        self,
        action: Action = "stop",
        check_grads: bool = True,
        max_consecutive_skips: int = 10,
    ) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard: action must be 'stop' or 'skip', got {action!r}")
        if max_consecutive_skips < 1:
            raise ValueError("NonFiniteGuard: max_consecutive_skips must be >= 1")
        self.action = action
        self.check_grads = check_grads
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0  # steps skipped in this fit (kept in checkpoints)
        self._consecutive = 0
        self._loss_bad: Tensor | None = None  # device flag: a non-finite loss since the last step

    # ----------------------------------------------------------------------------- detection
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: no sync per micro-batch
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        loss_bad = bool(self._loss_bad) if self._loss_bad is not None else False
        self._loss_bad = None
        grads_bad = False
        if not loss_bad and self.check_grads and not self._scaler_in_use(trainer):
            grads_bad = not _grads_finite([p.grad for p in params if p.grad is not None])
        bad = trainer.strategy.reduce_boolean_decision(loss_bad or grads_bad, all=False)
        if not bad:
            self._consecutive = 0
            return
        for p in params:  # the optimizer skips parameters without a gradient: no update
            p.grad = None
        what = "loss" if loss_bad else "gradients"
        self._consecutive += 1
        if self.action == "stop":
            raise NonFiniteLossError(
                f"training stopped: the {what} became NaN/inf at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); this step did not update the weights; "
                f"{_last_good_checkpoint(trainer)}; lower the learning rate, or set "
                "--nan_guard.action skip to skip such steps"
            )
        if self._consecutive > self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"training stopped: {self._consecutive} optimizer steps in a row had a NaN/inf "
                f"{what} (up to global step {trainer.global_step}; --nan_guard.max_consecutive_skips "
                f"{self.max_consecutive_skips}); {_last_good_checkpoint(trainer)}"
            )
        self.skipped += 1
        if self.skipped == 1:
            rank_zero_warn(
                f"skipped the optimizer step at global step {trainer.global_step}: the {what} "
                "is NaN/inf (--nan_guard.action skip); train/nonfinite_steps_skipped counts them"
            )
        pl_module.log("train/nonfinite_steps_skipped", float(self.skipped), on_step=True)

    @staticmethod
    def _scaler_in_use(trainer: pl.Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for name, value in checkpoint.get("state_dict", {}).items():
            if isinstance(value, Tensor) and value.is_floating_point():
                if not bool(torch.isfinite(value).all()):
                    raise NonFiniteLossError(
                        f"refusing to write a checkpoint at global step {trainer.global_step}: "
                        f"weight {name} is NaN/inf; {_last_good_checkpoint(trainer)}"
                    )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
