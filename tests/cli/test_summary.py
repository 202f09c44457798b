"""The end of ``maskrank fit|validate|test|sweep``: printed summary and summary*.json."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from maskrank.cli import main
from maskrank.cli.summary import report_run, run_summary
from maskrank.cli.sweep import summary_table
from maskrank.io.summary import (
    KEYS,
    build_summary,
    format_summary,
    read_summary,
    summary_file,
    write_summary,
)
from maskrank.sweep.layout import SweepLayout
from testkit.events import event_scalars
from testkit.resume import write_config
from testkit.tiny import tiny_mae_config

STEPS_PER_EPOCH = 4  # the tiny data: 64 images in batches of 16
CALLBACKS = [
    {
        "class_path": "maskrank.callbacks.RepresentationRankMonitor",
        "init_args": {"every_n_epochs": 1, "per_block": False, "plot": False, "embedding": False},
    },
    {"class_path": "maskrank.callbacks.TrainingCost", "init_args": {"skip_first": 0}},
]


def _run(args: list[str]) -> str:
    """``maskrank ARGS`` in this process; what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*args, "--threads", "1", "--trainer.enable_progress_bar", "false"])
    return out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch fit, its resumption to 2 epochs, and a validate into the same run directory:
    what each printed and the summary files after each command."""
    tmp = tmp_path_factory.mktemp("summary")
    cfg = write_config(
        tmp / "cfg.yaml",
        tmp / "runs",
        tiny_mae_config(online_probe=True),
        max_epochs=1,
        callbacks=CALLBACKS,
    )
    run_dir = tmp / "runs" / "exp" / "version_0"
    stages = {}
    for name, args in (
        ("fit", ["fit", "-c", str(cfg)]),
        ("resumed", ["fit", "-c", str(cfg), "--ckpt_path", "last", "--trainer.max_epochs", "2"]),
        (
            "validate",
            ["validate", "-c", str(cfg), "--ckpt_path", "last"]
            + ["--trainer.logger.init_args.version", "0"],
        ),
    ):
        printed = _run(args)
        summary = json.loads((run_dir / "summary.json").read_text())
        stages[name] = {
            "printed": printed,
            "summary": summary,
            "scalars": event_scalars(run_dir),
            # a later fit replaces the best checkpoint (save_top_k 1): look now
            "best_exists": Path(summary["best_checkpoint"]).is_file(),
        }
    return run_dir, stages


def test_fit_prints_and_writes_the_summary_of_what_it_logged(run):
    run_dir, stages = run
    fit = stages["fit"]
    summary, scalars = fit["summary"], fit["scalars"]
    assert list(summary) == list(KEYS)  # exactly the schema, in order
    assert summary["command"] == "fit"
    assert Path(summary["run_dir"]) == run_dir
    assert summary["tensorboard"] == f"tensorboard --logdir {run_dir.parent}"
    assert (summary["epoch"], summary["global_step"]) == (1, STEPS_PER_EPOCH)
    expected = {
        "val/loss",
        "val/loss_trivial",
        "eval/online_linear_acc",
        "rank/final_cls/effective_rank",
        "rank/final_mean/effective_rank",
        "cost/step_s",
    }
    assert set(summary["final"]) == expected
    for tag, value in summary["final"].items():  # the last value in the event file
        assert value == pytest.approx(scalars[tag][-1], rel=1e-6), tag
    assert summary["monitor"] == "val/loss"
    assert summary["best_score"] == pytest.approx(min(scalars["val/loss"]), rel=1e-6)
    assert fit["best_exists"]
    assert Path(summary["last_checkpoint"]) == run_dir / "checkpoints" / "last.ckpt"

    printed = fit["printed"]
    assert f"fit done: {run_dir} (epoch 1, step {STEPS_PER_EPOCH})" in printed
    assert f"best checkpoint: {summary['best_checkpoint']} (val/loss = " in printed
    assert f"tensorboard --logdir {run_dir.parent}" in printed
    for tag in expected:
        assert tag in printed


def test_resumed_fit_summarizes_the_whole_run(run):
    run_dir, stages = run
    summary, scalars = stages["resumed"]["summary"], stages["resumed"]["scalars"]
    assert (summary["epoch"], summary["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert len(scalars["val/loss"]) == 2  # both epochs' validations, in two processes' files
    # the best of the whole run: the checkpoint callback's state came back from last.ckpt
    assert summary["best_score"] == pytest.approx(min(scalars["val/loss"]), rel=1e-6)
    assert stages["resumed"]["best_exists"]
    assert summary["final"]["val/loss"] == pytest.approx(scalars["val/loss"][-1], rel=1e-6)
    assert f"step {2 * STEPS_PER_EPOCH})" in stages["resumed"]["printed"]


def test_validate_writes_its_own_summary_and_keeps_the_fits(run):
    run_dir, stages = run
    assert stages["validate"]["summary"] == stages["resumed"]["summary"]  # summary.json untouched
    summary = read_summary(run_dir / "summary_validate.json")
    assert summary is not None and summary["command"] == "validate"
    # the evaluated checkpoint's counters, not the fresh Trainer's step 0
    assert (summary["epoch"], summary["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    # the checkpoint callback's state comes back with the weights: the run's checkpoints
    fit = stages["resumed"]["summary"]
    assert (summary["best_checkpoint"], summary["best_score"]) == (
        fit["best_checkpoint"],
        fit["best_score"],
    )
    last_fit = stages["resumed"]["summary"]["final"]["val/loss"]
    assert summary["final"]["val/loss"] == pytest.approx(last_fit, rel=1e-5)  # same weights
    assert "validate done:" in stages["validate"]["printed"]
    assert str(run_dir / "summary_validate.json") in stages["validate"]["printed"]


def test_summary_files_per_command(tmp_path):
    assert summary_file(tmp_path, "fit").name == "summary.json"
    assert summary_file(tmp_path, "validate").name == "summary_validate.json"
    assert summary_file(tmp_path, "test").name == "summary_test.json"
    with pytest.raises(ValueError, match="predict"):
        summary_file(tmp_path, "predict")


def _summary(run_dir: Path, **overrides) -> dict:
    args = dict(
        last_checkpoint=None,
        best_checkpoint=str(run_dir / "best.ckpt"),
        best_score=0.5,
        monitor="val/loss",
        epoch=3,
        global_step=30,
        metrics={"val/loss": 0.5, "train/loss": 0.4, "eval/knn_acc/final_cls": 0.7},
    )
    return build_summary("fit", run_dir, **{**args, **overrides})


def test_final_values_are_the_selected_tags_and_json_stays_valid(tmp_path):
    summary = _summary(tmp_path, metrics={"val/loss": math.nan, "eval/knn_acc/final_cls": 0.7})
    assert list(summary["final"]) == ["val/loss", "eval/knn_acc/final_cls"]  # no train/loss
    path = write_summary(summary)
    written = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert written["final"] == {"eval/knn_acc/final_cls": 0.7}  # NaN left out of the file ...
    assert any("val/loss" in line and "nan" in line for line in format_summary(summary))  # shown


def test_sweep_ends_with_a_line_per_fit(tmp_path):
    layout = SweepLayout(tmp_path / "sweep")
    cells = [{"id": c, "params": {"lr": lr}, "runs": {"fit": c}} for c, lr in (("a", 1), ("b", 2))]
    layout.write_manifest(
        {
            "name": "s",
            "multi_stage": False,
            "param_keys": ["lr"],
            "cells": cells,
            "stages": [{"name": "fit", "metrics": []}],
        }  # fmt: skip
    )
    write_summary(_summary(layout.cell_dir("a"), best_score=0.25, global_step=12))
    lines = summary_table(layout.root)
    row_a = next(line for line in lines if line.startswith("a "))
    assert row_a.split()[1:] == ["12", "val/loss", "0.25", str(layout.cell_dir("a"))]
    row_b = next(line for line in lines if line.startswith("b "))
    assert row_b.split()[1:] == ["-", "-", str(layout.cell_dir("b"))]  # not finished


def _trainer(tmp_path: Path, **overrides) -> SimpleNamespace:
    """What run_summary reads of a Trainer after a fit whose last epoch was not its best."""
    ckpt = ModelCheckpoint(monitor="val/loss")
    ckpt.best_model_path = str(tmp_path / "best.ckpt")
    ckpt.best_model_score, ckpt.current_score = torch.tensor(0.25), torch.tensor(0.5)
    ckpt.last_model_path = str(tmp_path / "last.ckpt")
    fields = dict(
        loggers=[SimpleNamespace(log_dir=str(tmp_path), save_dir=str(tmp_path))],
        log_dir=str(tmp_path),
        callbacks=[ckpt],
        current_epoch=3,
        global_step=30,
        ckpt_path=None,
        is_global_zero=True,
        interrupted=False,
        callback_metrics={"val/loss": torch.tensor(0.5), "eval/online_linear_acc": 0.1},
        logged_metrics={"eval/online_linear_acc": torch.tensor(0.75)},
    )
    return SimpleNamespace(**{**fields, **overrides})


def test_summary_takes_the_best_score_and_the_logged_values(tmp_path):
    summary = run_summary(_trainer(tmp_path), "fit")
    assert (summary["best_score"], summary["best_checkpoint"]) == (
        0.25,
        str(tmp_path / "best.ckpt"),
    )
    assert summary["final"] == {"val/loss": 0.5, "eval/online_linear_acc": 0.75}


def test_no_run_directory_or_another_rank_writes_nothing(tmp_path):
    lines = []
    assert report_run(_trainer(tmp_path, loggers=[]), "fit", lines.append) is None
    assert report_run(_trainer(tmp_path, is_global_zero=False), "fit", lines.append) is None
    assert lines == [] and not any(tmp_path.iterdir())
