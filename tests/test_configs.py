"""Every shipped config parses, and every one builds its model, data, callbacks and optimizer and
trains one step.

The one-step fits keep each config as it is except for its sizes: the tiny ViT (testkit.tiny), a
few images per batch, one step. They run in a fresh working directory holding generated data where
the configs look for it (``data/cifar-10-batches-py``, ``data/images``, ``data/imagenet``), so the
configs' relative paths resolve as in a checkout: ``runs/<name>`` for the logs and, for the
stage-2 configs, ``last:mae_vit_tiny_cifar10`` or ``runs/mae_vit_tiny_cifar10/version_0/...``,
the encoder of a one-step run of ``configs/pretrain/mae_vit_tiny_cifar10.yaml`` made once per
session. A sweep's first cell trains its last stage for one step the same way, with the session's
tiny MAE standing in for the checkpoint of an earlier stage (the quickstart, trained above).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from maskrank.cli import main
from maskrank.io.checkpoints import encoder_state_dict
from maskrank.sweep.load import load_sweep
from maskrank.sweep.plan import plan
from testkit.cifar import write_cifar10
from testkit.tiny import TINY_MAE, TINY_VIT

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "sweeps" not in p.parts)
SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))
PRETRAIN = CONFIG_DIR / "pretrain" / "mae_vit_tiny_cifar10.yaml"
PRETRAIN_SEED = 1  # not the stage-2 configs' seed 0: a loaded encoder differs from a fresh one

# per data module: the init_args that shrink it (every other one is the config's)
TINY_DATA_ARGS: dict[str, dict[str, Any]] = {
    "SyntheticLowRank": {"train_size": 64, "val_size": 32, "batch_size": 16},
    "CIFAR10DataModule": {"batch_size": 8},  # even: the fine-tune configs' mixup pairs images
    "ImageFolderDataModule": {"image_size": 32, "batch_size": 16, "num_workers": 0},
}


def _config_id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def tiny_flags(config: dict[str, Any]) -> list[str]:
    """Flags shrinking ``config`` (a parsed config file) to one step of the tiny ViT."""
    flags = {
        "trainer.max_steps": 1,
        "trainer.limit_val_batches": 1,  # the sanity check runs one validation step
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    }
    flags |= {f"model.init_args.vit.{k}": v for k, v in TINY_VIT.items()}
    if config["model"]["class_path"].endswith("MAEPretraining"):
        flags |= {f"model.init_args.{k}": v for k, v in TINY_MAE.items()}
    data = config["data"]["class_path"].rpartition(".")[2]
    flags |= {f"data.init_args.{k}": v for k, v in TINY_DATA_ARGS[data].items()}
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in flags.items()]


def _link_data(cwd: Path, cifar: Path, folder: Path) -> None:
    """``cwd/data`` with the sources under the names the configs read (a real folder: caches
    written under ``data/`` stay in ``cwd``)."""
    data = cwd / "data"
    data.mkdir()
    (data / "cifar-10-batches-py").symlink_to(cifar / "cifar-10-batches-py")
    (data / "images").symlink_to(folder)
    (data / "imagenet").symlink_to(folder)


@pytest.fixture(scope="session")
def cifar(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, cifar, sources) -> Iterator[Path]:
    """``runs/mae_vit_tiny_cifar10`` of a one-step run of the stage-1 config (seed 1)."""
    cwd = tmp_path_factory.mktemp("pretrain")
    _link_data(cwd, cifar, sources.folder)
    config = yaml.safe_load(PRETRAIN.read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("PL_GLOBAL_SEED", raising=False)
        main(
            ["fit", "-c", str(PRETRAIN), *tiny_flags(config), f"--seed_everything={PRETRAIN_SEED}"]
        )
    yield cwd / "runs" / "mae_vit_tiny_cifar10"


def _assert_settings_kept(config: Any, stored: Any, where: str) -> None:
    """Every setting of ``config`` (the file's ``model.init_args``) is in the trained model's
    hyperparameters with its value: none was dropped or replaced on the way."""
    if isinstance(config, dict):
        if isinstance(stored, list) and len(stored) == 1:  # one spec of a list (dropout: [spec])
            stored = stored[0]
        assert isinstance(stored, dict), (where, stored)
        for key, value in config.items():
            assert key in stored, f"{where}.{key} missing from the checkpoint's hyperparameters"
            _assert_settings_kept(value, stored[key], f"{where}.{key}")
    elif isinstance(config, list):
        assert list(stored) == config, (where, stored, config)
    else:
        assert stored == config, (where, stored, config)


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_started_from(stage1: Path, stage2: Path) -> None:
    """The stage-2 run in ``stage2`` started from the encoder of the stage-1 run in ``stage1``:
    its patch embedding (which no adaptation adapts) is the stage-1 one, moved by at most one
    AdamW step (at most the lr, <= 3e-3 in every shipped config); a fresh draw differs by ~0.1."""
    key = "patch_embed.proj.weight"
    start = encoder_state_dict(stage1 / "checkpoints" / "last.ckpt")[key]
    trained = encoder_state_dict(stage2 / "checkpoints" / "last.ckpt")[key]
    assert (trained - start).abs().max() < 1e-2


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "vit_tiny_cifar10.yaml", "mae_vit_tiny_cifar10.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("maskrank.tasks.")
    assert resolved["data"]["class_path"].startswith("maskrank.data.")


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_trains_one_step(config, tmp_path, monkeypatch, cifar, sources, pretrained):
    raw = yaml.safe_load(config.read_text())
    init_args = raw["model"]["init_args"]
    if config == PRETRAIN:  # the session's stage-1 run is this config's one-step fit
        run_dir = pretrained / "version_0"
    else:
        monkeypatch.chdir(tmp_path)
        _link_data(tmp_path, cifar, sources.folder)
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / "mae_vit_tiny_cifar10").symlink_to(pretrained)
        main(["fit", "-c", str(config), *tiny_flags(raw)])
        run_dir = tmp_path / "runs" / raw["trainer"]["logger"]["init_args"]["name"] / "version_0"
    ckpt = _checkpoint(run_dir)
    assert ckpt["global_step"] == 1
    # encoder_ckpt is stored resolved (last:<experiment> -> the file): checked below
    skip = ("vit", "encoder_ckpt", *TINY_MAE)
    settings = {k: v for k, v in init_args.items() if k not in skip}
    _assert_settings_kept(settings, ckpt["hyper_parameters"], "model.init_args")
    if init_args.get("encoder_ckpt"):
        ckpt_file = Path(ckpt["hyper_parameters"]["encoder_ckpt"])  # last:<name> resolved
        assert ckpt_file.parts[-4:-2] == ("mae_vit_tiny_cifar10", "version_0")
        _assert_started_from(pretrained / "version_0", run_dir)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_validates_every_cell(sweep, tmp_path, capsys):
    # --dry-run parses every stage of every cell through the CLI parser and runs nothing
    main(["sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "sweep")])
    assert "nothing was run" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_first_cell_trains_one_step(sweep, tmp_path, monkeypatch, pretrained):
    monkeypatch.chdir(REPO)  # sweep files name their base configs relative to the checkout
    _, runs = plan(load_sweep(sweep), tmp_path)[0]
    # an earlier stage is the quickstart with a few overrides (its own one-step fit is above):
    # its checkpoint is stood in for by the session's tiny MAE, which has the same encoder
    *earlier, run = runs
    for stage in earlier:
        (stage.run_dir / "checkpoints").mkdir(parents=True)
        (stage.run_dir / "checkpoints" / "last.ckpt").symlink_to(
            pretrained / "version_0" / "checkpoints" / "last.ckpt"
        )
    base = yaml.safe_load(Path(run.stage.base).read_text())
    main([*run.args(), *tiny_flags(base)])
    ckpt = _checkpoint(run.run_dir)
    assert ckpt["global_step"] == 1
    for key, value, _ in run.overrides:  # the cell's model settings reached the model
        if key.startswith("model.init_args.") and not key.endswith("encoder_ckpt"):
            stored: Any = ckpt["hyper_parameters"]
            for part in key.removeprefix("model.init_args.").split("."):
                stored = stored[part]
            _assert_settings_kept(value, stored, key)
    if earlier:
        _assert_started_from(earlier[-1].run_dir, run.run_dir)
