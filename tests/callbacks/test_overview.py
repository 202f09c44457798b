"""TensorBoardOverview: a custom-scalars layout of what the run logs, and only meaningful series."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger

import maskrank.cli.lightning as cli_lightning
from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    GaLoreMonitor,
    LoRASpectrumMonitor,
    RepresentationRankMonitor,
    TensorBoardOverview,
    TrainingCost,
    WeightSpectrumMonitor,
)
from maskrank.callbacks.overview_layout import Chart, build_layout, keep_logged
from maskrank.cli import main
from maskrank.cli.sweep import run_sweep
from maskrank.tasks import ImageClassifier
from testkit.events import event_scalars
from testkit.layout import chart_patterns, event_layouts, unmatched_patterns
from testkit.tiny import TINY_DATA, TINY_VIT, tiny_data, tiny_mae, tiny_mae_config

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"
TAG_BUDGET = 150
# Series that are constant over a run by what they are, each with its reason:
CONSTANT_BY_DESIGN = {
    "hp_metric": "Lightning's placeholder, written once",
    "rank/intrinsic": "the data's rank by construction, drawn as a reference line",
    "val/loss_trivial": "predicting zeros on the same validation images and masks every epoch: the "
    "level val/loss is read against",
}
# Readouts that move in steps, which 32 steps may leave unchanged (over the 15-epoch quickstart
# they move): accuracies on the 256-image probe set (steps of 1/256), and the energy ranks of the
# raw (uncentred) features, 1 while their first direction (about the mean) holds 99 % of the energy.
QUANTISED = re.compile(r"^(?:eval/.+_acc(?:/.+)?|rank/final_(?:cls|mean)/energy_rank_0\.99?)$")


# Every logged tag of these families must be on the page.
ANSWERS = re.compile(
    r"^(?:(?:train|val)/loss(?:_trivial)?|eval/.+|rank/final_(?:cls|mean)/effective_rank"
    r"|rank/block\d+_(?:cls|mean)/effective_rank|rank/intrinsic|updates/.+|weights/.+|lr-.+)$"
)


def _run(run_root: Path) -> Path:
    (run,) = sorted(run_root.glob("version_*"))
    return run


@pytest.mark.slow
def test_short_quickstart_overview_matches_its_tags_within_budget(tmp_path, monkeypatch):
    cfg = yaml.safe_load(QUICKSTART.read_text())
    # Settings that change costs, not scalar tags: 32 steps measure the weights 8 times; no
    # pictures.
    cheaper = {
        "WeightSpectrumMonitor": {"every_n_steps": 4},
        "RepresentationRankMonitor": {"plot": False, "histograms": False},
    }
    for callback in cfg["trainer"]["callbacks"]:
        callback.setdefault("init_args", {}).update(
            cheaper.get(callback["class_path"].rsplit(".", 1)[-1], {})
        )
    cfg["trainer"]["callbacks"].append({"class_path": "maskrank.callbacks.TensorBoardOverview"})
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    overrides = {
        "trainer.max_epochs": 2,
        "trainer.log_every_n_steps": 2,  # several points of every per-step series
        "trainer.enable_checkpointing": False,
        "trainer.enable_progress_bar": False,
        "trainer.num_sanity_val_steps": 0,
        "threads": 1,
        "data.init_args.train_size": 1024,
        "data.init_args.val_size": 256,
        "data.init_args.batch_size": 64,
    }
    args = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    main(["fit", "-c", "quickstart.yaml", *args])
    run = _run(tmp_path / "runs" / "quickstart")
    scalars = event_scalars(run)
    (layout,) = event_layouts(run)
    assert unmatched_patterns(layout, set(scalars)) == []
    drawn = [p for patterns in chart_patterns(layout).values() for p in patterns]
    answers = [t for t in scalars if ANSWERS.match(t)]  # the three questions' series
    # losses 3, eval 5, final ranks 2 + intrinsic 1, blocks 8, updates 72, weights 8, lr 3
    assert len(answers) == 102
    assert [t for t in answers if not any(re.match(p, t) for p in drawn)] == []
    constant = {tag for tag, values in scalars.items() if len(set(values)) == 1}
    unexplained = constant - set(CONSTANT_BY_DESIGN)
    assert {t for t in unexplained if not QUANTISED.match(t)} == set(), sorted(constant)
    assert len(scalars) <= TAG_BUDGET, len(scalars)
    assert scalars["rank/intrinsic"][0] == 40.0  # 10 classes x rank 4
    assert not any(tag.startswith(("dropout/", "grads/")) for tag in scalars)  # p = 0; all_metrics
    pages = [(c.title, c.closed, len(c.chart)) for c in layout.category]
    assert pages == [
        ("overview", False, 3),
        ("per block", True, 4),  # vit_nano_32: 4 blocks
        ("weights and updates", True, 13),
        ("optimiser", True, 1),
    ]


def _fit(make_trainer, model, monitors, **kw):
    overview = TensorBoardOverview()
    trainer = make_trainer([*monitors, overview], max_epochs=2, **kw)
    trainer.fit(model, datamodule=tiny_data())
    return overview, trainer


@pytest.mark.parametrize("depth, drop", [(2, 0.1), (3, 0.0)])
def test_layout_adapts_to_depth_and_dropout(make_trainer, tmp_path, depth, drop):
    monitors = [
        RepresentationRankMonitor(every_n_epochs=1, probe_size=16, histograms=False, plot=False),
        WeightSpectrumMonitor(every_n_steps=2),
        DropoutPenaltyMonitor(probe_size=16),
    ]
    model = tiny_mae(proj_drop_rate=drop, vit={"depth": depth})
    overview = TensorBoardOverview()
    second, _ = _fit(make_trainer, model, [overview, *monitors])
    assert second.charts == []  # listed twice (config and always-on CLI): the first one writes
    run = _run(tmp_path / "runs" / "exp")
    scalars = event_scalars(run)
    (layout,) = event_layouts(run)
    assert layout == build_layout(overview.charts)
    assert unmatched_patterns(layout, set(scalars)) == []
    charts = chart_patterns(layout)
    blocks = sorted(title for category, title in charts if category == "per block")
    assert [t.split(":")[0] for t in blocks] == [f"block {i:02d}" for i in range(depth)]
    categories = [c.title for c in layout.category]
    assert ("dropout" in categories) == (drop > 0)
    assert any(t.startswith("dropout/") for t in scalars) == (drop > 0)
    assert scalars["rank/intrinsic"] == [8.0, 8.0]  # TINY_DATA: 4 classes x rank 2, per epoch


@pytest.mark.parametrize("arm", ["lora", "galore"])
def test_adaptation_and_optimiser_charts_match_their_monitors(make_trainer, tmp_path, arm):
    spec = {"lora": {"adaptation": "lora", "lora": {"r": 4, "targets": ["qkv", "fc1"]}}}
    spec["galore"] = {"optimizer": {"name": "galore_adamw", "rank": 4, "update_proj_gap": 2}}
    model = ImageClassifier(vit=TINY_VIT, num_classes=4, img_size=32, **spec[arm])
    monitor = LoRASpectrumMonitor(every_n_steps=2) if arm == "lora" else GaLoreMonitor(2)
    callbacks = [monitor, TrainingCost(), LearningRateMonitor("step")]
    _fit(make_trainer, model, callbacks, limit_val_batches=0)
    run = _run(tmp_path / "runs" / "exp")
    (layout,) = event_layouts(run)
    assert unmatched_patterns(layout, set(event_scalars(run))) == []
    categories = [c.title for c in layout.category]
    charts = chart_patterns(layout)
    assert ("optimiser", "learning rate") in charts
    assert ("optimiser", "seconds per training step") in charts
    if arm == "lora":
        lora = [title for category, title in charts if category == "adaptation"]
        assert [t.split(":")[0] for t in lora[:2]] == ["qkv", "fc1"]  # the adapted types only
        assert len(lora) == 3  # + the energy rank; not Deep LoRA's factors
    else:
        galore = [t for c, t in charts if c == "optimiser" and t.startswith("GaLore")]
        assert len(galore) == 2 and "adaptation" not in categories
    assert categories[0] == "overview"  # train/loss, train/acc


def test_layout_keeps_only_charts_with_logged_tags_and_merges_by_title():
    charts = [
        Chart("optimiser", "b", (r"^lr-.+$",), order=1),
        Chart("overview", "accuracy", (r"^val/acc$", r"^eval/knn$"), order=1),
        Chart("overview", "loss", (r"^train/loss$", r"^val/loss$"), order=0),
        Chart("overview", "accuracy", (r"^eval/knn$", r"^eval/lin$")),
        Chart("dropout", "penalty", (r"^dropout/x$",)),
    ]
    kept = keep_logged(charts, ["lr-AdamW", "val/acc", "eval/knn", "eval/lin", "train/loss"])
    layout = build_layout(kept)
    assert [(c.title, c.closed) for c in layout.category] == [
        ("overview", False),
        ("optimiser", True),
    ]
    assert chart_patterns(layout) == {
        ("overview", "accuracy"): [r"^val/acc$", r"^eval/knn$", r"^eval/lin$"],
        ("overview", "loss"): [r"^train/loss$"],
        ("optimiser", "b"): [r"^lr-.+$"],
    }
    assert [c.title for c in layout.category[0].chart] == ["accuracy", "loss"]  # order 0 first
    assert build_layout(kept).SerializeToString() == layout.SerializeToString()
    with pytest.raises(ValueError, match="not anchored"):
        Chart("overview", "loss", ("train/loss",))


def test_without_a_tensorboard_logger_it_writes_nothing(tmp_path):
    for logger in (False, CSVLogger(tmp_path / "csv")):
        overview = TensorBoardOverview()
        trainer = pl.Trainer(
            max_epochs=1,
            logger=logger,
            callbacks=[overview],
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(tiny_mae(), datamodule=tiny_data())
        assert overview.charts == []
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("enabled", [True, False])
def test_always_on_in_the_cli_as_registered_in_always_on(tmp_path, monkeypatch, enabled):
    # the registration the CLI gets (maskrank/cli/lightning.py); idempotent once it is there
    monkeypatch.setitem(cli_lightning.ALWAYS_ON, "overview", TensorBoardOverview)
    trainer = {
        "max_epochs": 1,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "logger": {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(tmp_path / "runs"), "name": "exp"},
        },
    }
    config = {"trainer": trainer, "model": tiny_mae_config(), "data": TINY_DATA, "threads": 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "-c", str(tmp_path / "config.yaml"), "--overview.enabled", str(enabled).lower()])
    layouts = event_layouts(_run(tmp_path / "runs" / "exp"))
    assert len(layouts) == int(enabled)
    if enabled:
        assert ("overview", "loss (val/loss_trivial: predicting zeros)") in chart_patterns(
            layouts[0]
        )


@pytest.mark.slow
def test_sweep_cells_of_one_shape_write_the_same_layout(tmp_path):
    callbacks = [
        {
            "class_path": "maskrank.callbacks.RepresentationRankMonitor",
            "init_args": {"every_n_epochs": 1, "probe_size": 16, "plot": False},
        },
        {
            "class_path": "maskrank.callbacks.WeightSpectrumMonitor",
            "init_args": {"every_n_steps": 2},
        },
        {"class_path": "maskrank.callbacks.TensorBoardOverview"},
    ]
    trainer = {
        "max_epochs": 2,
        "log_every_n_steps": 1,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    base = {"trainer": trainer, "model": tiny_mae_config(), "data": TINY_DATA, "threads": 1}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"model.init_args.mask_ratio": [0.5, 0.75]}
    spec = {"base": str(tmp_path / "base.yaml"), "grid": grid, "seeds": [0]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    outcome = run_sweep(tmp_path / "sweep.yaml", out=tmp_path / "out", echo=lambda _: None)
    assert len(outcome.ran) == 2
    layouts = [event_layouts(tmp_path / "out" / cell) for cell in outcome.ran]
    assert all(len(found) == 1 for found in layouts)
    first, second = (found[0] for found in layouts)
    assert first.SerializeToString() == second.SerializeToString()
    assert (
        "per block",
        f"block {TINY_VIT['depth'] - 1:02d}: effective rank of the CLS and mean token",
    ) in chart_patterns(first)
