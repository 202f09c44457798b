"""End-to-end CLI runs on tiny generated data (no network, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import maskrank
from maskrank.cli import main
from maskrank.cli.lightning import build_cli
from testkit.events import event_tags
from testkit.tiny import TINY_DATA, TINY_VIT


def _config(tmp_path: Path, model: dict, **trainer) -> Path:
    cfg = {
        "trainer": {
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "exp"},
            },
            **trainer,
        },
        "model": model,
        "data": TINY_DATA,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _classifier() -> dict:
    return {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}


def test_fit_writes_one_run_directory(tmp_path):
    main(["fit", "-c", str(_config(tmp_path, _classifier()))])
    run = tmp_path / "runs" / "exp" / "version_0"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    tags = event_tags(run)
    assert {"train/loss", "val/loss", "val/acc"} <= tags
    assert any(t.startswith("lr-AdamW") for t in tags)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # the data -> model links are resolved into the saved config
    assert saved["data"]["init_args"]["num_classes"] == 4


def test_pretrain_fit_logs_reconstructions(tmp_path):
    model = {
        "class_path": "maskrank.tasks.MAEPretraining",
        "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    }
    callbacks = [
        {"class_path": "maskrank.callbacks.ReconstructionLogger", "init_args": {"num_images": 4}}
    ]
    main(["fit", "-c", str(_config(tmp_path, model, callbacks=callbacks))])
    tags = event_tags(tmp_path / "runs" / "exp" / "version_0", kind="images")
    assert "reconstructions/val" in tags


def test_print_config_round_trip(tmp_path, capsys):
    cfg = _config(tmp_path, _classifier())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--print_config"])
    assert exit_.value.code in (0, None)
    first = capsys.readouterr().out
    printed = tmp_path / "printed.yaml"
    printed.write_text(first)
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(printed), "--print_config"])
    assert capsys.readouterr().out == first
    # and the printed config runs as is, building the same model
    cli = build_cli(["fit", "-c", str(printed), "--trainer.max_steps", "1"])
    assert cli.model.hparams["vit"]["embed_dim"] == 64
    assert cli.trainer.global_step == 1


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    args = [
        "fit",
        "--model",
        "maskrank.tasks.ImageClassifier",
        "--data",
        "maskrank.data.CIFAR10DataModule",
        "--data.root",
        str(tmp_path / "nodata"),
        "--trainer.logger",
        "false",
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:")
    assert "nodata" in err[0] and "--data.download true" in err[0]


def test_bad_patch_size_names_the_flag(tmp_path, capsys):
    cfg = _config(tmp_path, _classifier())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--model.init_args.vit.patch_size", "5"])
    assert exit_.value.code == 2
    assert "patch_size" in capsys.readouterr().err


def test_unknown_key_fails_before_training(tmp_path, capsys):
    cfg = _config(tmp_path, _classifier())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--model.init_args.learning_rate", "0.1"])
    assert exit_.value.code == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_python_dash_m_is_the_same_command():
    out = subprocess.run(
        [sys.executable, "-m", "maskrank", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "fit" in out and "validate" in out and "predict" in out


def test_pretrain_checkpoint_validates_and_resumes(tmp_path):
    model = {
        "class_path": "maskrank.tasks.MAEPretraining",
        "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    }
    cfg = str(_config(tmp_path, model))
    main(["fit", "-c", cfg])
    last = tmp_path / "runs" / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    # LightningCLI re-instantiates the model from the checkpoint's hyperparameters
    cli = build_cli(["validate", "-c", cfg, "--ckpt_path", str(last)])
    assert "val/loss" in cli.trainer.callback_metrics
    cli = build_cli(["fit", "-c", cfg, "--ckpt_path", str(last), "--trainer.max_epochs", "2"])
    assert cli.trainer.current_epoch == 2


def test_help_lists_every_command_and_version_answers(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    usage = out.splitlines()[0]
    for command in ("fit", "validate", "test", "predict", "sweep", "report", "lora-rank", "export"):
        assert command in usage and f"\n  {command} " in out
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"maskrank {maskrank.__version__}"


def test_help_does_not_import_torch():
    code = (
        "import sys; from maskrank.cli import main; main(['--help']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


@pytest.mark.parametrize(
    "switch",
    [
        ["--trainer.logger", "false"],
        ["--trainer.enable_checkpointing", "false"],
        ["--trainer.enable_progress_bar", "false"],
        ["--trainer.enable_model_summary", "false"],
    ],
)
def test_lightning_switches_turn_facilities_off(tmp_path, monkeypatch, switch):
    monkeypatch.chdir(tmp_path)  # without a logger, Lightning writes under the working directory
    config = _config(tmp_path, _classifier(), max_steps=2, limit_val_batches=1)
    main(["fit", "-c", str(config), *switch])
    ckpts = list(tmp_path.rglob("*.ckpt"))
    if switch[0] == "--trainer.enable_checkpointing":
        assert not ckpts
    else:
        assert ckpts
    if switch[0] == "--trainer.logger":
        assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_fit_that_fails_before_its_first_step_leaves_no_run_directory(tmp_path, capsys):
    data = {**TINY_DATA, "init_args": {**TINY_DATA["init_args"], "batch_size": 1000}}
    config = _config(tmp_path, _classifier())
    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = data
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(config)])
    assert "batch_size 1000" in capsys.readouterr().err
    assert not list((tmp_path / "runs" / "exp").glob("version_*"))
    main(["fit", "-c", str(_config(tmp_path, _classifier()))])  # the next good run is version_0
    assert (tmp_path / "runs" / "exp" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_encoder_ckpt_last_names_the_newest_run_of_an_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mae = {
        "class_path": "maskrank.tasks.MAEPretraining",
        "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    }
    config = _config(tmp_path, mae, max_steps=1, limit_val_batches=0)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["logger"]["init_args"] = {"save_dir": "runs", "name": "stage1"}
    config.write_text(yaml.safe_dump(cfg))
    main(["fit", "-c", str(config)])
    main(["fit", "-c", str(config)])  # version_1 is the newest
    cli = build_cli(
        [
            "-c",
            str(_config(tmp_path, _classifier())),
            "--model.init_args.encoder_ckpt",
            "last:stage1",
        ],
        run=False,
    )
    newest = tmp_path / "runs" / "stage1" / "version_1" / "checkpoints" / "last.ckpt"
    assert Path(cli.model.hparams.encoder_ckpt).resolve() == newest.resolve()
