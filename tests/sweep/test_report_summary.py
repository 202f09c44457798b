"""``maskrank report``: the final-values table from each run's summary.json (else its event files)
and the overview figures with a line per cell, on hand-written sweep and run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.colors as mcolors
import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from maskrank.sweep.finals import final_row
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.overview_figures import CHARTS, RunCurves, load_curves, overview_figure
from maskrank.sweep.report import report, sweep_runs

KEY = "model.init_args.mask_ratio"
CELLS = ("mask_ratio=0.5,seed=0", "mask_ratio=0.75,seed=0")
STEPS = (10, 20, 30)


def _curves(offset: float) -> dict[str, list[float]]:
    """The tags the MAE task and the rank / k-NN callbacks log, one value per step."""
    return {
        "train/loss": [1.0 + offset, 0.8 + offset, 0.6 + offset],
        "val/loss": [0.9 + offset, 0.7 + offset, 0.65 + offset],
        "val/loss_trivial": [0.98, 0.98, 0.98],
        "eval/knn_acc/final_cls": [0.2 + offset, 0.3 + offset, 0.4 + offset],
        "eval/online_linear_acc": [0.1, 0.2 + offset, 0.3],
        "rank/final_cls/effective_rank": [3.0, 5.0 + offset, 7.0],
        "rank/final_mean/effective_rank": [2.0, 4.0, 6.0 + offset],
        "rank/final_cls/lidar": [4.0, 6.0, 8.0 + offset],
        "rank/block00_cls/effective_rank": [1.0, 2.0, 3.0 + offset],
        "rank/block00_mean/effective_rank": [1.5, 2.5, 3.5],
        "rank/block01_cls/effective_rank": [2.0, 3.0, 4.0 + offset],
        "weights/blocks.0.attn.qkv/effective_rank": [9.0, 9.0, 9.0],  # in no overview chart
    }


def _write_events(run_dir: Path, curves: dict[str, list[float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir))
    for tag, values in curves.items():
        for step, value in zip(STEPS, values, strict=True):
            writer.add_scalar(tag, value, step)
    writer.close()
    data = {"class_path": "maskrank.data.SyntheticLowRank", "init_args": {"num_classes": 4}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": data}))  # intrinsic rank 4 x 4


def _write_summary(run_dir: Path, final: dict[str, float], epoch: int, step: int) -> None:
    summary = {
        "command": "fit",
        "run_dir": str(run_dir),
        "tensorboard": f"tensorboard --logdir {run_dir.parent}",
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "best_checkpoint": None,
        "best_score": None,
        "monitor": None,
        "epoch": epoch,
        "global_step": step,
        "final": final,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


# the first cell's fit wrote a summary whose values differ from its event files' last ones
SUMMARY_FINAL = {"val/loss": 0.123, "eval/knn_acc/final_cls": 0.456, "rank/final_cls/lidar": 7.5}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A finished two-cell sweep: the first cell with a summary.json, the second without."""
    root = tmp_path / "sweep"
    manifest = {
        "name": "fake",
        "source": "fake.yaml",
        "multi_stage": False,
        "param_keys": [KEY, "seed"],
        # one metric: the per-metric sweep plots are not what these tests check
        "stages": [{"name": "run", "metrics": ["val/loss"]}],
        "cells": [
            {"id": cell, "params": {KEY: ratio, "seed": 0}, "runs": {"run": cell}}
            for cell, ratio in zip(CELLS, (0.5, 0.75), strict=True)
        ],
    }
    SweepLayout(root).write_manifest(manifest)
    for i, cell in enumerate(CELLS):
        curves = _curves(0.01 * i)
        _write_events(root / cell, curves)
        last = {tag: values[-1] for tag, values in curves.items()}
        SweepLayout(root).write_result(root / cell, {"metrics": last})
    _write_summary(root / CELLS[0], SUMMARY_FINAL, epoch=3, step=30)
    return root


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_final_values_come_from_summary_json_else_from_the_event_files(sweep_dir):
    lines: list[str] = []
    written = report(sweep_dir, echo=lines.append)
    rows = _rows(sweep_dir / "final_values.csv")
    summarised, fallback = rows[CELLS[0]], rows[CELLS[1]]
    assert summarised["source"] == "summary.json"
    assert (summarised["epoch"], summarised["step"]) == ("3", "30")
    for tag, value in SUMMARY_FINAL.items():
        assert float(summarised[tag]) == value
    assert summarised["rank/final_mean/effective_rank"] == ""  # not in that summary
    # without a summary: the last value of each FINAL_TAGS tag, the step of the latest scalar
    assert fallback["source"] == "events" and fallback["step"] == "30"
    expected = {t: v[-1] for t, v in _curves(0.01).items()}
    for tag in ("val/loss", "val/loss_trivial", "eval/knn_acc/final_cls"):
        assert float(fallback[tag]) == pytest.approx(expected[tag], rel=1e-6)
    assert float(fallback["rank/final_mean/effective_rank"]) == pytest.approx(6.01, rel=1e-6)
    assert "train/loss" not in fallback  # the summary's tags only, not every scalar
    text = "\n".join(lines)
    assert "| mask_ratio=0.5,seed=0 | summary.json | 3 | 30 | 0.123 |" in text
    assert (sweep_dir / "final_values.md").read_text().count("| mask_ratio=") == 2
    # and the overview: one figure per chart
    names = {p.name for p in written if p.name.startswith("overview_")}
    assert names == {f"overview_{chart.name}.png" for chart in CHARTS}
    assert all((sweep_dir / "plots" / name).stat().st_size > 5000 for name in names)


def test_a_cell_that_has_not_run_is_listed_as_such(tmp_path):
    row = final_row("late", tmp_path / "late")
    assert row.source == "not run" and row.values == {} and row.step is None


def _lines(figure) -> dict[str, dict[str, object]]:
    """Panel title -> {line label "cell: tag": line} of a figure's visible axes."""
    return {
        ax.get_title(): {line.get_label(): line for line in ax.get_lines()}
        for ax in figure.axes
        if ax.get_visible()
    }


def _runs(sweep_dir: Path):
    return [
        load_curves(cell, run_dir) for cell, run_dir in sweep_runs(SweepLayout(sweep_dir))["run"]
    ]


def test_overview_has_a_line_per_cell_in_every_panel_in_one_colour_per_cell(sweep_dir):
    runs = _runs(sweep_dir)
    charts = {chart.name: chart for chart in CHARTS}
    loss = _lines(overview_figure(charts["loss"], runs, "t"))
    assert set(loss) == {"train/loss", "val/loss"}
    # val/loss_trivial is drawn dotted in the val/loss panel, per cell
    assert set(loss["val/loss"]) == {
        f"{c}: {t}" for c in CELLS for t in ("val/loss", "val/loss_trivial")
    }
    assert loss["val/loss"][f"{CELLS[0]}: val/loss_trivial"].get_linestyle() == ":"
    line = loss["train/loss"][f"{CELLS[1]}: train/loss"]
    assert list(line.get_xdata()) == list(STEPS)
    assert list(line.get_ydata()) == pytest.approx(_curves(0.01)["train/loss"])
    colours = {}
    for panel in loss.values():
        for label, line in panel.items():
            colours.setdefault(label.split(": ")[0], set()).add(mcolors.to_hex(line.get_color()))
    assert all(len(c) == 1 for c in colours.values()) and len(set().union(*colours.values())) == 2

    accuracy = _lines(overview_figure(charts["accuracy"], runs, "t"))
    assert set(accuracy) == {"eval/knn_acc/final_cls", "eval/online_linear_acc"}
    assert all(len(panel) == 2 for panel in accuracy.values())


def test_rank_overview_pairs_effective_rank_with_lidar_and_the_intrinsic_rank(sweep_dir):
    runs = _runs(sweep_dir)
    charts = {chart.name: chart for chart in CHARTS}
    figure = overview_figure(charts["effective_rank"], runs, "t")
    panels = _lines(figure)
    assert set(panels) == {"final_cls", "final_mean"}
    cls = panels["final_cls"]
    assert {label for label in cls if label.startswith(CELLS[0])} == {
        f"{CELLS[0]}: rank/final_cls/effective_rank",
        f"{CELLS[0]}: rank/final_cls/lidar",
    }
    assert cls[f"{CELLS[0]}: rank/final_cls/lidar"].get_linestyle() == "--"
    # the intrinsic rank (4 classes x class_rank 4 by default) as a horizontal line
    flat = [line for line in cls.values() if len(set(line.get_ydata())) == 1]
    assert [list(line.get_ydata())[0] for line in flat] == [16.0]
    blocks = _lines(overview_figure(charts["block_effective_rank"], runs, "t"))
    assert set(blocks) == {"block00", "block01"}
    assert f"{CELLS[1]}: rank/block00_mean/effective_rank" in blocks["block00"]
    assert overview_figure(charts["loss"], [RunCurves("nothing logged", {})], "t") is None


def test_a_stage_that_cells_share_is_one_line(tmp_path, sweep_dir):
    manifest = SweepLayout(sweep_dir).read_manifest()
    manifest["multi_stage"] = True
    manifest["stages"] = [
        {"name": "pretrain", "metrics": ["val/*"]},
        {"name": "finetune", "metrics": ["val/*"]},
    ]
    for cell in manifest["cells"]:
        # both cells read the first cell's pretraining run; each has its own fine-tuning run
        cell["runs"] = {"pretrain": CELLS[0], "finetune": f"{cell['id']}/finetune"}
        _write_events(sweep_dir / cell["id"] / "finetune", {"train/loss": [1.0, 0.5, 0.2]})
    SweepLayout(sweep_dir).write_manifest(manifest)
    runs = sweep_runs(SweepLayout(sweep_dir))
    assert [cell for cell, _ in runs["pretrain"]] == [CELLS[0]]
    assert [cell for cell, _ in runs["finetune"]] == list(CELLS)
    written = {p.name for p in report(sweep_dir, echo=lambda _: None)}
    assert {"pretrain_overview_loss.png", "finetune_overview_loss.png"} <= written
    assert "finetune_overview_effective_rank.png" not in written  # no rank tags there
    rows = _rows(sweep_dir / "final_values.csv")
    assert set(rows) == {f"{CELLS[0]} [pretrain]", *(f"{c} [finetune]" for c in CELLS)}


def test_a_directory_of_runs_gets_the_table_and_the_overview(tmp_path):
    for i in range(2):
        curves = {t: v for t, v in _curves(0.1 * i).items() if t.endswith("loss")}
        _write_events(tmp_path / "quickstart" / f"version_{i}", curves)
    _write_summary(tmp_path / "quickstart" / "version_1", {"val/loss": 0.5}, epoch=2, step=20)
    written = report(tmp_path / "quickstart", echo=lambda _: None)
    rows = _rows(tmp_path / "quickstart" / "final_values.csv")
    assert rows["version_0"]["source"] == "events" and rows["version_1"]["source"] == "summary.json"
    assert float(rows["version_1"]["val/loss"]) == 0.5
    assert tmp_path / "quickstart" / "plots" / "overview_loss.png" in written
    # a single run directory: its table, no side-by-side overview
    written = report(tmp_path / "quickstart" / "version_0", echo=lambda _: None)
    assert not any(p.name.startswith("overview_") for p in written)
    assert _rows(tmp_path / "quickstart" / "version_0" / "final_values.csv").keys() == {"version_0"}
