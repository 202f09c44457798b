"""Resuming from the command line: ``--ckpt_path last`` and user-given checkpoint files.

With the default versioned logger (``runs/<experiment>/version_N/``) every invocation opens a new
``version_N+1`` directory, and Lightning looks for ``last`` in *that* run's ``checkpoints/``, where
there is nothing yet: it warns and trains from scratch. :func:`prepare_ckpt_path` instead resolves
``last`` to the newest ``version_*/checkpoints/last.ckpt`` of the same experiment and makes the
logger reuse that version, so the resumed fit keeps writing events and checkpoints into the run it
continues (TensorBoard drops the events the killed process logged after that checkpoint). Without a
previous ``last.ckpt`` it fails with one line naming the directory searched.

Every checkpoint named on the command line is read with ``weights_only=True`` before Lightning
touches it, so a truncated, foreign or code-carrying file is refused with one line naming it, and a
weights-only file given to ``fit`` is refused before training starts.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.cli import SaveConfigCallback

from maskrank.errors import ConfigError, CorruptFileError, NoCheckpointToResumeError
from maskrank.io.checkpoints import load_checkpoint, state_dict_mismatch

__all__ = [
    "LastCheckpoint",
    "RunConfigSaver",
    "check_model_matches",
    "find_last_checkpoint",
    "prepare_ckpt_path",
]

LAST = "last"
_LEFT_TO_LIGHTNING = ("best", "hpc")  # and "registry:..." (Lightning resolves these itself)
_VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")
_VERSION_DIR = re.compile(r"version_(\d+)")


@dataclass(frozen=True)
class LastCheckpoint:
    """The checkpoint ``last`` stands for, and the logger version whose directory holds it."""

    path: Path
    version: int | str | None  # None: the checkpoint directory does not come from a logger


def _first_logger(trainer: Namespace) -> Any:
    logger = trainer.get("logger")
    if isinstance(logger, list):
        return logger[0] if logger else None
    return logger


def _require(path: Path, version: int | str | None) -> LastCheckpoint:
    if not path.is_file():
        raise NoCheckpointToResumeError(
            f"--ckpt_path last: no checkpoint to resume from: {path} does not exist "
            "(run without --ckpt_path to start, or pass a checkpoint file)"
        )
    return LastCheckpoint(path, version)


def find_last_checkpoint(config: Namespace) -> LastCheckpoint:
    """Where ``--ckpt_path last`` points, for one subcommand's parsed ``config``.

    Looks where ModelCheckpoint writes: ``--checkpoint.dirpath`` if set; else the first logger's
    ``save_dir/name/version/checkpoints`` (with no version set, the highest ``version_N`` that
    holds a ``last.ckpt``); else, without a logger, ``default_root_dir/checkpoints``.

    Raises:
        NoCheckpointToResumeError: nothing to resume (the message names what was searched).
        ConfigError: a logger whose run directories this cannot enumerate.
    """
    dirpath = config.get("checkpoint.dirpath")
    if dirpath:
        return _require(Path(dirpath) / "last.ckpt", None)
    trainer = config.get("trainer") or Namespace()
    root = Path(trainer.get("default_root_dir") or ".")
    logger = _first_logger(trainer)
    if logger is None or logger is False:
        return _require(root / "checkpoints" / "last.ckpt", None)
    class_path = str(logger.get("class_path", "")) if isinstance(logger, Namespace) else ""
    if class_path.rsplit(".", 1)[-1] not in _VERSIONED_LOGGERS:
        raise ConfigError(
            "--ckpt_path last finds the previous run through a TensorBoardLogger or CSVLogger "
            "(trainer.logger) or --checkpoint.dirpath; with this logger, pass the checkpoint file"
        )
    init = logger.get("init_args") or Namespace()
    experiment = Path(init.get("save_dir") or root) / (init.get("name") or "")
    version = init.get("version")
    if version is not None:
        run = experiment / (version if isinstance(version, str) else f"version_{version}")
        return _require(run / "checkpoints" / "last.ckpt", version)
    runs = []
    for run in experiment.glob("version_*"):
        match = _VERSION_DIR.fullmatch(run.name)
        if match and (run / "checkpoints" / "last.ckpt").is_file():
            runs.append((int(match.group(1)), run))
    if not runs:
        raise NoCheckpointToResumeError(
            f"--ckpt_path last: no earlier run to resume: no {experiment}/version_*/checkpoints/"
            "last.ckpt (run without --ckpt_path to start, or pass a checkpoint file)"
        )
    number, run = max(runs)
    return LastCheckpoint(run / "checkpoints" / "last.ckpt", number)


def _first_unsaved_step(ckpt: dict) -> int | None:
    """The first TensorBoard step the run logged after ``ckpt`` was saved.

    Lightning logs a batch's metrics at the number of optimizer steps before it, so the batches
    after a checkpoint at ``global_step`` g log at steps >= g (one optimizer, as every task here).
    """
    step = ckpt.get("global_step")
    return int(step) if isinstance(step, int) else None


def _check_kind(ckpt: dict, path: Path, subcommand: str) -> None:
    """Refuse what Lightning would fail on later with a traceback."""
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CorruptFileError(
            f"checkpoint {path} (--ckpt_path) is not a Lightning checkpoint: it has no state_dict "
            "(to start from bare encoder weights use --model.init_args.encoder_ckpt)"
        )
    if subcommand == "fit" and not ("optimizer_states" in ckpt and "loops" in ckpt):
        raise ConfigError(
            f"checkpoint {path} (--ckpt_path) holds weights only (no optimizer or loop state), "
            "so fit cannot resume from it (to start from its encoder use "
            "--model.init_args.encoder_ckpt)"
        )


def prepare_ckpt_path(config: Namespace, subcommand: str) -> dict | None:
    """Resolve and check ``config.ckpt_path`` in place; returns the checkpoint (tensors mmap'ed).

    ``last`` becomes a file (see :func:`find_last_checkpoint`); for ``fit`` the logger is pointed
    at that run's version and TensorBoard purges the steps logged after the checkpoint. Returns
    None when no checkpoint is given or Lightning resolves the value itself (``best``, ``hpc``,
    ``registry:...``).
    """
    value = config.get("ckpt_path")
    if not value or str(value) in _LEFT_TO_LIGHTNING or str(value).startswith("registry"):
        return None
    last = find_last_checkpoint(config) if str(value) == LAST else None
    path = last.path if last is not None else Path(value)
    ckpt = load_checkpoint(path, flag="--ckpt_path", mmap=True)
    _check_kind(ckpt, path, subcommand)
    config["ckpt_path"] = str(path)
    if subcommand == "fit" and last is not None and last.version is not None:
        logger = _first_logger(config.trainer)
        logger.init_args["version"] = last.version
        if "purge_step" in logger.init_args:  # TensorBoardLogger (SummaryWriter)
            logger.init_args["purge_step"] = _first_unsaved_step(ckpt)
        # ModelCheckpoint warns that the directory it continues is "not empty": that is the point
        run = re.escape(last.path.parent.parent.name)
        warnings.filterwarnings(
            "ignore", message=rf"Checkpoint directory .*{run}.checkpoints exists and is not empty"
        )
    return ckpt


def check_model_matches(model: Any, ckpt: dict, path: str) -> None:
    """Raise ConfigError naming ``path`` if its weights cannot load (strictly) into ``model``."""
    if not getattr(model, "strict_loading", True):
        return
    detail = state_dict_mismatch(model.state_dict(), ckpt["state_dict"])
    if detail:
        raise ConfigError(
            f"checkpoint {path} (--ckpt_path) does not fit the model (another task or "
            f"architecture?): {detail}"
        )


class RunConfigSaver(SaveConfigCallback):
    """Lightning's config saver, except that a fit resumed into its own run directory keeps the
    run's ``config.yaml`` and saves the resuming command's config as ``config.resume-K.yaml``
    (Lightning would refuse to overwrite it and abort). Without a logger there is no run
    directory, and nothing is saved (Lightning would write ``config.yaml`` into the working
    directory and refuse the next run)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not trainer.loggers:
            return  # no run directory to keep it in (--trainer.logger false)
        if not self.already_saved and self.config.get("ckpt_path") and trainer.log_dir:
            run = Path(trainer.log_dir)
            if (run / self.config_filename).exists():
                k = 1
                while (run / f"config.resume-{k}.yaml").exists():
                    k += 1
                self.config_filename = f"config.resume-{k}.yaml"
        super().setup(trainer, pl_module, stage)
