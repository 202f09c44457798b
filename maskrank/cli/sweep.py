"""``maskrank sweep SWEEP.yaml`` and ``maskrank report DIR``: the sweep package on the command line.

The sweep package never imports the CLI; this module hands it the LightningCLI parser and
in-process fit (:data:`COMMAND_LINE`). A sweep ends with one line per fit from its run directory's
``summary.json`` (:mod:`maskrank.io.summary`): steps, best score and where the run is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from maskrank.cli.lightning import fit_in_process, parse_error
from maskrank.io.summary import read_summary, summary_file
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.report import report
from maskrank.sweep.runner import CommandLine, SweepOutcome
from maskrank.sweep.runner import run_sweep as _run_sweep

__all__ = ["COMMAND_LINE", "report_command", "run_sweep", "summary_table", "sweep_command"]

COMMAND_LINE = CommandLine(parse_error=parse_error, fit=fit_in_process)


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    dry_run: bool = False,
    use_subprocess: bool = False,
    echo: Callable[[str], None] | None = None,
    changes: Sequence[str] = (),
) -> SweepOutcome:
    """:func:`maskrank.sweep.runner.run_sweep` with maskrank's own command line."""
    return _run_sweep(path, COMMAND_LINE, out, dry_run, use_subprocess, echo, changes)


def sweep_command(argv: list[str]) -> None:
    """``maskrank sweep SWEEP.yaml [--dry-run] [--out DIR] [--set K=V ...] [--subprocess]``."""
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
    outcome = run_sweep(args.sweep, args.out, args.dry_run, args.subprocess, changes=args.set)
    if not args.dry_run:
        for line in summary_table(outcome.sweep_dir):
            print(line)


def summary_table(sweep_dir: str | Path) -> list[str]:
    """One row per fit of the sweep in ``sweep_dir``: cell (and stage), global step, best score
    and monitor, run directory; ``-`` where a fit left no ``summary.json``."""
    layout = SweepLayout(Path(sweep_dir))
    manifest = layout.read_manifest()
    multi = bool(manifest["multi_stage"])
    header = ["cell", *(["stage"] if multi else []), "step", "best", "run directory"]
    rows = []
    for cell in manifest["cells"]:
        for stage in manifest["stages"]:
            rel = cell.get("runs", {}).get(stage["name"])  # another cell's for a shared stage
            run_dir = layout.root / rel if rel else layout.run_dir(cell["id"], stage["name"], multi)
            summary = read_summary(summary_file(run_dir, "fit"))
            step, best = "-", "-"
            if summary is not None:
                step = str(summary["global_step"])
                if summary["best_score"] is not None:
                    best = f"{summary['monitor']} {summary['best_score']:.4g}"
            stage_col = [stage["name"]] if multi else []
            rows.append([cell["id"], *stage_col, step, best, str(run_dir)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["fits of the sweep (summary.json in each run directory):"]
    for row in [header, *rows]:
        lines.append("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)).rstrip())
    return lines


def report_command(argv: list[str]) -> None:
    """``maskrank report DIR``."""
    parser = argparse.ArgumentParser(
        prog="maskrank report",
        description="Print the results of a sweep or run directory and write PNG plots next to them.",
    )
    parser.add_argument("directory", help="a sweep directory (runs/sweeps/NAME) or a run directory")
    report(parser.parse_args(argv).directory)
