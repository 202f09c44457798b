"""Callbacks the resume tests put into real fits (importable by a subprocess via PYTHONPATH=tests).

They only observe or stop training: they never touch the weights or draw random numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from testkit.tiny import TINY_DATA, tiny_mae_config


class StepRecorder(Callback):
    """Appends ``start <global_step>`` and then each finished global step to ``log``; saves the
    final weights to ``final``; with ``pause_at`` set, blocks after that step (a test kills it).

    Its hooks run before ModelCheckpoint's (Lightning orders checkpoint callbacks last), so a
    pause at step k happens before the checkpoint of step k could be written.
    """

    def __init__(self, log: str, final: str, pause_at: int | None = None) -> None:
        self.log_path = Path(log)
        self.final_path = Path(final)
        self.pause_at = pause_at

    def _write(self, line: str) -> None:
        with self.log_path.open("a") as handle:
            handle.write(line + "\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(f"start {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write(str(trainer.global_step))
        if trainer.global_step == self.pause_at:
            self._write("paused")
            time.sleep(600)  # the test SIGKILLs the process here

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(
            {k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.final_path
        )


class CrashAt(Callback):
    """Raises after global step ``step`` (before that step's checkpoint): an in-process crash."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


def read_steps(log: Path) -> list[str]:
    """The lines a StepRecorder wrote (empty if none yet)."""
    return log.read_text().splitlines() if log.exists() else []


def tiny_mae_model() -> dict:
    """The tiny MAE as a config entry, with every source of training randomness switched on:
    random masks with a per-batch ratio, stochastic depth (and the datamodule's augmentation)."""
    return tiny_mae_config(vit={"drop_path_rate": 0.1}, mask_ratio_range=[0.5, 0.8])


def write_config(
    path: Path,
    runs: Path,
    model: dict,
    name: str = "exp",
    checkpoint: dict | None = None,
    **trainer,
) -> Path:
    """A fit config on the tiny data (4 steps per epoch) logging to ``runs/<name>/version_N``."""
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(runs), "name": name},
            },
            **trainer,
        },
        "model": model,
        "data": TINY_DATA,
    }
    if checkpoint:
        cfg["checkpoint"] = checkpoint
    path.write_text(yaml.safe_dump(cfg))
    return path


def max_abs_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# Subprocess fits (the SIGKILL tests): command, environment, flags and waiting.


def recorded_flags(log: Path, final: Path, pause_at: int | None = None) -> list[str]:
    """Flags adding a StepRecorder (see testkit.resume) to a fit."""
    flags = [
        "--trainer.callbacks+=testkit.resume.StepRecorder",
        f"--trainer.callbacks.log={log}",
        f"--trainer.callbacks.final={final}",
    ]
    return flags if pause_at is None else [*flags, f"--trainer.callbacks.pause_at={pause_at}"]


def fit_command(cfg: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "maskrank", "fit", "-c", str(cfg), *flags]


def subprocess_env() -> dict[str, str]:
    # tests/ on the path, so a subprocess imports testkit as the tests do
    tests = str(Path(__file__).parents[1])
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the fit exited (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sigkill_and_resume(
    tmp_path: Path, cfg: Path, ref_cfg: Path, last: Path | None, pause_at: int = 7
) -> None:
    """The SIGKILL resume protocol, every process reaped whatever happens.

    ``ref_cfg`` fits uninterrupted (``ref``) beside ``cfg``'s fit (``killed``), which pauses after
    step ``pause_at`` and is SIGKILLed there (``last``, when given, must exist by then); then
    ``cfg`` resumes with ``--ckpt_path last`` (``resumed``). Each fit records its steps and final
    weights (StepRecorder) in ``tmp_path/<name>.log`` and ``<name>.pt``, its stderr in
    ``<name>.err``.
    """
    started: list[subprocess.Popen] = []

    def start(config: Path, name: str, *extra: str, pause: int | None = None) -> subprocess.Popen:
        flags = [*extra, *recorded_flags(tmp_path / f"{name}.log", tmp_path / f"{name}.pt", pause)]
        with (tmp_path / f"{name}.err").open("w") as err:  # a file, not a pipe nobody drains
            started.append(
                subprocess.Popen(fit_command(config, *flags), env=subprocess_env(), stderr=err)
            )
        return started[-1]

    try:
        reference = start(ref_cfg, "ref")
        killed = start(cfg, "killed", pause=pause_at)
        wait_for(
            lambda: "paused" in read_steps(tmp_path / "killed.log"),
            killed,
            f"step {pause_at}",
            timeout=180.0,
        )
        assert last is None or last.is_file(), f"{last} missing at step {pause_at}"
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        resumed = start(cfg, "resumed", "--ckpt_path", "last")
        assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.err").read_text()[-2000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-2000:]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
