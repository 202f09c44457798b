"""The feature matrix: every data source x {MAE with every shipped callback, classifier with LoRA,
classifier with GaLore} fits a few steps and one validation through the CLI, and every expected
TensorBoard tag exists with finite values.

Sources (testkit.sources): SyntheticLowRank, an ImageFolder in memory and read from its files,
its streaming shards (litdata) and a local Hugging Face dataset: the same images on every file
source.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.cli import main
from testkit.sources import SOURCES, data_config
from testkit.tiny import TINY_VIT

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings(
        "ignore:.*IterableDataset.*", "ignore:.*sync_dist.*", "ignore:.*num_workers.*"
    ),
]


def _callback(name: str, **init_args) -> dict:
    return {"class_path": f"maskrank.callbacks.{name}", "init_args": init_args}


_MONITOR = _callback(
    "RepresentationRankMonitor",
    every_n_epochs=1,
    probe_size=16,
    lidar={"views": 2, "samples": 8},
)

TASKS: dict[str, dict] = {
    "mae": {
        "model": {
            "class_path": "maskrank.tasks.MAEPretraining",
            "init_args": {
                "vit": {**TINY_VIT, "proj_drop_rate": 0.1},
                "decoder_dim": 32,
                "decoder_depth": 1,
                "decoder_heads": 2,
                "online_probe": True,
            },
        },
        "callbacks": [
            _MONITOR,
            _callback("OnlineKNN", every_n_epochs=1, bank_size=32, probe_size=16, k=5),
            _callback("ReconstructionLogger", every_n_epochs=1, num_images=4),
            _callback("WeightSpectrumMonitor", every_n_steps=2, subspace_k=2),
            _callback("DropoutPenaltyMonitor", every_n_epochs=1, probe_size=16),
            _callback("TrainingCost"),
        ],
        "tags": {
            "train/loss",
            "val/loss",
            "rank/final_cls/effective_rank",
            "rank/final_mean/effective_rank",
            "rank/final_cls/lidar",
            "rank/final_mean/lidar",
            "eval/knn_acc/final_cls",
            "eval/linear_acc/final_mean",
            "eval/online_linear_acc",
            "weights/enc.qkv_mean/effective_rank",
            "updates/enc.b01.fc1/effective_rank",
            "dropout/enc.b00.mlp/penalty",
            "cost/trainable_params",
        },
        "images": {"reconstructions/val", "spectrum_plot/representation"},
    },
    "lora": {
        "model": {
            "class_path": "maskrank.tasks.ImageClassifier",
            "init_args": {
                "vit": TINY_VIT,
                "adaptation": "lora",
                "lora": {"r": 2, "targets": ["qkv", "fc1"]},
            },
        },
        "callbacks": [_MONITOR, _callback("LoRASpectrumMonitor", every_n_steps=1)],
        "tags": {
            "train/loss",
            "val/acc",
            "rank/final_cls/lidar",
            "lora/enc.b00.qkv/effective_rank",
        },
        "images": set(),
    },
    "galore": {
        "model": {
            "class_path": "maskrank.tasks.ImageClassifier",
            "init_args": {
                "vit": TINY_VIT,
                "optimizer": {"name": "galore_adamw", "rank": 4, "update_proj_gap": 1},
            },
        },
        "callbacks": [_MONITOR, _callback("GaLoreMonitor", every_n_steps=1)],
        "tags": {"train/loss", "val/acc", "rank/final_mean/lidar"},
        "tag_prefixes": {"galore/"},
        "images": set(),
    },
}


def _config(tmp_path: Path, task: dict, data: dict) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "cell"},
            },
            "callbacks": task["callbacks"],
        },
        "model": task["model"],
        "data": data,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _scalars(run: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("source", SOURCES)
def test_every_feature_fits_on_every_source(source, task, sources, tmp_path):
    spec = TASKS[task]
    main(["fit", "-c", str(_config(tmp_path, spec, data_config(source, sources)))])
    run = tmp_path / "runs" / "cell" / "version_0"
    scalars = _scalars(run)
    missing = spec["tags"] - scalars.keys()
    for prefix in spec.get("tag_prefixes", ()):
        if not any(tag.startswith(prefix) for tag in scalars):
            missing.add(prefix + "*")
    assert not missing, sorted(missing)
    nonfinite = [tag for tag, series in scalars.items() if not all(map(math.isfinite, series))]
    assert not nonfinite, nonfinite
    if spec["images"]:
        acc = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))), {"images": 0})
        acc.Reload()
        assert spec["images"] <= set(acc.Tags()["images"])
