"""Running a sweep: check every fit, run the unfinished ones, write the results (resumable).

    maskrank sweep configs/sweeps/mask_ratio.yaml --dry-run     # the cells, checked, nothing run
    maskrank sweep configs/sweeps/mask_ratio.yaml               # run (skips finished cells)
    maskrank sweep configs/sweeps/mask_ratio.yaml --set vars.pretrain_epochs=1 'seeds=[0]' \
        --out runs/sweeps/mask_ratio_quick                      # the same, changed, elsewhere
    maskrank report runs/sweeps/mask_ratio                      # table + plots

The sweep file format is described in :mod:`maskrank.sweep.spec`; the files a sweep writes in
:mod:`maskrank.sweep.layout`. Cells run in order, in-process (fast) or each fit as a subprocess
(full isolation, needed for multi-device DDP). The command line is handed in
(:class:`CommandLine`): this package never imports the CLI. At the end the sweep directory holds
``results.csv``, ``results.md``, a TensorBoard HParams session per cell, ``sweep.yaml`` (the sweep
file as run) and ``sweep.json`` (its cells, for ``report``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from maskrank.errors import MaskRankError, user_error_in
from maskrank.io.atomic import atomic_write_text
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.load import load_sweep
from maskrank.sweep.plan import ParseError, StageRun, plan, read_result, validate
from maskrank.sweep.results import Table, collect, last_scalars, write_hparams, write_tables
from maskrank.sweep.spec import SweepSpec, short_names

__all__ = [
    "CellFailedError",
    "CommandLine",
    "SweepOutcome",
    "execute",
    "run_sweep",
    "write_outputs",
]

FitFn = Callable[[list[str]], bool]
"""Runs ``maskrank ARGS`` (a fit) in this process; True if the fit was interrupted."""


class CellFailedError(MaskRankError):
    """A cell's fit ended with an error; finished cells are kept and a rerun resumes."""


@dataclass(frozen=True)
class CommandLine:
    """What a sweep needs from the command line: its parser and its in-process fit."""

    parse_error: ParseError
    fit: FitFn


@dataclass
class SweepOutcome:
    """What a call of :func:`run_sweep` did: the cells it ran and those it found finished."""

    sweep_dir: Path
    cells: list[str]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    table: Table | None = None


def _manifest(spec: SweepSpec, cells: list) -> dict:
    return {
        "name": spec.name,
        "source": str(spec.path),
        "multi_stage": spec.multi_stage,
        "param_keys": spec.param_keys + (["seed"] if spec.seeds is not None else []),
        "stages": [{"name": s.name, "metrics": list(s.metrics)} for s in spec.stages],
        "cells": [
            {
                "id": cell.id,
                "params": cell.params,
                # stage -> run directory; an earlier stage may be another cell's (plan())
                "runs": {r.stage.name: r.run_dir.relative_to(r.sweep_dir).as_posix() for r in runs},
            }
            for cell, runs in cells
        ],
    }


def run_sweep(
    path: str | Path,
    command_line: CommandLine,
    out: str | Path | None = None,
    dry_run: bool = False,
    use_subprocess: bool = False,
    echo: Callable[[str], None] | None = None,
    changes: Sequence[str] = (),
) -> SweepOutcome:
    """Check every cell, then run the unfinished ones and write the results (see module doc).

    ``echo`` receives the progress lines (default: printed and flushed); ``changes`` are
    ``--set`` entries merged over the sweep file.
    """
    echo = echo or _say
    spec = load_sweep(path, changes)
    layout = SweepLayout.for_sweep(spec.name, out)
    sweep_dir = layout.root
    cells = plan(spec, sweep_dir)
    fits = sum(len(runs) for _, runs in cells)
    echo(f"sweep {spec.name}: {len(cells)} cells, {fits} fits -> {sweep_dir}; checking every fit")
    checked: set[tuple[str, ...]] = set()
    for _, runs in cells:
        for run in runs:  # a stage shared by several cells (plan()) is one fit: checked once
            args = tuple(run.args())
            if args not in checked:
                validate(run, spec.path, command_line.parse_error)
                checked.add(args)
    done = {cell.id: all(read_result(run) for run in runs) for cell, runs in cells}
    outcome = SweepOutcome(sweep_dir, [cell.id for cell, _ in cells])
    if dry_run:
        _print_plan(spec, cells, done, echo)
        return outcome
    layout.write_manifest(_manifest(spec, cells))
    if spec.path.resolve() != layout.sweep_file.resolve() or changes:
        atomic_write_text(layout.sweep_file, OmegaConf.to_yaml(spec.raw))  # as run, with --set
    for i, (cell, runs) in enumerate(cells, 1):
        if done[cell.id]:
            outcome.skipped.append(cell.id)
            echo(f"[{i}/{len(cells)}] {cell.id}: finished before, skipped")
            continue
        start = time.perf_counter()
        for run in runs:
            if read_result(run) is None:
                echo(f"[{i}/{len(cells)}] {run.label}: {run.command()}")
                execute(run, command_line.fit, use_subprocess)
            elif not run.run_dir.is_relative_to(layout.cell_dir(cell.id)):
                shared = run.run_dir.relative_to(sweep_dir)
                echo(f"[{i}/{len(cells)}] {run.label}: the same fit as {shared}, not run again")
        outcome.ran.append(cell.id)
        echo(f"[{i}/{len(cells)}] {cell.id}: done in {time.perf_counter() - start:.0f} s")
    outcome.table = write_outputs(sweep_dir)
    echo(layout.results_md.read_text())
    echo(f"results: {layout.results_csv}, {layout.results_md}")
    echo(f"tensorboard --logdir {sweep_dir}   # HParams tab compares the cells")
    return outcome


def _print_plan(spec: SweepSpec, cells: list, done: dict[str, bool], echo: Callable) -> None:
    keys = spec.param_keys + (["seed"] if spec.seeds is not None else [])
    short = short_names(keys)
    header = ["cell", *(short[k] for k in keys), "status"]
    rows = [
        [
            cell.id,
            *(_text(cell.params[k]) for k in keys),
            "finished" if done[cell.id] else "to run",
        ]
        for cell, _ in cells
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        echo("  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip())
    echo("commands:")
    for _, runs in cells:
        for run in runs:
            echo(f"  {run.command()}")
    echo(
        f"dry run: {sum(not d for d in done.values())} of {len(cells)} cells would run; nothing was run"
    )


def write_outputs(sweep_dir: Path) -> Table:
    """(Re)write ``results.csv``, ``results.md`` and every finished cell's HParams session."""
    manifest = SweepLayout(sweep_dir).read_manifest()
    table = collect(sweep_dir, manifest)
    write_tables(table, sweep_dir)
    domains: dict[str, list] = {}
    for cell in manifest["cells"]:
        for key, value in cell["params"].items():
            if value not in domains.setdefault(key, []):
                domains[key].append(value)
    for row in table.rows:
        metrics = {
            k: row[k]
            for k in table.metric_keys
            if isinstance(row.get(k), float) and math.isfinite(row[k])
        }
        params = {k: row[k] for k in table.param_keys}
        write_hparams(sweep_dir / row["cell"], params, metrics, domains, manifest["multi_stage"])
    return table


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


def _fit_in_process(run: StageRun, fit: FitFn) -> None:
    try:
        with isolated():
            interrupted = fit(run.args())
    except Exception as err:
        user = user_error_in(err)
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


def execute(run: StageRun, fit: FitFn, use_subprocess: bool = False) -> dict[str, Any]:
    """Fit ``run`` from scratch (clearing leftovers of an interrupted attempt); write its marker."""
    if run.sweep_dir not in run.run_dir.parents:
        raise ValueError(f"run dir {run.run_dir} is outside the sweep dir {run.sweep_dir}")
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    start = time.perf_counter()
    if use_subprocess:
        _fit_subprocess(run)
    else:
        _fit_in_process(run, fit)
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
    SweepLayout(run.sweep_dir).write_result(run.run_dir, result)
    return result


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _say(text: str) -> None:
    print(text, flush=True)
