"""``maskrank report DIR``: the tables and plots of a sweep directory or of run directories.

For a sweep directory (it has ``sweep.json``) the results are rebuilt from the finished cells'
markers (so a half-finished sweep can be inspected), printed, and plotted: one PNG per metric
(``plots/<metric>.png``) with a panel per swept key, and a scatter of every label-free
effective-rank column against every accuracy column, with Spearman's rho. Then the final values of
every cell, read from its ``summary.json`` (its event files where there is none;
:mod:`maskrank.sweep.finals`), are printed and written as ``final_values.csv`` / ``.md``, and the
overview's charts are drawn with a line per cell (``plots/overview_<chart>.png``, one set per
stage of a multi-stage sweep; :mod:`maskrank.sweep.overview_figures`).

For a run directory, or a directory of runs (``runs/quickstart``), the same final-values table
has a row per run; every group of each run's curves is plotted into ``<run>/plots`` (loss,
accuracy, final effective ranks, then one plot per tag group: rank, updates, grads, dropout, lora,
galore, eval, ...; rank plots with the data's intrinsic rank as a dashed line when it is known),
RankMe / LiDAR are paired with k-NN and online-probe accuracy over the run's evaluations (table,
Spearman's rho, ``plots/rank_vs_label.png``), and two or more runs also get the overview figures
side by side in ``<directory>/plots``. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.errors import ConfigError
from maskrank.sweep.finals import FinalRow, final_row, final_table_lines, write_final_table
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.overview_figures import RunCurves, intrinsic_rank, load_curves, plot_overview
from maskrank.sweep.rank_vs_label import rank_vs_label_report
from maskrank.sweep.results import Table, correlations
from maskrank.sweep.runner import write_outputs

__all__ = ["intrinsic_rank", "plot_run", "plot_sweep", "report", "sweep_runs"]

_CURVES = {"loss": ("loss",), "accuracy": ("acc",), "effective_rank": ("effective_rank",)}
_MAX_LINES = 8
_MAX_GROUP_LINES = 12


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".png"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _panel(ax: Any, table: Table, key: str, metric: str) -> None:
    """``metric`` against swept ``key``: every cell as a dot, a line of means per other setting."""
    others = [k for k in table.param_keys if k not in (key, "seed")]
    rows = [
        r
        for r in table.rows
        if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
    ]
    xs_all = list(dict.fromkeys(r[key] for r in rows))
    numeric = _numeric(xs_all)
    position = {x: x if numeric else i for i, x in enumerate(xs_all)}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in others)
        groups.setdefault(label, []).append(row)
    if len(groups) > _MAX_LINES:
        groups = {"mean": rows}
    for label, group in groups.items():
        xs = sorted({position[r[key]] for r in group})
        means = [
            sum(r[metric] for r in group if position[r[key]] == x)
            / sum(1 for r in group if position[r[key]] == x)
            for x in xs
        ]
        line = ax.plot(xs, means, marker="o", label=label or None)[0]
        ax.scatter(
            [position[r[key]] for r in group],
            [r[metric] for r in group],
            s=12,
            alpha=0.5,
            color=line.get_color(),
        )
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
    ax.set_xlabel(key.rsplit(".", 1)[-1])
    ax.set_ylabel(metric.split(":", 1)[-1], fontsize=8)
    if any(groups) and len(groups) > 1:
        ax.legend(fontsize=7)


def plot_sweep(table: Table, out_dir: Path) -> list[Path]:
    """One PNG per metric (a panel per swept key) and one per rank-vs-accuracy pair."""
    keys = [k for k in table.param_keys if k != "seed"] or list(table.param_keys)
    written: list[Path] = []
    if not keys or not table.rows:
        return written
    for metric in table.metric_keys:
        figure = Figure(figsize=(max(5.6, 4.4 * len(keys)), 3.6), dpi=90, layout="constrained")
        axes = figure.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys, strict=True):
            _panel(ax, table, key, metric)
        figure.suptitle(f"{table.name}: {metric}", fontsize=10)
        written.append(_save(figure, out_dir / _file_name(metric)))
    for rank, acc, rho, n in correlations(table):
        rows = [r for r in table.rows if r.get(rank) is not None and r.get(acc) is not None]
        figure = Figure(figsize=(4.6, 3.6), dpi=90, layout="constrained")
        ax = figure.subplots()
        ax.scatter([r[rank] for r in rows], [r[acc] for r in rows])
        rho_text = "n/a" if rho is None else f"{rho:+.3f}"
        ax.set(xlabel=rank, ylabel=acc, title=f"Spearman rho = {rho_text} (n = {n})")
        written.append(_save(figure, out_dir / _file_name(f"spearman_{rank}_vs_{acc}")))
    return written


def _curve_groups(tags: Sequence[str]) -> dict[str, list[str]]:
    """Plots of a run: loss / accuracy / final effective ranks, then one per tag group
    (``rank``, ``updates``, ``grads``, ``weights``, ``dropout``, ``lora``, ``galore``,
    ``eval``, ...), at most ``_MAX_GROUP_LINES`` curves each: a large group shows its
    summary (``*_mean``) tags."""
    groups: dict[str, list[str]] = {}
    for name, suffixes in _CURVES.items():
        chosen = [t for t in tags if t.rsplit("/", 1)[-1].startswith(suffixes)]
        if name == "effective_rank":
            chosen = [t for t in chosen if "/final_" in t]
        if chosen:
            groups[name] = sorted(chosen)
    for tag in sorted(tags):
        if "/" in tag:
            groups.setdefault(f"group_{tag.split('/', 1)[0]}", []).append(tag)
    for name, chosen in groups.items():
        if name.startswith("group_") and len(chosen) > _MAX_GROUP_LINES:
            summary = [t for t in chosen if "_mean/" in t or "/mean/" in t or "final_" in t]
            groups[name] = (summary or chosen)[:_MAX_GROUP_LINES]
    return groups


def plot_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Every group of curves of a run against the step (see :func:`_curve_groups`); rank plots
    carry a dashed line at the data's intrinsic rank when it is known."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "histograms": 1})
    acc.Reload()
    known_rank = intrinsic_rank(run_dir)
    written = []
    for name, chosen in _curve_groups(acc.Tags().get("scalars", [])).items():
        figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
        ax = figure.subplots()
        for tag in chosen:
            events = acc.Scalars(tag)
            ax.plot(
                [e.step for e in events],
                [e.value for e in events],
                marker="o" if len(events) < 30 else None,
                markersize=3,
                label=tag,
            )
        if known_rank is not None and any("rank" in t.rsplit("/", 1)[-1] for t in chosen):
            ax.axhline(
                known_rank,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"intrinsic rank of the data ({known_rank})",
            )
        ax.set(
            xlabel="step",
            ylabel=name.removeprefix("group_"),
            title=f"{run_dir.parent.name}/{run_dir.name}: {name.removeprefix('group_')}",
        )
        ax.legend(fontsize=7)
        written.append(_save(figure, out_dir / f"{name}.png"))
    return written


def _run_dirs(directory: Path) -> list[Path]:
    found = [d for d in [directory, *sorted(directory.iterdir())] if d.is_dir()]
    return [d for d in found if any(d.glob("events.out.tfevents.*"))]


def sweep_runs(layout: SweepLayout) -> dict[str, list[tuple[str, Path]]]:
    """Stage -> ``(cell id, run directory)`` of every cell of the sweep, in manifest order; a
    stage several cells share (the same fit) is listed once, under the first cell."""
    manifest = layout.read_manifest()
    multi = bool(manifest["multi_stage"])
    out: dict[str, list[tuple[str, Path]]] = {}
    for stage in manifest["stages"]:
        seen: set[Path] = set()
        for cell in manifest["cells"]:
            rel = cell.get("runs", {}).get(stage["name"])  # another cell's for a shared stage
            run_dir = layout.root / rel if rel else layout.run_dir(cell["id"], stage["name"], multi)
            if run_dir not in seen:
                seen.add(run_dir)
                out.setdefault(stage["name"], []).append((cell["id"], run_dir))
    return out


def _finals(rows: list[FinalRow], out_dir: Path, echo: Callable[[str], None]) -> None:
    """Print the final-values table of ``rows`` and write it into ``out_dir``."""
    csv_path, _ = write_final_table(rows, out_dir)
    echo("final values (summary.json of each run; its event files where there is none):")
    for line in final_table_lines(rows):
        echo(line)
    echo(f"  table: {csv_path}")


def _overview(runs: list[tuple[str, Path]], out_dir: Path, name: str, prefix: str) -> list[Path]:
    """The overview figures of the runs (those that logged anything), one line per run."""
    curves: list[RunCurves] = [
        load_curves(label, run_dir)
        for label, run_dir in runs
        if any(run_dir.glob("events.out.tfevents.*"))
    ]
    return plot_overview(curves, out_dir, name, prefix) if curves else []


def _report_sweep(layout: SweepLayout, echo: Callable[[str], None]) -> list[Path]:
    table = write_outputs(layout.root)
    echo(layout.results_md.read_text())
    written = plot_sweep(table, layout.plots)
    stages = sweep_runs(layout)
    multi = len(stages) > 1
    rows = [
        final_row(f"{cell} [{stage}]" if multi else cell, run_dir)
        for stage, runs in stages.items()
        for cell, run_dir in runs
    ]
    _finals(rows, layout.root, echo)
    for stage, runs in stages.items():
        prefix = f"{stage}_" if multi else ""
        written += _overview(runs, layout.plots, table.name, prefix)
    return written


def _report_runs(directory: Path, echo: Callable[[str], None]) -> list[Path]:
    runs = _run_dirs(directory)
    if not runs:
        raise ConfigError(
            f"maskrank report: {directory} is neither a sweep directory (sweep.json) nor a run "
            "directory (events.out.tfevents.*)"
        )
    labelled = [
        (run.relative_to(directory).as_posix() if run != directory else run.name, run)
        for run in runs
    ]
    _finals([final_row(label, run) for label, run in labelled], directory, echo)
    written: list[Path] = []
    for run in runs:
        written += plot_run(run, run / "plots")
        table, figure = rank_vs_label_report(run, run / "plots")
        echo(f"{run}: label-free ranks against label-based accuracy")
        echo(table)
        if figure is not None:
            written.append(figure)
    if len(runs) > 1:  # the runs side by side
        written += _overview(labelled, directory / "plots", directory.name, "")
    return written


def report(directory: str | Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Print the tables of a sweep or run directory and write its plots; returns the PNG paths."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"maskrank report: no directory {directory}")
    layout = SweepLayout(directory)
    if layout.is_sweep():
        written = _report_sweep(layout, echo)
    else:
        written = _report_runs(directory, echo)
    echo("plots: " + (", ".join(str(p) for p in written) if written else "none (nothing to plot)"))
    return written
