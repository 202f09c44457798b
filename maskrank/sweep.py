"""``maskrank sweep SWEEP.yaml``: config-driven ablations, one fit per cell, resumable.

    maskrank sweep configs/sweeps/mask_ratio.yaml --dry-run     # the cells, checked, nothing run
    maskrank sweep configs/sweeps/mask_ratio.yaml               # run (skips finished cells)
    maskrank sweep configs/sweeps/mask_ratio.yaml --set vars.pretrain_epochs=1 'seeds=[0]' \
        --out runs/sweeps/mask_ratio_quick                      # the same, changed, elsewhere
    maskrank report runs/sweeps/mask_ratio                      # table + plots

The sweep file format is described in :mod:`maskrank.sweep_spec`. Every fit of every cell is parsed
by the LightningCLI parser before anything runs, so a misspelt key fails at once, naming it. Cells
run in order, each in its own run directory ``<sweep dir>/<cell id>/`` (``.../<cell id>/<stage>/``
with stages); a cell is finished when its fits' ``result.json`` markers exist, and a rerun skips it.
At the end the sweep directory holds ``results.csv``, ``results.md``, a TensorBoard HParams session
per cell, ``sweep.yaml`` (the sweep file as run) and ``sweep.json`` (its cells, for ``report``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from maskrank.errors import ConfigError, MaskRankError
from maskrank.sweep_load import load_sweep
from maskrank.sweep_results import Table, collect, write_hparams, write_tables
from maskrank.sweep_run import execute, plan, read_result, validate
from maskrank.sweep_spec import SweepSpec, short_names

__all__ = ["SweepOutcome", "dispatch", "run_sweep", "write_outputs"]

DEFAULT_ROOT = Path("runs") / "sweeps"
MANIFEST = "sweep.json"


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
        "cells": [{"id": cell.id, "params": cell.params} for cell, _ in cells],
    }


def run_sweep(
    path: str | Path,
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
    sweep_dir = Path(out) if out is not None else DEFAULT_ROOT / spec.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--out {sweep_dir} exists and is not a directory")
    cells = plan(spec, sweep_dir)
    fits = sum(len(runs) for _, runs in cells)
    echo(f"sweep {spec.name}: {len(cells)} cells, {fits} fits -> {sweep_dir}; checking every fit")
    for _, runs in cells:
        for run in runs:
            validate(run, spec.path)
    done = {cell.id: all(read_result(run) for run in runs) for cell, runs in cells}
    outcome = SweepOutcome(sweep_dir, [cell.id for cell, _ in cells])
    if dry_run:
        _print_plan(spec, cells, done, echo)
        return outcome
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / MANIFEST).write_text(json.dumps(_manifest(spec, cells), indent=2, default=str))
    if spec.path.resolve() != (sweep_dir / "sweep.yaml").resolve() or changes:
        OmegaConf.save(spec.raw, sweep_dir / "sweep.yaml")  # as run, --set included
    for i, (cell, runs) in enumerate(cells, 1):
        if done[cell.id]:
            outcome.skipped.append(cell.id)
            echo(f"[{i}/{len(cells)}] {cell.id}: finished before, skipped")
            continue
        start = time.perf_counter()
        for run in runs:
            if read_result(run) is None:
                echo(f"[{i}/{len(cells)}] {run.label}: {run.command()}")
                execute(run, use_subprocess)
        outcome.ran.append(cell.id)
        echo(f"[{i}/{len(cells)}] {cell.id}: done in {time.perf_counter() - start:.0f} s")
    outcome.table = write_outputs(sweep_dir)
    echo((sweep_dir / "results.md").read_text())
    echo(f"results: {sweep_dir / 'results.csv'}, {sweep_dir / 'results.md'}")
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
    manifest_path = sweep_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{manifest_path}: missing or unreadable; is {sweep_dir} a sweep directory?"
        ) from None
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


def _sweep_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="maskrank sweep",
        description="Run one fit per cell of a sweep file (grid x zip x seeds); resumes.",
    )
    parser.add_argument("sweep", help="the sweep YAML (see configs/sweeps/)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check and list the cells; run nothing"
    )
    parser.add_argument("--out", help="the sweep directory (default runs/sweeps/<name>)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="change the sweep file, e.g. --set vars.epochs=2 'seeds=[0]' (omegaconf dotlist)",
    )
    parser.add_argument(
        "--subprocess",
        action="store_true",
        help="run every fit in its own process (full isolation; needed for multi-GPU DDP)",
    )
    args = parser.parse_args(argv)
    run_sweep(args.sweep, args.out, args.dry_run, args.subprocess, changes=args.set)


def dispatch(argv: list[str]) -> None:
    """``maskrank sweep ...`` and ``maskrank report ...``; user mistakes exit 2 with one line."""
    command, rest = argv[0], list(argv[1:])
    try:
        if command == "sweep":
            _sweep_command(rest)
        elif command == "report":
            from maskrank.report import report_command

            report_command(rest)
        else:
            raise ValueError(f"dispatch: unknown command {command!r}")
    except MaskRankError as err:
        print(f"maskrank: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _say(text: str) -> None:
    print(text, flush=True)
