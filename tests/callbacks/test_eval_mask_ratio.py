"""One evaluation mask ratio for everything that evaluates an MAE (MaskingSpec.eval_ratio)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from maskrank.callbacks import DropoutPenaltyMonitor, ReconstructionLogger
from maskrank.errors import ConfigError
from maskrank.models.masking import MaskingSpec
from testkit.tiny import tiny_data, tiny_mae


@pytest.mark.parametrize("end", [0.25, 0.5])
def test_validation_monitors_and_pictures_use_the_same_ratio(tmp_path, end):
    model = tiny_mae(
        mask_ratio=0.75, mask_ratio_end=end, proj_drop_rate=0.1
    )  # dropout: its monitor runs
    evaluated: list[float] = []
    forward = model.mae.forward_with_latent  # what forward, validation and monitors call

    def spy(images, mask_ratio, *args, **kwargs):
        if not model.mae.training:  # validation, monitors and pictures run in eval mode
            evaluated.append(mask_ratio)
        return forward(images, mask_ratio, *args, **kwargs)

    model.mae.forward_with_latent = spy
    trainer = pl.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path),
        callbacks=[DropoutPenaltyMonitor(probe_size=16), ReconstructionLogger(num_images=2)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=tiny_data())
    assert model.masking.eval_ratio == end
    # validation batches, the dropout monitor's chunk and the reconstruction picture
    assert len(evaluated) >= 3 and set(evaluated) == {end}


def test_masking_spec_checks_its_fields_once_naming_the_flag():
    assert MaskingSpec(0.75, end=0.0).eval_ratio == 0.0
    assert MaskingSpec(0.6, range=(0.5, 0.9)).eval_ratio == 0.6
    assert not MaskingSpec(0.75).varies and MaskingSpec(0.75, end=0.9).varies
    with pytest.raises(
        ConfigError, match=r"model\.init_args\.mask_ratio_end = 1\.0 must be in \[0, 1\)"
    ):
        MaskingSpec(0.75, end=1.0)
    with pytest.raises(ConfigError, match=r"model\.init_args\.mask_ratio_range .*high-to-low"):
        MaskingSpec(0.75, range=(0.9, 0.5))
    with pytest.raises(ConfigError, match=r"model\.init_args\.masking"):
        MaskingSpec(0.75, strategy="checkerboard")
