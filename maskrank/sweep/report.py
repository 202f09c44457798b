"""``maskrank report DIR``: the table and plots of a sweep directory or of one run directory.

For a sweep directory (it has ``sweep.json``) the results are rebuilt from the finished cells'
markers (so a half-finished sweep can be inspected), printed, and plotted: one PNG per metric
(``plots/<metric>.png``) with a panel per swept key, and a scatter of every label-free
effective-rank column against every accuracy column, with Spearman's rho. For a run directory (it
has TensorBoard event files) the last value of every scalar is printed and the loss (and accuracy,
effective-rank) curves are plotted. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from maskrank.errors import ConfigError
from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.results import Table, correlations, last_scalars
from maskrank.sweep.runner import write_outputs

__all__ = ["plot_run", "plot_sweep", "report"]

_CURVES = {"loss": ("loss",), "accuracy": ("acc",), "effective_rank": ("effective_rank",)}
_MAX_LINES = 8


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


def plot_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Curves of every loss (and accuracy, effective-rank) tag of a run against the step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "histograms": 1})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    written = []
    for name, suffixes in _CURVES.items():
        chosen = [t for t in tags if t.rsplit("/", 1)[-1].startswith(suffixes)]
        if name == "effective_rank":
            chosen = [t for t in chosen if "/final_" in t]
        if not chosen:
            continue
        figure = Figure(figsize=(6.0, 3.8), dpi=90, layout="constrained")
        ax = figure.subplots()
        for tag in sorted(chosen):
            events = acc.Scalars(tag)
            ax.plot(
                [e.step for e in events],
                [e.value for e in events],
                marker="o" if len(events) < 30 else None,
                markersize=3,
                label=tag,
            )
        ax.set(xlabel="step", ylabel=name, title=f"{run_dir.parent.name}/{run_dir.name}: {name}")
        ax.legend(fontsize=7)
        written.append(_save(figure, out_dir / f"{name}.png"))
    return written


def _run_dirs(directory: Path) -> list[Path]:
    found = [d for d in [directory, *sorted(directory.iterdir())] if d.is_dir()]
    return [d for d in found if any(d.glob("events.out.tfevents.*"))]


def report(directory: str | Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Print the table of a sweep or run directory and write its plots; returns the PNG paths."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"maskrank report: no directory {directory}")
    layout = SweepLayout(directory)
    if layout.is_sweep():
        table = write_outputs(directory)
        echo(layout.results_md.read_text())
        written = plot_sweep(table, layout.plots)
    else:
        runs = _run_dirs(directory)
        if not runs:
            raise ConfigError(
                f"maskrank report: {directory} is neither a sweep directory (sweep.json) nor a run "
                "directory (events.out.tfevents.*)"
            )
        written = []
        for run in runs:
            scalars = last_scalars(run)
            echo(f"{run}: last values")
            width = max((len(t) for t in scalars), default=0)
            for tag in sorted(scalars):
                echo(f"  {tag.ljust(width)}  {scalars[tag]:.6g}")
            written += plot_run(run, run / "plots")
    echo("plots: " + (", ".join(str(p) for p in written) if written else "none (nothing to plot)"))
    return written
