"""The TensorBoard overview page as data: charts of tag regexes, grouped in categories.

TensorBoard's custom-scalars plugin draws a *layout*: categories of multiline charts, each chart
every scalar tag that one of its regexes matches (``re.match``, so the patterns here are anchored
``^...$``). Monitors say which charts they can fill (``overview_charts``), given a :class:`RunPlan`
of the fit; :func:`build_layout` orders and merges them into the proto that
:class:`~maskrank.callbacks.TensorBoardOverview` writes. Nothing here reads a trainer or a model,
so a layout is a pure function of the charts: runs of one config shape get identical layouts, and
TensorBoard, which merges the layouts of every run under its logdir (identical charts once), shows
one chart per question with a line per run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tensorboard.compat.proto import types_pb2
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

__all__ = [
    "BLOCK_TYPES",
    "CATEGORIES",
    "Chart",
    "RunPlan",
    "block_series",
    "build_layout",
    "exact",
    "keep_logged",
    "layout_summary",
]

# Category titles, in page order. Only "overview" starts unfolded: the first screen answers
# "did it learn, are the representations collapsing" and the rest is one click away.
CATEGORIES = ("overview", "per block", "weights and updates", "optimiser", "adaptation", "dropout")
OPEN_CATEGORIES = frozenset({"overview"})
# The block linears every weight-side chart is split by, in the order a block runs them.
BLOCK_TYPES = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class RunPlan:
    """What a fit will do, as far as its start knows: what a monitor needs to say which of its
    tags will exist.

    Args:
        steps: optimizer steps of the whole fit (``math.inf``: bounded by nothing known).
        epochs: training epochs of the whole fit (``math.inf``: bounded by steps only).
        validation_every: a validation epoch runs after every this many training epochs; 0: never.
        sharded: the strategy shards the parameters (FSDP): the weight-reading monitors skip.
        intrinsic_rank: the data's known rank (``ImageData.intrinsic_rank``), or None.
    """

    steps: float
    epochs: float
    validation_every: int = 1
    sharded: bool = False
    intrinsic_rank: int | None = None

    def step_measurements(self, every_n_steps: int) -> float:
        """How many times a monitor measuring every ``every_n_steps`` steps measures."""
        return self.steps if math.isinf(self.steps) else self.steps // every_n_steps

    def validation_measurements(self, every_n_epochs: int) -> float:
        """How many validation epochs are due for a monitor measuring every ``every_n_epochs``."""
        if self.validation_every < 1:
            return 0
        period = math.lcm(self.validation_every, every_n_epochs)
        return self.epochs if math.isinf(self.epochs) else self.epochs // period


@dataclass(frozen=True)
class Chart:
    """One multiline chart: every scalar tag matching one of ``patterns``.

    Args:
        category: one of :data:`CATEGORIES`.
        title: the chart's title; charts of one category with the same title are merged.
        patterns: anchored regexes (``^...$``) of the tags it draws.
        order: position within the category (ties keep the order charts were given in).
    """

    category: str
    title: str
    patterns: tuple[str, ...]
    order: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(
                f"chart {self.title!r}: category {self.category!r} not in {CATEGORIES}"
            )
        if not self.patterns:
            raise ValueError(f"chart {self.title!r} has no tag pattern")
        for pattern in self.patterns:
            if not (pattern.startswith("^") and pattern.endswith("$")):
                raise ValueError(f"chart {self.title!r}: pattern {pattern!r} is not anchored")
            re.compile(pattern)

    def matches(self, tag: str) -> bool:
        """Whether TensorBoard draws ``tag`` in this chart."""
        return any(re.match(pattern, tag) for pattern in self.patterns)


def exact(*tags: str) -> str:
    """A pattern matching exactly ``tags``: ``exact("val/loss") == "^val/loss$"``."""
    alternatives = "|".join(re.escape(tag) for tag in tags)
    return f"^(?:{alternatives})$" if len(tags) > 1 else f"^{alternatives}$"


def block_series(kind: str, leaf: str, metric: str) -> str:
    """Every block's ``<kind>/<enc|dec>.bNN.<leaf>/<metric>`` and their block mean
    ``<kind>/<enc|dec>.<leaf>_mean/<metric>`` (one line per block, the mean where it is logged)."""
    leaf, metric = re.escape(leaf), re.escape(metric)
    return rf"^{re.escape(kind)}/(?:enc|dec)\.(?:b\d+\.{leaf}|{leaf}_mean)/{metric}$"


def keep_logged(charts: Iterable[Chart], tags: Iterable[str]) -> list[Chart]:
    """``charts`` reduced to the patterns that match one of ``tags``; a chart left without any
    pattern is dropped, so no chart of the page stays empty."""
    tags = list(tags)
    kept = []
    for chart in charts:
        patterns = tuple(p for p in chart.patterns if any(re.match(p, tag) for tag in tags))
        if patterns:
            kept.append(Chart(chart.category, chart.title, patterns, chart.order))
    return kept


def build_layout(charts: Iterable[Chart]) -> layout_pb2.Layout:
    """The custom-scalars layout of ``charts``: categories in :data:`CATEGORIES` order (empty ones
    left out), charts by ``order``, same-title charts of a category merged (patterns in order,
    without repeats). The same charts in the same order always give the same bytes."""
    merged: dict[str, dict[str, tuple[int, list[str]]]] = {c: {} for c in CATEGORIES}
    for chart in charts:
        order, patterns = merged[chart.category].get(chart.title, (chart.order, []))
        patterns.extend(p for p in chart.patterns if p not in patterns)
        merged[chart.category][chart.title] = (min(order, chart.order), patterns)
    layout = layout_pb2.Layout()
    for title in CATEGORIES:
        entries = merged[title]
        if not entries:
            continue
        category = layout.category.add(title=title, closed=title not in OPEN_CATEGORIES)
        ranked = sorted(enumerate(entries.items()), key=lambda item: (item[1][1][0], item[0]))
        for _, (chart_title, (_, patterns)) in ranked:
            chart = category.chart.add(title=chart_title)
            chart.multiline.tag.extend(patterns)
    return layout


def layout_summary(layout: layout_pb2.Layout) -> Summary:
    """The event-file record of ``layout`` that the custom-scalars plugin reads (a string tensor
    under ``custom_scalars__config__``; the plugin's own ``summary.pb`` needs TensorFlow)."""
    tensor = TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=[layout.SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    value = Summary.Value(
        tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=metadata.create_summary_metadata()
    )
    return Summary(value=[value])
