"""Label-free ranks against label-based accuracy over the evaluations of one run (SCIENCE.md §9).

Does the effective rank (RankMe) or LiDAR a run logs go up and down with its k-NN (or online
linear-probe) accuracy? Both kinds of tag are logged at the end of the same validation epochs,
so they share ``global_step`` values: this module pairs them step by step and gives Spearman's
rho over the run's evaluations, a markdown table and a figure. ``maskrank report RUN`` can call
:func:`rank_vs_label_report`; everything but :func:`read_series` is pure.

Pairs (``<where>`` = ``final_cls`` / ``final_mean``): ``rank/<where>/effective_rank`` and
``rank/<where>/lidar`` each with ``eval/knn_acc/<where>`` (the same feature) and with
``eval/online_linear_acc``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.io.atomic import atomic_write
from maskrank.sweep.results import spearman

__all__ = [
    "Pairing",
    "Series",
    "pair_series",
    "rank_vs_label",
    "rank_vs_label_figure",
    "rank_vs_label_report",
    "rank_vs_label_table",
    "read_series",
]

Series = Mapping[str, Sequence[tuple[int, float]]]  # tag -> [(step, value)] in logging order

_RANK_RE = re.compile(r"rank/(final_cls|final_mean)/(effective_rank|lidar)")
ONLINE_LINEAR_TAG = "eval/online_linear_acc"


@dataclass(frozen=True)
class Pairing:
    """One rank tag against one accuracy tag at the steps where both were logged."""

    rank_tag: str
    label_tag: str
    steps: tuple[int, ...]
    rank: tuple[float, ...]
    label: tuple[float, ...]

    @property
    def rho(self) -> float | None:
        """Spearman's rho over the paired evaluations; None below 2 pairs or for a constant side."""
        return spearman(self.rank, self.label)


def pair_series(
    rank: Sequence[tuple[int, float]],
    label: Sequence[tuple[int, float]],
    rank_tag: str = "rank",
    label_tag: str = "label",
) -> Pairing:
    """Join two series on their steps (the last value wins for a step logged twice, e.g. by a
    resumed run); steps where either value is not finite are left out."""
    a = {int(step): float(value) for step, value in rank}
    b = {int(step): float(value) for step, value in label}
    steps = tuple(s for s in sorted(a.keys() & b.keys()) if math.isfinite(a[s] + b[s]))
    return Pairing(
        rank_tag, label_tag, steps, tuple(a[s] for s in steps), tuple(b[s] for s in steps)
    )


def rank_vs_label(series: Series) -> list[Pairing]:
    """Every (rank tag, accuracy tag) pairing the run's ``series`` allows, in a stable order."""
    pairings = []
    for tag in sorted(series):
        match = _RANK_RE.fullmatch(tag)
        if match is None:
            continue
        for label_tag in (f"eval/knn_acc/{match.group(1)}", ONLINE_LINEAR_TAG):
            if label_tag in series:
                pairings.append(pair_series(series[tag], series[label_tag], tag, label_tag))
    return pairings


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def rank_vs_label_table(pairings: Sequence[Pairing]) -> str:
    """A markdown table: rank tag, accuracy tag, evaluations paired, rho, first and last values."""
    lines = [
        "| rank | accuracy | evaluations | Spearman rho | rank first -> last | acc first -> last |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for p in pairings:
        ends = (
            (f"{p.rank[0]:.4g} -> {p.rank[-1]:.4g}", f"{p.label[0]:.4g} -> {p.label[-1]:.4g}")
            if p.steps
            else ("-", "-")
        )
        lines.append(
            f"| {p.rank_tag} | {p.label_tag} | {len(p.steps)} | {_fmt(p.rho)} | "
            f"{ends[0]} | {ends[1]} |"
        )
    return "\n".join(lines)


def rank_vs_label_figure(pairings: Sequence[Pairing]) -> Figure:
    """One scatter per pairing (rank on x, accuracy on y, colour = step), rho in the title.

    A pyplot-free Agg figure (no global matplotlib state, safe without a display).
    """
    count = max(1, len(pairings))
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(3.6 * cols, 3.2 * rows), dpi=90, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, p in zip(axes, pairings, strict=False):
        points = ax.scatter(p.rank, p.label, c=p.steps, cmap="viridis", s=18)
        ax.set(
            xlabel=p.rank_tag, ylabel=p.label_tag, title=f"rho = {_fmt(p.rho)} (n = {len(p.steps)})"
        )
        ax.title.set_fontsize(9)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        if p.steps:
            figure.colorbar(points, ax=ax, label="step")
    for ax in axes[len(pairings) :]:
        ax.set_axis_off()
    return figure


def read_series(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run directory's TensorBoard event files: tag -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return series


def rank_vs_label_report(run_dir: str | Path, out_dir: str | Path) -> tuple[str, Path | None]:
    """Table (markdown) and figure (``out_dir/rank_vs_label.png``, None when nothing pairs) of a
    run directory, for ``maskrank report RUN``."""
    pairings = rank_vs_label(read_series(run_dir))
    if not pairings:
        return "no rank/<where>/{effective_rank,lidar} with eval/ accuracy tags to pair", None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rank_vs_label.png"
    figure = rank_vs_label_figure(pairings)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    return rank_vs_label_table(pairings), path
