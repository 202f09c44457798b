"""The overview's questions for several runs at once: one figure per chart, one line per run.

The charts ask what the TensorBoard overview of one run asks (did it learn, do the labels agree,
is the representation collapsing, where in depth), matched by tag regex against what the tasks and
callbacks log, so a run without a chart's tags simply has no line in it:

* **loss**: ``train/loss``; ``val/loss`` with ``val/loss_trivial`` (the loss of predicting zeros,
  dotted) in its panel;
* **accuracy**: ``train/acc``, ``val/acc`` and every ``eval/...acc...`` tag (k-NN, the bank's
  linear probe, the online probe);
* **effective rank**: ``rank/final_cls`` and ``rank/final_mean``, effective rank solid and LiDAR
  dashed, with the data's intrinsic rank as a grey line (SCIENCE.md §1-2, §9);
* **per-block effective rank**: a panel per encoder block, CLS solid and mean token dashed.

A figure has a panel per panel key a regex names (its ``panel`` group); a run keeps its colour in
every figure. The intrinsic rank is the run's ``rank/intrinsic`` tag, else what its config says
(:func:`intrinsic_rank`). Files: ``<out_dir>/<prefix>overview_<chart>.png`` (Agg backend).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.data.synthetic import SyntheticLowRank

__all__ = [
    "CHARTS",
    "INTRINSIC_TAG",
    "Chart",
    "Curves",
    "RunCurves",
    "Series",
    "intrinsic_rank",
    "load_curves",
    "overview_figure",
    "plot_overview",
    "run_colours",
]

INTRINSIC_TAG = "rank/intrinsic"
_PANEL_COLUMNS = 4
# solid and wide, so that it is not read as one of the runs' dashed series
_INTRINSIC_LINE = {"color": "grey", "linewidth": 3, "alpha": 0.4}

Curves = dict[str, tuple[list[int], list[float]]]  # tag -> (steps, values), by step


@dataclass(frozen=True)
class Series:
    """Tags a regex matches, drawn in one line style; the ``panel`` group names their panel.

    Args:
        pattern: full-match regex of the tags; its named group ``panel`` (or the whole tag when
            it has none) is the panel the tag is drawn in.
        label: what the line style means, for the figure's legend.
        style: matplotlib line style.
    """

    pattern: str
    label: str
    style: str = "-"


@dataclass(frozen=True)
class Chart:
    """One overview figure.

    Args:
        name: file name part (``overview_<name>.png``).
        title: the figure's title.
        series: the tags drawn, in legend order.
        rank: a rank chart: the data's intrinsic rank is drawn in every panel when known.
    """

    name: str
    title: str
    series: tuple[Series, ...]
    rank: bool = False


CHARTS = (
    Chart(
        "loss",
        "loss (dotted: val/loss_trivial, predicting zeros)",
        (
            Series(r"(?P<panel>train/loss)", "loss"),
            Series(r"(?P<panel>val/loss)", "loss"),
            Series(r"(?P<panel>val/loss)_trivial", "val/loss_trivial", ":"),
        ),
    ),
    Chart(
        "accuracy",
        "accuracy (k-NN, linear probes, classification)",
        (Series(r"(?:train|val)/acc", "accuracy"), Series(r"eval/[^/]*acc[^/]*(?:/.+)?", "")),
    ),
    Chart(
        "effective_rank",
        "representation effective rank (solid) and LiDAR (dashed)",
        (
            Series(r"rank/(?P<panel>final_(?:cls|mean))/effective_rank", "effective rank"),
            Series(r"rank/(?P<panel>final_(?:cls|mean))/lidar", "LiDAR", "--"),
        ),
        rank=True,
    ),
    Chart(
        "block_effective_rank",
        "effective rank per encoder block (solid: CLS, dashed: mean token)",
        (
            Series(r"rank/(?P<panel>block\d+)_cls/effective_rank", "CLS"),
            Series(r"rank/(?P<panel>block\d+)_mean/effective_rank", "mean token", "--"),
        ),
        rank=True,
    ),
)


@dataclass(frozen=True)
class RunCurves:
    """One run's scalar curves and the intrinsic rank of its data (None when unknown).

    Args:
        label: the legend entry (a cell id, a run directory's name).
        curves: tag -> (steps, values).
        intrinsic: the data's intrinsic rank, or None.
    """

    label: str
    curves: Curves
    intrinsic: float | None = None


def intrinsic_rank(run_dir: Path) -> int | None:
    """The known intrinsic rank of a run's data (``SyntheticLowRank``: ``num_classes *
    class_rank``, from the run's ``config.yaml``), or None when the data has none."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        data = config["data"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(data, dict) or not str(data.get("class_path", "")).endswith(
        SyntheticLowRank.__name__
    ):
        return None
    given = data.get("init_args") or {}
    defaults = inspect.signature(SyntheticLowRank).parameters
    k = given.get("num_classes", defaults["num_classes"].default)
    d = given.get("class_rank", defaults["class_rank"].default)
    return int(k) * int(d)


def _matched(tag: str) -> bool:
    return tag == INTRINSIC_TAG or any(
        re.fullmatch(s.pattern, tag) for chart in CHARTS for s in chart.series
    )


def load_curves(label: str, run_dir: Path) -> RunCurves:
    """The curves of ``run_dir``'s event files that some chart draws (later values of a step
    replace earlier ones, as on a resumed fit), and the data's intrinsic rank."""
    guidance = {"scalars": 0, "images": 1, "histograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    curves: Curves = {}
    for tag in acc.Tags().get("scalars", []):
        if not _matched(tag):
            continue
        by_step = {e.step: e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
        steps = sorted(by_step)
        curves[tag] = (steps, [float(by_step[s]) for s in steps])
    known = curves.pop(INTRINSIC_TAG, None)
    intrinsic = known[1][-1] if known else intrinsic_rank(run_dir)
    return RunCurves(label, curves, None if intrinsic is None else float(intrinsic))


def _panels(chart: Chart, runs: Sequence[RunCurves]) -> dict[str, list[tuple[Series, str]]]:
    """Panel key -> (series, tag) drawn there, panels in the order their tags sort."""
    panels: dict[str, list[tuple[Series, str]]] = {}
    tags = sorted({t for run in runs for t in run.curves})
    for series in chart.series:
        for tag in tags:
            match = re.fullmatch(series.pattern, tag)
            if match is None:
                continue
            key = match.groupdict().get("panel") or tag
            if (series, tag) not in panels.setdefault(key, []):
                panels[key].append((series, tag))
    return dict(sorted(panels.items(), key=lambda kv: _natural(kv[0])))


def _natural(key: str) -> list[object]:
    """Sort key: ``block2`` before ``block10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def run_colours(n: int) -> list[Any]:
    """``n`` distinct colours: matplotlib's cycle up to 10, tab20 up to 20, then viridis."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def overview_figure(chart: Chart, runs: Sequence[RunCurves], title: str) -> Figure | None:
    """``chart`` for ``runs``: a panel per panel key, a line per run and series (a run keeps the
    colour of its position in ``runs``); None when no run logged any of its tags."""
    panels = _panels(chart, runs)
    if not panels:
        return None
    columns = min(_PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.6 * columns + 2.4, 2.8 * rows + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = run_colours(len(runs))
    for ax, (key, drawn) in zip(axes, panels.items(), strict=False):
        for run, colour in zip(runs, colours, strict=True):
            for series, tag in drawn:
                if tag in run.curves:
                    steps, values = run.curves[tag]
                    marker = "o" if len(steps) < 30 else None
                    ax.plot(
                        steps,
                        values,
                        series.style,
                        color=colour,
                        marker=marker,
                        ms=3,
                        label=f"{run.label}: {tag}",
                    )
        if chart.rank:
            for rank in sorted({r.intrinsic for r in runs if r.intrinsic is not None}):
                ax.axhline(rank, **_INTRINSIC_LINE)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, label=r.label) for r, c in zip(runs, colours, strict=True)]
    styles = {s.style: s.label for s in chart.series if s.label and s.style != "-"}
    handles += [Line2D([], [], color="black", linestyle=k, label=v) for k, v in styles.items()]
    if chart.rank and any(r.intrinsic is not None for r in runs):
        handles.append(Line2D([], [], **_INTRINSIC_LINE, label="intrinsic rank of the data"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_overview(
    runs: Sequence[RunCurves], out_dir: Path, name: str, prefix: str = ""
) -> list[Path]:
    """Write one PNG per chart that a tag of ``runs`` fills into ``out_dir``; returns the paths.

    ``name`` heads every title (the sweep's name); ``prefix`` starts the file names (a stage).
    """
    written = []
    for chart in CHARTS:
        figure = overview_figure(chart, runs, f"{name}: {chart.title}")
        if figure is None:
            continue
        path = out_dir / f"{prefix}overview_{chart.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        written.append(path)
    return written
