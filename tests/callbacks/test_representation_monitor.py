"""RepresentationRankMonitor: known-rank features, probe sharding, non-maskrank data, modes."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maskrank.callbacks import RepresentationRankMonitor
from maskrank.callbacks._common import eval_mode
from maskrank.callbacks.representation import merge_shards, shard_bounds, spectrum_figure
from maskrank.metrics import alpha_req, effective_rank, participation_ratio
from maskrank.models.features import EncoderFeatures
from testkit.tiny import tiny_data, tiny_mae

RANK, WIDTH, PROBE = 5, 16, 32


class KnownRankEncoder(pl.LightningModule):
    """``encode`` maps each probe image to a row of a fixed (N, WIDTH) matrix of rank RANK.

    The matrix is ``U diag(1, ..., 1) Vᵀ`` (RANK equal singular values), so its effective rank is
    RANK up to RankMe's ε, its numerical and stable ranks exactly RANK. Images are looked up by
    their nearest stored probe image, so chunking and sharding do not matter.
    """

    def __init__(self, probe: torch.Tensor) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)
        self.register_buffer("probe", probe.flatten(1))  # (N, C*H*W)
        g = torch.Generator().manual_seed(0)
        u, _ = torch.linalg.qr(torch.randn(probe.shape[0], RANK, generator=g))  # (N, RANK)
        v, _ = torch.linalg.qr(torch.randn(WIDTH, RANK, generator=g))  # (WIDTH, RANK)
        self.register_buffer("table", 3.0 * u @ v.T)  # (N, WIDTH), rank RANK
        self.calls = 0

    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        self.calls += 1
        assert not self.training
        rows = self.table[torch.cdist(images.flatten(1), self.probe).argmin(dim=1)]  # (B, WIDTH)
        return EncoderFeatures(rows, rows, rows[:, None], [rows], [rows])

    def validation_step(self, batch, batch_idx):
        return None


def test_known_rank_features(make_trainer):
    dm = tiny_data(val_size=PROBE)
    dm.setup("validate")
    probe = dm.normalize(dm.probe_batch(PROBE)[0])
    module = KnownRankEncoder(probe)
    monitor = RepresentationRankMonitor(probe_size=PROBE, batch_size=5, all_metrics=True)
    trainer = make_trainer([monitor])
    trainer.validate(module, datamodule=dm, verbose=False)
    assert module.calls == math.ceil(PROBE / 5)  # chunked by batch_size
    logged = monitor.last_metrics
    for where in ("final_cls", "final_mean", "block00_cls", "block00_mean"):
        assert logged[f"rank/{where}/numerical_rank_1e-3"] == RANK
        assert logged[f"rank/{where}/stable_rank"] == pytest.approx(RANK, rel=1e-5)
        assert logged[f"rank/{where}/effective_rank"] == pytest.approx(RANK, rel=1e-4)
        assert logged[f"rank/{where}/energy_rank_0.9"] == math.ceil(0.9 * RANK)
    table = module.table.double()
    assert logged["rank/final_cls/effective_rank"] == pytest.approx(effective_rank(table))
    assert logged["rank/final_cls/alpha_req"] == pytest.approx(alpha_req(table))
    assert logged["rank/final_cls/participation_ratio"] == pytest.approx(participation_ratio(table))
    assert logged["rank/final_cls/spectral_norm"] == pytest.approx(3.0)
    # the scalars go through pl_module.log: they reach trainer.callback_metrics too
    assert float(trainer.callback_metrics["rank/final_cls/numerical_rank_1e-3"]) == RANK


def test_default_probe_size_is_ten_times_width_clamped(make_trainer):
    model = tiny_mae()
    monitor = RepresentationRankMonitor(per_block=False)
    assert monitor._size(model) == 640
    trainer = make_trainer([monitor])
    trainer.validate(model, datamodule=tiny_data(), verbose=False)
    assert "rank/final_cls/effective_rank" in trainer.callback_metrics
    assert not any(k.startswith("rank/block") for k in monitor.last_metrics)
    # clamped to the 32 held-out images: at most 32 nonzero singular values
    assert monitor.last_metrics["rank/final_cls/numerical_rank_1e-3"] <= 32


@pytest.mark.parametrize("n", [1, 7, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharding_reassembles_the_probe_in_order(n, world):
    probe = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    bounds = shard_bounds(n, world)
    sizes = [stop - start for start, stop in bounds]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    pad = max(sizes)
    shards = [  # what each rank contributes to all_gather: its shard, padded to equal size
        torch.cat([probe[a:b], probe[:1].expand(pad - (b - a), 3)]) for a, b in bounds
    ]
    assert torch.equal(merge_shards(torch.stack(shards), sizes), probe)


def test_non_maskrank_datamodule_warns_once_and_skips(make_trainer):
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long))
    monitor = RepresentationRankMonitor(every_n_epochs=1)
    trainer = make_trainer([monitor], max_epochs=2, logger=False)
    with pytest.warns(UserWarning, match="needs a maskrank datamodule") as record:
        trainer.fit(tiny_mae(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert sum("maskrank datamodule" in str(w.message) for w in record) == 1
    assert monitor.last_metrics == {}


def test_schedule_counts_validation_epochs_of_the_fit(make_trainer):
    monitor = RepresentationRankMonitor(every_n_epochs=2, per_block=False)
    make_trainer([monitor], max_epochs=1, logger=False).fit(tiny_mae(), datamodule=tiny_data())
    assert monitor.last_metrics == {}  # epoch 1 of every 2: not yet
    make_trainer([monitor], max_epochs=2, logger=False).fit(tiny_mae(), datamodule=tiny_data())
    assert "rank/final_mean/effective_rank" in monitor.last_metrics


def test_eval_mode_restores_each_submodule():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.1)))
    model.train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before


def test_spectrum_figure_says_what_it_shows_in_the_meaningful_range():
    sv = torch.tensor([10.0, 1.0, 1e-3, 1e-9])  # the last one is numerical noise
    metrics = {
        "rank/final_cls/effective_rank": 1.5,
        "rank/block00_cls/effective_rank": 2.0,
        "rank/block01_cls/effective_rank": 3.0,
        "rank/block01_mean/effective_rank": 4.0,
    }
    figure = spectrum_figure({"final_cls": sv, "final_mean": sv}, metrics)
    left, right = figure.axes
    assert left.get_ylim()[0] == pytest.approx(1e-4)  # noise floor, not 1e-10
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert labels == ["CLS token (effective rank 1.5)", "mean patch token"]
    ticks = right.get_xticks()
    assert all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in right.get_legend().get_texts()] == [
        "CLS token",
        "mean patch token",
    ]
