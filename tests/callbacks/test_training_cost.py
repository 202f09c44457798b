"""TrainingCost: trainable parameters counted after adapters are injected; seconds per step."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl

from maskrank.callbacks import TrainingCost
from maskrank.data import SyntheticLowRank
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier
from testkit.tiny import TINY_VIT


def _data() -> SyntheticLowRank:
    return SyntheticLowRank(num_classes=4, class_rank=2, train_size=96, val_size=16, batch_size=8)


class _Slow(pl.Callback):
    """Makes every training batch take at least ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


def test_lora_run_logs_its_trainable_share_and_step_time(make_trainer):
    model = ImageClassifier(
        vit=ViTSpec(**TINY_VIT), num_classes=4, adaptation="lora", lora={"r": 2}
    )
    trainer = make_trainer([TrainingCost(), _Slow(0.05)], logger=False, max_epochs=2)
    trainer.fit(model, datamodule=_data())
    metrics = trainer.callback_metrics
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert float(metrics["cost/trainable_params"]) == trainable < total
    assert float(metrics["cost/total_params"]) == total
    # 12 batches per epoch, each at least 50 ms long: the median interval is at least that
    assert 0.05 <= float(metrics["cost/step_s"]) < 5.0


def test_nothing_timed_when_every_batch_is_warm_up(make_trainer):
    model = ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4)
    trainer = make_trainer([TrainingCost(skip_first=100)], logger=False)
    trainer.fit(model, datamodule=_data())
    assert "cost/step_s" not in trainer.callback_metrics
    assert "cost/trainable_params" in trainer.callback_metrics


def test_negative_warm_up_is_refused():
    with pytest.raises(ValueError, match="skip_first"):
        TrainingCost(skip_first=-1)
