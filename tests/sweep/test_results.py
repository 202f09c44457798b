"""Spearman's rho, the results tables and the rank-vs-accuracy report, on known inputs (no fits)."""

from __future__ import annotations

import csv
import math

import pytest

from maskrank.sweep.results import Table, average_ranks, correlations, spearman, write_tables


def test_average_ranks_share_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([5.0, 5.0, 5.0]) == [2.0, 2.0, 2.0]
    assert average_ranks([]) == []


def test_spearman_perfect_inverse_and_monotone():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # ranks, not values


def test_spearman_with_ties_uses_average_ranks():
    # x ranks (1, 2.5, 2.5, 4) against y ranks (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 1, 2, 2], [2, 2, 1, 1]) == pytest.approx(-1.0)


def test_spearman_undefined_cases():
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant: no ranking
    assert spearman([1], [2]) is None
    assert spearman([1, 2, float("nan"), 3], [1, 2, 0, 3]) == pytest.approx(1.0)  # NaN pair dropped
    with pytest.raises(ValueError, match="length"):
        spearman([1, 2], [1])


def _table() -> Table:
    rows = []
    for i, (ratio, seed) in enumerate([(r, s) for r in (0.25, 0.5, 0.75) for s in (0, 1)]):
        rows.append(
            {
                "cell": f"mask_ratio={ratio},seed={seed}",
                "pretrain.model.init_args.mask_ratio": ratio,
                "seed": seed,
                "pretrain:rank/final_cls/effective_rank": 30.0 - 10 * ratio + 0.1 * seed,
                "finetune:val/acc": 0.9 - 0.2 * ratio,
                "finetune:val/loss": 0.1 * i,
            }
        )
    metrics = [k for k in rows[0] if ":" in k]
    return Table("mask_ratio", ["pretrain.model.init_args.mask_ratio", "seed"], metrics, rows, 8)


def test_correlations_pair_rank_and_accuracy_columns():
    (pair,) = correlations(_table())
    rank, acc, rho, n = pair
    assert (rank, acc, n) == ("pretrain:rank/final_cls/effective_rank", "finetune:val/acc", 6)
    # ranks fall with the ratio and split by seed; accuracy falls with the ratio, tied per ratio
    expected = 16 / math.sqrt(17.5 * 16)  # covariance and variances of those ranks
    assert rho == pytest.approx(expected)
    assert rho == pytest.approx(spearman([5, 6, 3, 4, 1, 2], [5.5, 5.5, 3.5, 3.5, 1.5, 1.5]))


def test_tables_have_params_metrics_spearman_and_seed_means(tmp_path):
    csv_path, md_path = write_tables(_table(), tmp_path)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert list(rows[0]) == [
        "cell",
        "pretrain.model.init_args.mask_ratio",
        "seed",
        "pretrain:rank/final_cls/effective_rank",
        "finetune:val/acc",
        "finetune:val/loss",
    ]
    assert float(rows[1]["pretrain:rank/final_cls/effective_rank"]) == pytest.approx(27.6)
    md = md_path.read_text()
    assert "6 of 8 cells finished" in md
    assert "| cell | mask_ratio | seed |" in md
    assert (
        "Spearman" in md
        and "| pretrain:rank/final_cls/effective_rank | finetune:val/acc | +0.956 | 6 |" in md
    )
    assert "Mean ± std over seeds" in md and "| 0.25 | 2 | 27.55 ± 0.071 |" in md
