"""Reading the custom-scalars layout (TensorBoard's CUSTOM SCALARS page) of a run directory."""

from __future__ import annotations

import re
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

__all__ = ["chart_patterns", "event_layouts", "unmatched_patterns"]


def event_layouts(run_dir: Path) -> list[layout_pb2.Layout]:
    """Every layout written to the run directory's event files, in file order."""
    layouts = []
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if metadata.CONFIG_SUMMARY_TAG not in acc.Tags().get("tensors", []):
            continue
        for event in acc.Tensors(metadata.CONFIG_SUMMARY_TAG):
            layouts.append(layout_pb2.Layout.FromString(event.tensor_proto.string_val[0]))
    return layouts


def chart_patterns(layout: layout_pb2.Layout) -> dict[tuple[str, str], list[str]]:
    """``(category, chart title) -> tag regexes`` of every multiline chart, in page order."""
    return {
        (category.title, chart.title): list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }


def unmatched_patterns(layout: layout_pb2.Layout, tags: set[str]) -> list[str]:
    """``category/chart: regex`` for every chart regex that matches none of ``tags`` the way the
    plugin matches (``re.match``)."""
    return [
        f"{category}/{title}: {pattern}"
        for (category, title), patterns in chart_patterns(layout).items()
        for pattern in patterns
        if not any(re.match(pattern, tag) for tag in tags)
    ]
