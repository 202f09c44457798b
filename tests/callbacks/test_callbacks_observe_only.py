"""The monitors only observe: a deterministic fit ends with bit-identical weights with or without them."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    RepresentationRankMonitor,
    WeightSpectrumMonitor,
)
from testkit.tiny import tiny_data, tiny_mae


def _fit(make_trainer, callbacks) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    model = tiny_mae(proj_drop_rate=0.2)  # dropout + random masks: any RNG use would show
    model.mae.decoder_norm.eval()  # an odd mode the callbacks must restore, not reset
    trainer = make_trainer(callbacks, max_epochs=2)
    trainer.fit(model, datamodule=tiny_data())
    assert not model.mae.decoder_norm.training and model.mae.encoder.training
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Found 1 module\\(s\\) in eval mode")
@pytest.mark.parametrize("background", [False, True])
def test_final_weights_identical_with_and_without_callbacks(make_trainer, background):
    without = _fit(make_trainer, [])
    monitors = [
        RepresentationRankMonitor(every_n_epochs=1, token_matrix=True),
        WeightSpectrumMonitor(every_n_steps=1, background=background),
        DropoutPenaltyMonitor(probe_size=16),
    ]
    with_callbacks = _fit(make_trainer, monitors)
    assert all(m.last_metrics for m in monitors)  # they did run, between the two epochs too
    assert without.keys() == with_callbacks.keys()
    for key, value in without.items():
        assert torch.equal(value, with_callbacks[key]), key
