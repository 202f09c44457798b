"""The shipped pretraining configs log the online evaluation (eval/ curves) to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from maskrank.cli import main
from maskrank.data import SyntheticLowRank
from maskrank.metrics import linear_probe_accuracy
from testkit.events import event_tags
from testkit.tiny import tiny_mae

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


def test_quickstart_online_probe_follows_the_bank_probe(single_thread):
    """The quickstart's probe settings, on its kind of data, read what OnlineKNN's converged bank
    probe reads. The encoder is held still (lr 1e-9), so the two see the same features and the
    test isolates the probe: what it reads and how fast it learns."""
    cfg = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    model_args, data_args = cfg["model"]["init_args"], cfg["data"]["init_args"]
    data = SyntheticLowRank(
        num_classes=data_args["num_classes"],
        class_rank=data_args["class_rank"],
        train_size=1024,
        val_size=256,
        batch_size=64,
        augment=data_args.get("augment", True),
    )
    probe = {k: v for k, v in model_args.items() if k.startswith("probe_")}
    model = tiny_mae(online_probe=True, num_classes=data_args["num_classes"], lr=1e-9, **probe)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    online = float(trainer.callback_metrics["eval/online_linear_acc"])
    model.eval()
    with torch.no_grad():
        (bank, bank_labels), (held, held_labels) = (
            data.probe_batch(1024, "train"),
            data.probe_batch(256, "heldout"),
        )
        bank_cls = model.encode(data.normalize(bank)).cls
        held_cls = model.encode(data.normalize(held)).cls
    offline = linear_probe_accuracy(bank_cls, bank_labels, held_cls, held_labels)
    assert offline > 0.5  # the features do hold the classes (chance: 0.1)
    # the masked-pass probe of 25 % of the patches reads about 0.2 here, a per-coordinate
    # BatchNorm probe 0.73, against 0.85 offline
    assert online >= offline - 0.05, (online, offline)
