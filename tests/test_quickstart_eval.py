"""The shipped pretraining configs log the online evaluation (eval/ curves) to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maskrank.cli import main
from testkit.events import event_tags

CONFIGS = Path(__file__).parent.parent / "configs"
EVAL_TAGS = {
    "eval/knn_acc/final_cls",
    "eval/knn_acc/final_mean",
    "eval/linear_acc/final_cls",
    "eval/linear_acc/final_mean",
    "eval/online_linear_acc",
}


@pytest.mark.slow
def test_short_quickstart_run_shows_eval_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints and runs/ land here
    main(
        [
            "fit",
            "-c",
            str(CONFIGS / "quickstart.yaml"),
            "--trainer.max_epochs",
            "1",
            "--data.init_args.train_size",
            "256",
            "--data.init_args.val_size",
            "128",
            "--data.init_args.batch_size",
            "64",
        ]
    )
    run = tmp_path / "runs" / "quickstart" / "version_0"
    scalars = event_tags(run)
    assert EVAL_TAGS <= scalars, sorted(scalars)
    assert "rank/final_cls/effective_rank" in scalars


def test_cifar_pretraining_config_enables_the_online_evaluation():
    cfg = yaml.safe_load((CONFIGS / "pretrain" / "mae_vit_tiny_cifar10.yaml").read_text())
    callbacks = {c["class_path"]: c.get("init_args", {}) for c in cfg["trainer"]["callbacks"]}
    knn = callbacks["maskrank.callbacks.OnlineKNN"]
    monitor = callbacks["maskrank.callbacks.RepresentationRankMonitor"]
    assert knn["every_n_epochs"] == monitor["every_n_epochs"]  # one shared probe pass
    assert cfg["model"]["init_args"]["online_probe"] is True
