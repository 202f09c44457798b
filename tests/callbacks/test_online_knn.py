"""OnlineKNN and the LiDAR of RepresentationRankMonitor (SCIENCE.md §9)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from maskrank.callbacks import LidarSpec, OnlineKNN, RepresentationRankMonitor
from maskrank.callbacks.lidar_views import LIDAR_VIEW_SEED
from maskrank.errors import ConfigError
from maskrank.metrics import knn_accuracy, lidar, linear_probe_accuracy
from testkit.tiny import tiny_data, tiny_mae


def _count_encoded(model) -> list[int]:
    """Wrap ``model.encode`` so that every call appends its batch size to the returned list."""
    sizes: list[int] = []
    inner = model.encode

    def encode(images):
        sizes.append(images.shape[0])
        return inner(images)

    model.encode = encode
    return sizes


def test_knn_accuracy_is_that_of_unaugmented_eval_mode_features(make_trainer):
    data, model = tiny_data(), tiny_mae(proj_drop_rate=0.3)  # dropout: eval mode matters
    knn = OnlineKNN(k=5, bank_size=48, probe_size=24)
    make_trainer([knn], logger=False).validate(model, datamodule=data, verbose=False)
    bank, bank_y = data.probe_batch(48, "train")
    probe, probe_y = data.probe_batch(24)
    model.eval()
    with torch.no_grad():
        fb = model.encode(data.normalize(bank))
        fp = model.encode(data.normalize(probe))
    expected = {
        "eval/knn_acc/final_cls": knn_accuracy(fb.cls, bank_y, fp.cls, probe_y, k=5),
        "eval/knn_acc/final_mean": knn_accuracy(fb.patch_mean, bank_y, fp.patch_mean, probe_y, 5),
        "eval/linear_acc/final_cls": linear_probe_accuracy(fb.cls, bank_y, fp.cls, probe_y),
        "eval/linear_acc/final_mean": linear_probe_accuracy(
            fb.patch_mean, bank_y, fp.patch_mean, probe_y
        ),
    }
    assert knn.last_metrics == pytest.approx(expected, abs=1e-9)
    knn = OnlineKNN(k=5, bank_size=48, probe_size=24, linear_probe=False)
    make_trainer([knn], logger=False).validate(model, datamodule=data, verbose=False)
    assert set(knn.last_metrics) == {"eval/knn_acc/final_cls", "eval/knn_acc/final_mean"}


def test_knn_and_rank_monitor_share_one_probe_pass(make_trainer):
    data = tiny_data(val_size=32)
    model = tiny_mae()
    sizes = _count_encoded(model)
    monitor = RepresentationRankMonitor(probe_size=32, batch_size=8)
    knn = OnlineKNN(bank_size=40, probe_size=32, batch_size=8)
    make_trainer([monitor, knn], logger=False).validate(model, datamodule=data, verbose=False)
    assert sum(sizes) == 32 + 40  # the probe once (shared), the bank once
    assert knn.last_metrics and monitor.last_metrics
    sizes.clear()
    make_trainer([knn], logger=False).validate(model, datamodule=data, verbose=False)
    assert sum(sizes) == 32 + 40  # alone it embeds both itself


def test_knn_every_n_epochs_and_tags_in_fit(make_trainer):
    knn = OnlineKNN(every_n_epochs=2, bank_size=32)
    trainer = make_trainer([knn], max_epochs=3, logger=False)
    epochs: list[int] = []
    original = knn.on_validation_epoch_end

    def spy(trainer_, module):
        before = knn.last_metrics
        original(trainer_, module)
        if knn.last_metrics is not before:  # a new dict only when it measured
            epochs.append(trainer_.current_epoch)

    knn.on_validation_epoch_end = spy
    trainer.fit(tiny_mae(), datamodule=tiny_data())
    assert epochs == [1]
    assert {"eval/knn_acc/final_cls", "eval/knn_acc/final_mean"} <= set(trainer.callback_metrics)


def test_lidar_of_the_monitor_matches_the_metric_on_the_same_views(make_trainer):
    data, model = tiny_data(), tiny_mae()
    monitor = RepresentationRankMonitor(per_block=False, lidar=LidarSpec(views=3, samples=20))
    make_trainer([monitor], logger=False).validate(model, datamodule=data, verbose=False)
    views = data.augmented_views(20, 3, LIDAR_VIEW_SEED)  # (20, 3, C, S, S)
    model.eval()
    with torch.no_grad():
        feats = [model.encode(views[:, v]) for v in range(3)]
    cls = torch.stack([f.cls for f in feats], dim=1)  # (20, 3, D)
    mean = torch.stack([f.patch_mean for f in feats], dim=1)
    assert monitor.last_metrics["rank/final_cls/lidar"] == pytest.approx(lidar(cls), rel=1e-4)
    assert monitor.last_metrics["rank/final_mean/lidar"] == pytest.approx(lidar(mean), rel=1e-4)
    assert 1.0 <= monitor.last_metrics["rank/final_cls/lidar"] <= 64


def test_knn_and_lidar_only_observe(make_trainer):
    def fit(callbacks):
        pl.seed_everything(0)
        model = tiny_mae(proj_drop_rate=0.2)
        make_trainer(callbacks, max_epochs=2, logger=False).fit(model, datamodule=tiny_data())
        return model.state_dict()

    without = fit([])
    monitor = RepresentationRankMonitor(every_n_epochs=1, lidar=LidarSpec(views=2, samples=8))
    knn = OnlineKNN(every_n_epochs=1, bank_size=32)
    with_callbacks = fit([monitor, knn])
    assert knn.last_metrics and "rank/final_cls/lidar" in monitor.last_metrics
    for key, value in without.items():
        assert torch.equal(value, with_callbacks[key]), key


def test_bad_settings_name_the_option(make_trainer):
    with pytest.raises(ConfigError, match="OnlineKNN k"):
        OnlineKNN(k=0)
    with pytest.raises(ConfigError, match="lidar.views"):
        LidarSpec(views=1)
    with pytest.raises(ConfigError, match="larger than the bank of 64"):
        make_trainer([OnlineKNN(k=65)], logger=False).validate(
            tiny_mae(), datamodule=tiny_data(), verbose=False
        )
    no_augment = tiny_data(augment=False)
    with pytest.raises(ConfigError, match="augment"):
        make_trainer([RepresentationRankMonitor(lidar=LidarSpec())], logger=False).validate(
            tiny_mae(), datamodule=no_augment, verbose=False
        )
