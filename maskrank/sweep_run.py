"""One fit of one sweep cell: its command line, its up-front check, its run and its marker file.

Every fit is ``maskrank fit -c BASE --key value ... --trainer.logger {TensorBoardLogger}``, run
in-process (fast) or as a subprocess (full isolation, needed for multi-device DDP). The logger is
the sweep's: each fit gets its own run directory inside the sweep directory. A fit is finished when
its run directory holds ``result.json`` (written atomically after the fit returned normally); the
file keeps the fit's arguments, so a resumed sweep notices when a finished cell's settings changed.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskrank.errors import ConfigError, MaskRankError
from maskrank.io.atomic import atomic_write_text
from maskrank.sweep_results import last_scalars
from maskrank.sweep_spec import SINGLE_STAGE, Cell, Stage, SweepSpec

__all__ = ["RESULT_FILE", "CellFailedError", "StageRun", "plan", "read_result", "validate"]

RESULT_FILE = "result.json"
LOGGER = "pytorch_lightning.loggers.TensorBoardLogger"
_NOISE = ("Subtypes:", "Errors:", "Given value", "Does not validate", "Parser key", "Problem with")


class CellFailedError(MaskRankError):
    """A cell's fit ended with an error; finished cells are kept and a rerun resumes."""


def flag_value(value: Any) -> str:
    """``value`` as jsonargparse reads it from a command line (strings verbatim, the rest JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class StageRun:
    """One fit: a stage of a cell, with its resolved overrides and its run directory."""

    sweep_dir: Path
    cell: Cell
    stage: Stage
    run_dir: Path
    overrides: tuple[tuple[str, Any, str], ...]

    def logger(self) -> dict[str, Any]:
        """The TensorBoardLogger that puts this fit's events and checkpoints in ``run_dir``."""
        rel = self.run_dir.relative_to(self.sweep_dir)
        name, version = (
            (rel.parent.as_posix(), rel.name) if rel.parent != Path(".") else ("", rel.name)
        )
        args = {"save_dir": str(self.sweep_dir), "name": name, "version": version}
        return {"class_path": LOGGER, "init_args": {**args, "default_hp_metric": False}}

    def args(self) -> list[str]:
        """The ``maskrank`` arguments of this fit (the sweep's logger last, so that it wins)."""
        flags = [
            part for key, value, _ in self.overrides for part in (f"--{key}", flag_value(value))
        ]
        logger = ["--trainer.logger", json.dumps(self.logger())]
        return ["fit", "-c", self.stage.base, *flags, *logger]

    def command(self) -> str:
        """The shell command that runs this fit alone."""
        return shlex.join(["maskrank", *self.args()])

    def portable_args(self) -> list[str]:
        """:meth:`args` with the sweep directory as ``<sweep>``, to compare runs across moves."""
        return [a.replace(str(self.sweep_dir), "<sweep>") for a in self.args()]

    @property
    def label(self) -> str:
        """``<cell id>`` or ``<cell id> [<stage>]``, for messages."""
        single = self.stage.name == SINGLE_STAGE
        return self.cell.id if single else f"{self.cell.id} [{self.stage.name}]"


def plan(spec: SweepSpec, sweep_dir: Path) -> list[tuple[Cell, list[StageRun]]]:
    """Every cell with its fits, interpolations resolved; run directories inside ``sweep_dir``."""
    sweep_dir = sweep_dir.resolve()
    out = []
    for cell in spec.cells():
        cell_dir = sweep_dir / cell.id
        dirs = {s.name: cell_dir / s.name if spec.multi_stage else cell_dir for s in spec.stages}
        runs = [
            StageRun(
                sweep_dir,
                cell,
                stage,
                dirs[stage.name],
                tuple(spec.stage_overrides(cell, stage, dirs, cell_dir)),
            )
            for stage in spec.stages
        ]
        out.append((cell, runs))
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence LightningCLI's warning about ``args`` given while ``sys.argv`` has arguments."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        yield


def parse_error(args: list[str]) -> str | None:
    """None if the LightningCLI parser accepts ``args`` (nothing is built), else the reason."""
    from maskrank.cli import build_cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _quiet():
            build_cli([*args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        return _reason(err.getvalue())
    return None


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


def validate(run: StageRun, sweep_path: Path) -> None:
    """Parse ``run``'s arguments without building anything; ConfigError naming the bad key."""
    if parse_error(run.args()) is None:
        return
    base = run.stage.base
    where = "" if run.stage.name == SINGLE_STAGE else f" (stage {run.stage.name})"
    if (reason := parse_error(["fit", "-c", base])) is not None:
        raise ConfigError(f"{sweep_path}: base config {base}{where} does not parse: {reason}")
    for key, value, source in run.overrides:
        if (reason := parse_error(["fit", "-c", base, f"--{key}", flag_value(value)])) is not None:
            raise ConfigError(
                f"{sweep_path}: {source} key '{key}' (value {value!r}) is not accepted by "
                f"{base}{where}: {reason}"
            )
    reason = parse_error(run.args())
    raise ConfigError(f"{sweep_path}: cell {run.label}: {reason}")


def read_result(run: StageRun) -> dict[str, Any] | None:
    """The marker of a finished fit, or None; ConfigError if it ran with other arguments."""
    path = run.run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("args") != run.portable_args():
        raise ConfigError(
            f"{run.run_dir} was run with other settings than the sweep file now gives; delete that "
            "directory to rerun the cell, or give the sweep another --out"
        )
    return result


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Run a fit in-process without leaking global state into the next one (or the caller)."""
    env, cwd = dict(os.environ), os.getcwd()
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    rng = (torch.random.get_rng_state(), random.getstate(), np.random.get_state())
    try:
        with _quiet():
            yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.random.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fit_in_process(run: StageRun) -> None:
    from maskrank.cli import _user_error, build_cli

    try:
        with isolated():
            cli = build_cli(run.args())
            interrupted = cli.trainer.interrupted
            del cli
    except Exception as err:
        user = _user_error(err)
        if user is None:
            print(
                f"maskrank sweep: cell {run.label} failed; rerun the sweep to resume",
                file=sys.stderr,
            )
            raise
        raise CellFailedError(f"cell {run.label}: {user}") from None
    if interrupted:
        raise CellFailedError(f"cell {run.label} was interrupted; rerun the sweep to resume")


def _fit_subprocess(run: StageRun) -> None:
    code = subprocess.run([sys.executable, "-m", "maskrank", *run.args()], check=False).returncode
    if code != 0:
        raise CellFailedError(
            f"cell {run.label} failed with exit status {code} (its output is above); "
            "rerun the sweep to resume"
        )


def execute(run: StageRun, use_subprocess: bool = False) -> dict[str, Any]:
    """Fit ``run`` from scratch (clearing leftovers of an interrupted attempt); write its marker."""
    if run.sweep_dir not in run.run_dir.parents:
        raise ValueError(f"run dir {run.run_dir} is outside the sweep dir {run.sweep_dir}")
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    start = time.perf_counter()
    (_fit_subprocess if use_subprocess else _fit_in_process)(run)
    ckpt = run.run_dir / "checkpoints" / "last.ckpt"
    result = {
        "cell": run.cell.id,
        "stage": run.stage.name,
        "params": run.cell.params,
        "metrics": last_scalars(run.run_dir),
        "seconds": round(time.perf_counter() - start, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ckpt": str(ckpt) if ckpt.is_file() else None,
        "args": run.portable_args(),
    }
    write_json_atomic(run.run_dir / RESULT_FILE, result)
    return result


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new, never half."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
