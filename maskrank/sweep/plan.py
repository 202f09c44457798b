"""The fits of a sweep: each cell's command lines, run directories and up-front checks.

Every fit is ``maskrank fit -c BASE --key value ... --trainer.logger {TensorBoardLogger}``. The
logger is the sweep's: each fit gets its own run directory inside the sweep directory
(:class:`~maskrank.sweep.layout.SweepLayout`). Before anything runs, every fit's arguments go
through the command line's parser (a function the caller hands in, so this package never imports
the CLI), and a misspelt key fails at once, naming it. A fit is finished when its run directory
holds ``result.json``; the file keeps the fit's arguments, so a resumed sweep notices when a
finished cell's settings changed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrank.errors import ConfigError
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.spec import SINGLE_STAGE, Cell, Stage, SweepSpec

__all__ = ["ParseError", "StageRun", "flag_value", "plan", "read_result", "validate"]

LOGGER = "pytorch_lightning.loggers.TensorBoardLogger"

ParseError = Callable[[list[str]], "str | None"]
"""The command line's parser as a function: None if it accepts the ``maskrank`` arguments, else
the text of its error (see :func:`maskrank.cli.lightning.parse_error`)."""


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
    """Every cell with its fits, interpolations resolved; run directories inside ``sweep_dir``.

    A stage before the last whose base and resolved overrides equal an earlier cell's (a grid
    axis that only touches later stages, e.g. the adapters compared on one pretrained encoder)
    is not run again: the cell shares the earlier cell's run directory, and its later stages
    read that checkpoint. Overrides that name the cell (``${cell.id}``, ``${cell.dir}``) or the
    stage's own directory keep the stage apart.
    """
    layout = SweepLayout(Path(sweep_dir).resolve())
    first: dict[tuple[str, str, str], Path] = {}  # (stage, base, overrides) -> run directory
    out = []
    for cell in spec.cells():
        cell_dir = layout.cell_dir(cell.id)
        dirs = {s.name: layout.run_dir(cell.id, s.name, spec.multi_stage) for s in spec.stages}
        runs = []
        for stage in spec.stages:
            overrides = tuple(spec.stage_overrides(cell, stage, dirs, cell_dir))
            if stage is not spec.stages[-1]:
                identity = json.dumps([[k, v] for k, v, _ in overrides], default=str)
                dirs[stage.name] = first.setdefault(
                    (stage.name, stage.base, identity), dirs[stage.name]
                )
            runs.append(StageRun(layout.root, cell, stage, dirs[stage.name], overrides))
        out.append((cell, runs))
    return out


def validate(run: StageRun, sweep_path: Path, parse_error: ParseError) -> None:
    """Parse ``run``'s arguments without building anything; ConfigError naming the bad key.

    ``parse_error(args)`` is the command line's parser: None if it accepts ``args``, else why not.
    """
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
    result = SweepLayout(run.sweep_dir).read_result(run.run_dir)
    if result is None:
        return None
    if result.get("args") != run.portable_args():
        raise ConfigError(
            f"{run.run_dir} was run with other settings than the sweep file now gives; delete that "
            "directory to rerun the cell, or give the sweep another --out"
        )
    return result
