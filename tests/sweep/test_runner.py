"""End-to-end sweeps of tiny runs (CPU, generated data): grid, resume, checks, HParams, report."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from maskrank.cli import main
from maskrank.cli.sweep import run_sweep
from maskrank.errors import ConfigError
from maskrank.sweep.report import intrinsic_rank
from testkit.events import event_tags
from testkit.tiny import TINY_DATA, TINY_VIT

TRAINER = {
    "max_epochs": 1,
    "log_every_n_steps": 1,
    "enable_model_summary": False,
    "enable_progress_bar": False,
    "num_sanity_val_steps": 0,
}
MAE = {
    "class_path": "maskrank.tasks.MAEPretraining",
    "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
}
CLASSIFIER = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}
GRID = {"model.init_args.mask_ratio": [0.5, 0.75], "model.init_args.vit.proj_drop_rate": [0.0, 0.1]}
CELLS = [f"mask_ratio={r},proj_drop_rate={d},seed=0" for r in (0.5, 0.75) for d in (0.0, 0.1)]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base(directory: Path, model: dict, name: str = "base.yaml") -> Path:
    return _write(directory / name, {"trainer": TRAINER, "model": model, "data": TINY_DATA})


def _sweep_file(directory: Path, **extra) -> Path:
    spec = {"base": str(_base(directory, MAE)), "grid": GRID, "seeds": [0], **extra}
    return _write(directory / "grid.yaml", spec)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """The 2x2 grid, run once for the module: (sweep file, sweep dir, outcome, (wall, cpu) s)."""
    root = tmp_path_factory.mktemp("sweep")
    path = _sweep_file(root)
    torch.manual_seed(123)
    rng = torch.random.get_rng_state()
    start, cpu = time.perf_counter(), time.process_time()
    outcome = run_sweep(path, out=root / "out", echo=lambda _: None)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is untouched
    return path, root / "out", outcome, seconds


def test_grid_runs_every_cell_in_its_own_run_dir_under_a_minute(grid_sweep):
    _, out, outcome, (wall, cpu) = grid_sweep
    # CPU time of this process (all its threads), so that other jobs on the machine do not count;
    # on an idle 2-core machine the wall time is at most about this.
    assert cpu < 60, f"the 2x2 tiny sweep took {cpu:.1f} s of CPU ({wall:.1f} s wall)"
    assert outcome.ran == CELLS and outcome.skipped == []
    for cell in CELLS:
        run = out / cell
        assert (run / "result.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert {"train/loss", "val/loss"} <= event_tags(run)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["model"]["init_args"]["mask_ratio"] == float(cell.split(",")[0].split("=")[1])
    assert not (out / "version_0").exists()


def test_results_table_has_a_row_per_cell_and_the_metric_columns(grid_sweep):
    _, out, _, _ = grid_sweep
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == CELLS
    assert list(rows[0]) == [
        "cell",
        "model.init_args.mask_ratio",
        "model.init_args.vit.proj_drop_rate",
        "seed",
        "train/loss",
        "val/loss",
        "val/loss_trivial",  # the level val/loss is read against
    ]
    assert [float(r["model.init_args.vit.proj_drop_rate"]) for r in rows] == [0.0, 0.1, 0.0, 0.1]
    assert all(float(r["val/loss"]) > 0 for r in rows)
    md = (out / "results.md").read_text()
    assert "| cell | mask_ratio | proj_drop_rate | seed | train/loss | val/loss |" in md
    assert md.count("| mask_ratio=") == 4


def test_every_cell_has_an_hparams_session(grid_sweep):
    _, out, _, _ = grid_sweep
    for cell in CELLS:
        acc = EventAccumulator(str(out / cell))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["model.init_args.mask_ratio"].number_value in (0.5, 0.75)
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]
        ).experiment
        assert {m.name.tag for m in experiment.metric_infos} == {
            "train/loss",
            "val/loss",
            "val/loss_trivial",
        }


def test_resume_runs_only_the_unfinished_cell(grid_sweep, tmp_path):
    path, out, _, _ = grid_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    redo = CELLS[2]
    (copy / redo / "result.json").unlink()
    before = {c: (copy / c / "result.json").stat().st_mtime_ns for c in CELLS if c != redo}
    outcome = run_sweep(path, out=copy, echo=lambda _: None)
    assert outcome.ran == [redo]
    assert outcome.skipped == [c for c in CELLS if c != redo]
    assert {c: (copy / c / "result.json").stat().st_mtime_ns for c in before} == before
    assert (copy / redo / "result.json").is_file()
    assert len(list((copy / redo).glob("events.out.tfevents.*[0-9]"))) == 1  # old events cleared


def test_changed_settings_are_not_resumed_silently(grid_sweep, tmp_path):
    _, out, _, _ = grid_sweep
    changed = _sweep_file(tmp_path, overrides={"model.init_args.decoder_depth": 2})
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(changed, out=out, dry_run=True, echo=lambda _: None)


def test_dry_run_lists_the_cells_and_runs_nothing(grid_sweep, tmp_path, capsys):
    path, out, _, _ = grid_sweep
    main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "new")])
    text = capsys.readouterr().out
    assert all(cell in text for cell in CELLS) and "4 of 4 cells would run" in text
    assert "maskrank fit -c" in text and not (tmp_path / "new").exists()
    main(["sweep", str(path), "--dry-run", "--out", str(out)])
    assert "0 of 4 cells would run" in capsys.readouterr().out


def test_bad_key_fails_before_any_cell_runs(tmp_path, capsys):
    spec = {"base": str(_base(tmp_path, MAE)), "grid": {"model.init_args.mask_ratoi": [0.5, 0.9]}}
    path = _write(tmp_path / "bad.yaml", spec)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:")
    assert "model.init_args.mask_ratoi" in err[0] and "bad.yaml" in err[0]
    assert not (tmp_path / "out").exists()


def test_report_writes_plots_for_a_sweep_and_a_run(grid_sweep, capsys):
    _, out, _, _ = grid_sweep
    main(["report", str(out)])
    text = capsys.readouterr().out
    assert "mask_ratio=0.5,proj_drop_rate=0.0,seed=0" in text and "plots:" in text
    assert {"train_loss.png", "val_loss.png"} <= {p.name for p in (out / "plots").glob("*.png")}
    main(["report", str(out / CELLS[0])])
    text = capsys.readouterr().out
    assert "val/loss" in text and str(out / CELLS[0] / "plots" / "loss.png") in text
    assert (out / CELLS[0] / "plots" / "loss.png").stat().st_size > 1000


def _pretrain_then_finetune(directory: Path) -> dict:
    """Stages: the tiny MAE, then a classifier starting from its checkpoint."""
    return {
        "pretrain": {"base": str(_base(directory, MAE))},
        "finetune": {
            "base": str(_base(directory, CLASSIFIER, "cls.yaml")),
            "overrides": {"model.init_args.encoder_ckpt": "${stages.pretrain.ckpt}"},
        },
    }


def test_two_stages_hand_the_checkpoint_on_and_share_the_first(tmp_path):
    # the grid only touches the second stage: both cells read one pretraining run
    spec = {"stages": _pretrain_then_finetune(tmp_path), "seeds": [0]}
    spec["grid"] = {"finetune.model.init_args.lr": [0.001, 0.003]}
    out = tmp_path / "out"
    lines: list[str] = []
    outcome = run_sweep(_write(tmp_path / "two.yaml", spec), out=out, echo=lines.append)
    first, second = outcome.ran
    assert (out / first / "pretrain" / "result.json").is_file()
    assert not (out / second / "pretrain").exists()
    assert any(f"{second} [pretrain]: the same fit as {first}/pretrain" in line for line in lines)
    for cell in (first, second):
        saved = yaml.safe_load((out / cell / "finetune" / "config.yaml").read_text())
        assert saved["model"]["init_args"]["encoder_ckpt"] == str(
            out / first / "pretrain" / "checkpoints" / "last.ckpt"
        )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"pretrain:val/loss", "finetune:val/acc", "finetune:val/loss"} <= set(rows[0])
    assert [float(r["finetune.model.init_args.lr"]) for r in rows] == [0.001, 0.003]
    assert len(rows) == 2 and rows[0]["pretrain:val/loss"] == rows[1]["pretrain:val/loss"] != ""
    assert rows[0]["finetune:val/loss"] != rows[1]["finetune:val/loss"]


def test_report_plots_every_curve_group_with_the_intrinsic_rank(grid_sweep, capsys):
    _, out, _, _ = grid_sweep
    run = out / CELLS[0]
    assert intrinsic_rank(run) == 4 * 2  # TINY_DATA: 4 classes x rank 2
    main(["report", str(run)])
    capsys.readouterr()
    names = {p.name for p in (run / "plots").glob("*.png")}
    assert {"group_train.png", "group_val.png"} <= names
    groups = {
        n.removeprefix("group_").removesuffix(".png") for n in names if n.startswith("group_")
    }
    tags = {t.split("/", 1)[0] for t in event_tags(run) if "/" in t}
    assert groups == tags  # one plot per tag group, none missing
