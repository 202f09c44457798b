"""NonFiniteGuard: a NaN/inf loss or gradient never reaches the weights or last.ckpt."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maskrank.callbacks import NonFiniteGuard
from maskrank.errors import NonFiniteLossError

STEPS = 8  # one epoch of 8 batches


class Regression(pl.LightningModule):
    """A linear model whose loss is NaN (or finite with an inf gradient) at chosen steps.

    ``nan_at`` / ``inf_grad_at`` are values of ``global_step`` during ``training_step``, i.e. the
    number of optimizer steps taken before the bad one.
    """

    def __init__(self, nan_at=(), inf_grad_at=()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.nan_at, self.inf_grad_at = set(nan_at), set(inf_grad_at)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.layer(x).pow(2).mean()
        if self.global_step in self.nan_at:
            loss = loss * math.nan
        if self.global_step in self.inf_grad_at:
            zero = self.layer.bias - self.layer.bias.detach()  # value 0, gradient 1
            loss = loss + torch.sqrt(zero).sum()  # value +0: the loss stays finite; d/dbias = inf
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)

    def train_dataloader(self):
        data = torch.randn(4 * STEPS, 4, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(data), batch_size=4)


class Snapshots(Callback):
    """``weights[g]``: the weights after ``g`` optimizer steps."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights[0] = _copy(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights[trainer.global_step] = _copy(pl_module)


class PoisonWeightsAt(Callback):
    """Writes a NaN into the weights after step ``step`` (before that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.layer.weight[0, 0] = math.nan


def _copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit(make_trainer, model, callbacks, tmp_path, **kw) -> ModelCheckpoint:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer = make_trainer([*callbacks, ckpt], enable_checkpointing=True, **kw)
    trainer.fit(model)
    return ckpt


def test_without_the_guard_a_nan_loss_reaches_the_weights(make_trainer, tmp_path):
    # the control: this model really does poison an unguarded fit
    model = Regression(nan_at={3})
    _fit(make_trainer, model, [], tmp_path, logger=False)
    assert not torch.isfinite(model.layer.weight).all()


def test_stop_leaves_the_weights_and_last_ckpt_as_they_were_before_the_nan_step(
    make_trainer, tmp_path
):
    model, snaps = Regression(nan_at={3}), Snapshots()
    with pytest.raises(NonFiniteLossError) as err:
        _fit(make_trainer, model, [NonFiniteGuard("stop"), snaps], tmp_path, logger=False)
    message = str(err.value)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert "\n" not in message
    assert "loss became NaN/inf at global step 3" in message and str(last) in message
    assert max(snaps.weights) == 3  # steps 0-2 trained, the 4th step (NaN) was stopped
    assert _equal(_copy(model), snaps.weights[3])  # the NaN step did not update the weights
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 3
    assert _equal(
        {k[len("layer.") :]: v for k, v in saved["state_dict"].items()},
        {k: v for k, v in _copy(model.layer).items()},
    )


def test_stop_on_an_inf_gradient_with_a_finite_loss(make_trainer, tmp_path):
    model, snaps = Regression(inf_grad_at={2}), Snapshots()
    with pytest.raises(NonFiniteLossError, match="the gradients became NaN/inf at global step 2"):
        _fit(make_trainer, model, [NonFiniteGuard(), snaps], tmp_path, logger=False)
    assert _equal(_copy(model), snaps.weights[2])


def test_skip_drops_only_the_bad_steps_and_counts_them(make_trainer, tmp_path):
    model, snaps = Regression(nan_at={2, 5}, inf_grad_at={6}), Snapshots()
    guard = NonFiniteGuard("skip")
    with pytest.warns(UserWarning, match="skipped the optimizer step at global step 2"):
        _fit(make_trainer, model, [guard, snaps], tmp_path)
    trainer = model.trainer
    assert trainer.global_step == STEPS and guard.skipped == 3
    assert trainer.callback_metrics["train/nonfinite_steps_skipped"] == 3
    for step in range(1, STEPS + 1):  # weights[step] is after the step run at global_step-1
        unchanged = _equal(snaps.weights[step], snaps.weights[step - 1])
        assert unchanged == (step - 1 in {2, 5, 6}), step
    assert all(torch.isfinite(v).all() for v in _copy(model).values())
    # the optimizer saw no gradient on skipped steps: its per-parameter step count excludes them
    state = trainer.optimizers[0].state[model.layer.weight]
    assert int(state["step"]) == STEPS - 3


@pytest.mark.filterwarnings("ignore:skipped the optimizer step")
def test_skip_gives_up_after_too_many_bad_steps_in_a_row(make_trainer, tmp_path):
    model = Regression(nan_at=set(range(2, STEPS)))
    guard = NonFiniteGuard("skip", max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match="4 optimizer steps in a row"):
        _fit(make_trainer, model, [guard], tmp_path, logger=False)
    assert torch.isfinite(model.layer.weight).all()


def test_a_checkpoint_with_nan_weights_is_never_written(make_trainer, tmp_path):
    model = Regression()
    with pytest.raises(NonFiniteLossError, match="refusing to write a checkpoint at global step 4"):
        _fit(make_trainer, model, [NonFiniteGuard(), PoisonWeightsAt(4)], tmp_path, logger=False)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert not [p.name for p in (tmp_path / "ckpt").iterdir() if "step=4" in p.name]


def test_the_guard_changes_nothing_in_a_healthy_fit(make_trainer, tmp_path):
    with_guard, without = Regression(), Regression()
    _fit(make_trainer, with_guard, [NonFiniteGuard()], tmp_path / "a", logger=False)
    _fit(make_trainer, without, [], tmp_path / "b", logger=False)
    assert _equal(_copy(with_guard), _copy(without))
