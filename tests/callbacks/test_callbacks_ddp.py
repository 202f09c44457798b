"""Under DDP (2 CPU processes) the probe metrics (ranks, LiDAR, k-NN accuracy, dropout penalty)
equal the single-process ones exactly."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    LidarSpec,
    OnlineKNN,
    RepresentationRankMonitor,
)

from ._helpers import tiny_data, tiny_mae


def _validate(devices: int) -> dict[str, float]:
    callbacks = [
        RepresentationRankMonitor(batch_size=7, lidar=LidarSpec(views=3, samples=21)),
        DropoutPenaltyMonitor(),
        OnlineKNN(batch_size=7, bank_size=45),  # 45 bank images: shards of 23 and 22
    ]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # 33 probe images: shards of 17 and 16, so the gather needs padding
    results = trainer.validate(tiny_mae(proj_drop_rate=0.1), datamodule=tiny_data(val_size=33))
    return {k: v for k, v in results[0].items() if k.startswith(("rank/", "dropout/", "eval/"))}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*DistributedSampler.*", "ignore:.*all_gather is deprecated")
def test_ddp_gathers_the_probe_and_logs_the_single_device_values():
    # Runs in the default suite (it fits the time budget); deselect with -m "not slow".
    single, ddp = _validate(1), _validate(2)
    assert single and single.keys() == ddp.keys()
    assert {"eval/knn_acc/final_cls", "rank/final_cls/lidar"} <= single.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-5), key
