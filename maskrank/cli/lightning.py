"""The ``maskrank`` command: a LightningCLI over maskrank's tasks and datamodules.

    maskrank fit -c configs/quickstart.yaml
    maskrank fit -c configs/supervised/vit_tiny_cifar10.yaml --trainer.max_epochs 5
    maskrank fit --print_config -c configs/quickstart.yaml > my.yaml

Model and data are chosen in subclass mode (``--model ImageClassifier``, ``--data SyntheticLowRank``
or full ``class_path`` entries in YAML); configs are parsed in omegaconf mode, so they can
interpolate (``${data.init_args.image_size}``). Every run writes its TensorBoard events, the resolved
``config.yaml`` and ``checkpoints/`` (``last.ckpt`` and the best by ``val/loss``) under
``runs/<experiment>/version_N/``, where ``<experiment>`` is ``trainer.logger.init_args.name``.

Reliability defaults (see README "Reliability"): ``--ckpt_path last`` continues the newest run of the
experiment in its own directory (:mod:`maskrank.io.resume`), checkpoints are written atomically
(:mod:`maskrank.io.checkpoint_io`) with the RNG state and the position in the epoch, so the resumed fit
ends with the weights of an uninterrupted one, a user-given checkpoint is checked before Lightning
reads it, and ``--nan_guard.*`` (:class:`~maskrank.callbacks.NonFiniteGuard`) stops a fit before a
NaN/inf loss reaches the weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

import maskrank.data  # noqa: F401  (registers the datamodules for --data NAME)
import maskrank.tasks  # noqa: F401  (registers the tasks for --model NAME)
from maskrank.callbacks import NonFiniteGuard, RngStateCheckpoint, TensorBoardOverview
from maskrank.callbacks.predictions import PredictionWriter
from maskrank.cli.commands import commands_help
from maskrank.cli.machine import configure_threads, warn_ignored_root_dir
from maskrank.cli.summary import report_run
from maskrank.errors import (
    ConfigError,
    CorruptFileError,
    MaskRankError,
    MissingFileError,
    user_error_in,
)
from maskrank.io.checkpoint_io import AtomicCheckpointIO
from maskrank.io.resume import RunConfigSaver, check_model_matches, prepare_ckpt_path
from maskrank.io.run_dir import FailedRunCleanup

ALWAYS_ON = {
    "nan_guard": NonFiniteGuard,
    "checkpoint": ModelCheckpoint,
    "lr_monitor": LearningRateMonitor,
    "predictions": PredictionWriter,  # predict only: writes <run dir>/predictions.pt
    "overview": TensorBoardOverview,  # fit with a logger: the custom-scalars overview layout
}

DEFAULT_LOGGER = {
    "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default"},
}


class TrainerSettingError(MaskRankError):
    """A Trainer setting this machine or this Lightning cannot honour."""


def _facility_on(key: str, trainer_config: dict[str, Any], subcommand: str | None = None) -> bool:
    """Whether the always-on callback ``key`` has its Trainer facility switched on."""
    if key == "predictions":
        return subcommand == "predict"
    if key == "checkpoint":
        return trainer_config.get("enable_checkpointing") is not False
    if key == "lr_monitor":
        return trainer_config.get("logger") not in (False, None, [])
    if key == "overview":
        return subcommand == "fit" and trainer_config.get("logger") not in (False, None, [])
    return True


class MaskRankCLI(LightningCLI):
    """LightningCLI with maskrank's defaults: run directories, checkpoints and linked arguments."""

    _ckpt: dict | None = None  # the checked --ckpt_path checkpoint (tensors mmap'ed), if any

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always-on callbacks, configurable as --checkpoint.*, --lr_monitor.*, --nan_guard.*.
        # They are built in instantiate_trainer, each only when the Trainer facility it serves
        # is on (--trainer.enable_checkpointing false drops the checkpoint callback, a Trainer
        # without a logger the learning-rate monitor), so Lightning's own switches keep working.
        for key, callback in ALWAYS_ON.items():
            parser.add_class_arguments(callback, key, instantiate=False, sub_configs=True)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "lr_monitor.logging_interval": "step",
            }
        )
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="intra-op CPU threads per process (default: the cores this process may use, "
            "divided by the processes of this run on the machine)",
        )
        # Values the model must agree on with the data come from the instantiated datamodule and
        # are never typed twice: a value given under model.init_args is replaced by the data's.
        parser.link_arguments(
            "data", "model.init_args.num_classes", self._num_classes, apply_on="instantiate"
        )
        for source, target in (
            ("data.image_size", "model.init_args.img_size"),
            ("data.in_chans", "model.init_args.in_chans"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")

    _data: Any = None  # the instantiated datamodule, once the model's links read it

    def _num_classes(self, data: Any) -> int:
        """``data.num_classes`` for the model; keeps the datamodule to explain a bad count."""
        self._data = data
        return data.num_classes

    def instantiate_classes(self) -> None:
        """Instantiate; a class count the model refuses is explained by the datamodule's
        ``describe_classes()`` (e.g. the image folder it found them in), where it has one."""
        try:
            super().instantiate_classes()
        except Exception as err:
            user_error = user_error_in(err)
            describe = getattr(self._data, "describe_classes", None)
            if isinstance(user_error, ConfigError) and user_error.field == "num_classes":
                if describe is not None:
                    raise ConfigError(f"{user_error}; {describe()}") from None
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve ``--ckpt_path last`` and check a given checkpoint file.

        Runs before LightningCLI reads the checkpoint's hyperparameters, so a truncated or unsafe
        file is refused here, with one line naming it, instead of failing inside torch.load.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._ckpt = prepare_ckpt_path(self.config[subcommand], subcommand)

    def _section(self, key: str) -> Any:
        """The instantiated config entry ``key`` of the running subcommand."""
        return self._get(self.config_init, key, default=None)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The configured Trainer, with the always-on callbacks its switches allow, atomic
        checkpoint writes, RNG state in checkpoints and the per-process thread count.

        ``AtomicCheckpointIO`` is added unless ``trainer.plugins`` already holds a CheckpointIO.
        A Trainer setting this machine cannot honour (``--trainer.accelerator gpu`` without a
        GPU, ...) ends the command with Lightning's explanation in one line.
        """
        trainer_config = self._section("trainer") or {}
        plugins = trainer_config.get("plugins")
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        plugins = [p for p in plugins if p is not None]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if self.subcommand != "predict" and self._section("predictions").reconstructions:
            rank_zero_warn(
                f"--predictions.reconstructions is for `maskrank predict`; `{self.subcommand}` "
                "ignores it"
            )
        for key, callback in ALWAYS_ON.items():
            if _facility_on(key, trainer_config, self.subcommand):
                callbacks.append(callback(**self._section(key).as_dict()))
        accelerator = str(trainer_config.get("accelerator", "auto"))
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise TrainerSettingError(
                f"--trainer.accelerator {accelerator}: this machine has no GPU that torch can use "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                "use --trainer.accelerator cpu or auto"
            )
        configure_threads(self._section("threads"), trainer_config)
        warn_ignored_root_dir(trainer_config)
        try:
            trainer = super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)
        except MisconfigurationException as err:
            raise TrainerSettingError(f"trainer: {err}") from None
        if not any(isinstance(c, RngStateCheckpoint) for c in trainer.callbacks):
            trainer.callbacks.append(RngStateCheckpoint())
        if trainer.loggers and trainer.log_dir is not None:
            trainer.callbacks.append(FailedRunCleanup(trainer.log_dir))
        return trainer

    def _check_ckpt_fits_model(self) -> None:
        """One clear line instead of Lightning's load_state_dict traceback; frees the checkpoint."""
        ckpt, self._ckpt = self._ckpt, None
        if ckpt is not None:
            check_model_matches(self.model, ckpt, self.config[self.subcommand]["ckpt_path"])

    def before_fit(self) -> None:
        self._check_ckpt_fits_model()

    def before_validate(self) -> None:
        self._check_ckpt_fits_model()

    def before_test(self) -> None:
        self._check_ckpt_fits_model()

    def before_predict(self) -> None:
        self._check_ckpt_fits_model()

    # The end of fit, validate and test: the run's summary, printed and written as
    # summary.json / summary_<command>.json into the run directory (maskrank.cli.summary).
    def after_fit(self) -> None:
        report_run(self.trainer, "fit")

    def after_validate(self) -> None:
        report_run(self.trainer, "validate")

    def after_test(self) -> None:
        report_run(self.trainer, "test")


def build_cli(args: list[str] | None = None, run: bool = True) -> MaskRankCLI:
    """Construct (and with ``run=True`` execute) the CLI on ``args``; returns it for tests."""
    return MaskRankCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        trainer_defaults={"logger": DEFAULT_LOGGER},
        save_config_callback=RunConfigSaver,
        parser_kwargs={
            "parser_mode": "omegaconf",
            "epilog": commands_help(),
        },
        args=args,
        run=run,
    )


def lightning_command(argv: list[str]) -> None:
    """``maskrank fit|validate|test|predict ...``: LightningCLI on ``argv`` (the subcommand first)."""
    check_config_files(argv)
    with _quiet():
        build_cli(argv)


def check_config_files(argv: list[str]) -> None:
    """Every ``-c``/``--config`` file exists and is YAML; else one line naming file, line, column.

    jsonargparse would print its whole usage first and bury the position of a syntax error.
    """
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            flag, value = arg, argv[i + 1]
        elif arg.startswith("--config="):
            flag, value = "--config", arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise MissingFileError(f"config file {path} ({flag}) {what}")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CorruptFileError(
                f"config file {path} ({flag}) is not valid YAML: {where}{problem}"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"config file {path} ({flag}) cannot be read: {err}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence LightningCLI's warning about ``args`` given while ``sys.argv`` has arguments."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        yield


def parse_error(args: list[str]) -> str | None:
    """None if the parser accepts the ``maskrank`` arguments ``args`` (nothing is built), else why.

    The reason is the innermost line of jsonargparse's error message.
    """
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _quiet():
            build_cli([*args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        return _reason(err.getvalue())
    return None


_NOISE = ("Subtypes:", "Errors:", "Given value", "Does not validate", "Parser key", "Problem with")


def _reason(text: str) -> str:
    """The innermost line of a jsonargparse error."""
    body = text[text.rfind("error:") + len("error:") :] if "error:" in text else text
    lines = [line.strip().removeprefix("- ").strip() for line in body.splitlines()]
    useful = [
        line
        for line in lines
        if line and not line.startswith(_NOISE) and line != "Expected a <class 'NoneType'>"
    ]
    return useful[0] if useful else (lines[0] if lines else "rejected by the parser")


def fit_in_process(args: list[str]) -> bool:
    """Run ``maskrank ARGS`` here; True if the Trainer was interrupted (a sweep's fit)."""
    with _quiet():
        cli = build_cli(args)
    return bool(cli.trainer.interrupted)
