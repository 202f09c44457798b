"""Under DDP (2 CPU processes) the probe metrics (ranks, LiDAR, k-NN accuracy, dropout penalty)
equal the single-process ones exactly, on in-memory, file-backed and streaming data."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    LidarSpec,
    OnlineKNN,
    RepresentationRankMonitor,
)
from testkit.sources import build_data
from testkit.tiny import tiny_mae


def _validate(devices: int, data) -> dict[str, float]:
    # 31 probe and 45 bank images: shards of 16 + 15 and 23 + 22, so the gathers need padding
    callbacks = [
        RepresentationRankMonitor(
            batch_size=7, probe_size=31, lidar=LidarSpec(views=3, samples=21)
        ),
        DropoutPenaltyMonitor(probe_size=31),
        OnlineKNN(batch_size=7, bank_size=45, probe_size=31),
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
    results = trainer.validate(tiny_mae(proj_drop_rate=0.1), datamodule=data)
    return {k: v for k, v in results[0].items() if k.startswith(("rank/", "dropout/", "eval/"))}


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:.*DistributedSampler.*", "ignore:.*all_gather is deprecated", "ignore:.*Iterable.*"
)
@pytest.mark.parametrize("source", ["synthetic", "folder_files", "stream"])
def test_ddp_gathers_the_probe_and_logs_the_single_device_values(source, sources):
    # Runs in the default suite (it fits the time budget); deselect with -m "not slow".
    single = _validate(1, build_data(source, sources))
    ddp = _validate(2, build_data(source, sources))
    assert single and single.keys() == ddp.keys()
    assert {"eval/knn_acc/final_cls", "rank/final_cls/lidar"} <= single.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-5), key
