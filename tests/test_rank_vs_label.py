"""Pairing label-free ranks with label-based accuracy over one run's evaluations."""

from __future__ import annotations

import pytest
from torch.utils.tensorboard import SummaryWriter

from maskrank.sweep.rank_vs_label import (
    pair_series,
    rank_vs_label,
    rank_vs_label_figure,
    rank_vs_label_report,
    rank_vs_label_table,
    read_series,
)
from maskrank.sweep.results import spearman


def test_pairs_on_shared_steps_only():
    p = pair_series([(0, 1.0), (10, 2.0), (20, 3.0)], [(10, 0.5), (20, 0.4), (30, 0.9)])
    assert p.steps == (10, 20) and p.rank == (2.0, 3.0) and p.label == (0.5, 0.4)
    assert p.rho == pytest.approx(-1.0)


def test_last_value_wins_and_non_finite_steps_are_dropped():
    p = pair_series([(5, 1.0), (5, 4.0), (6, float("nan"))], [(5, 0.2), (6, 0.3)])
    assert p.steps == (5,) and p.rank == (4.0,)
    assert p.rho is None  # one pair: undefined


def test_rank_vs_label_pairs_same_feature_and_online_probe():
    steps = [100, 200, 300, 400]
    series = {
        "rank/final_cls/effective_rank": list(zip(steps, [3.0, 4.0, 5.0, 6.0], strict=True)),
        "rank/final_cls/lidar": list(zip(steps, [9.0, 7.0, 8.0, 6.0], strict=True)),
        "rank/final_mean/effective_rank": list(zip(steps, [1.0, 2.0, 3.0, 4.0], strict=True)),
        "rank/block01_cls/effective_rank": list(zip(steps, [1.0, 2.0, 3.0, 4.0], strict=True)),
        "eval/knn_acc/final_cls": list(zip(steps, [0.2, 0.3, 0.35, 0.5], strict=True)),
        "eval/online_linear_acc": list(zip(steps, [0.5, 0.4, 0.3, 0.2], strict=True)),
        "train/loss": [(1, 1.0)],
    }
    got = {(p.rank_tag, p.label_tag): p for p in rank_vs_label(series)}
    assert set(got) == {
        ("rank/final_cls/effective_rank", "eval/knn_acc/final_cls"),
        ("rank/final_cls/effective_rank", "eval/online_linear_acc"),
        ("rank/final_cls/lidar", "eval/knn_acc/final_cls"),
        ("rank/final_cls/lidar", "eval/online_linear_acc"),
        ("rank/final_mean/effective_rank", "eval/online_linear_acc"),  # no knn for final_mean
    }
    assert got[("rank/final_cls/effective_rank", "eval/knn_acc/final_cls")].rho == 1.0
    assert got[("rank/final_cls/effective_rank", "eval/online_linear_acc")].rho == -1.0
    lidar = got[("rank/final_cls/lidar", "eval/knn_acc/final_cls")]
    assert lidar.rho == pytest.approx(spearman([9, 7, 8, 6], [0.2, 0.3, 0.35, 0.5]))
    table = rank_vs_label_table(list(got.values()))
    assert "| rank/final_cls/lidar | eval/knn_acc/final_cls | 4 | -0.800 |" in table
    figure = rank_vs_label_figure(list(got.values()))
    assert sum(ax.get_title().startswith("rho = ") for ax in figure.axes) == 5


def test_report_reads_event_files(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    for i, step in enumerate([10, 20, 30]):
        writer.add_scalar("rank/final_mean/effective_rank", 5.0 + i, step)
        writer.add_scalar("eval/knn_acc/final_mean", 0.3 - 0.1 * i, step)
    writer.close()
    assert read_series(tmp_path)["eval/knn_acc/final_mean"][0][0] == 10
    table, path = rank_vs_label_report(tmp_path, tmp_path / "plots")
    assert "| rank/final_mean/effective_rank | eval/knn_acc/final_mean | 3 | -1.000 |" in table
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rank_vs_label_report(empty, empty / "plots")[1] is None
