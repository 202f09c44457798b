"""The final values of several runs side by side: a sweep's cells, or the runs under a directory.

Each run's values come from the ``summary.json`` its fit wrote (:mod:`maskrank.io.summary`: the
tags of ``FINAL_TAGS``, the epoch and step); a run without one (a fit killed before its end, or
one written before summaries existed) falls back to the last value of each of the same tags in its
event files, with the step of the latest scalar; a run with neither is listed as not run. The
table is printed as markdown and written as ``final_values.csv`` and ``final_values.md``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.io.atomic import atomic_write_text
from maskrank.io.summary import FINAL_TAGS, final_values, read_summary, summary_file

__all__ = [
    "CSV_NAME",
    "MD_NAME",
    "FinalRow",
    "final_row",
    "final_table_lines",
    "write_final_table",
]

CSV_NAME = "final_values.csv"
MD_NAME = "final_values.md"
SUMMARY = "summary.json"
EVENTS = "events"
MISSING = "not run"


@dataclass(frozen=True)
class FinalRow:
    """One run's final values.

    Args:
        label: what the row is called (a cell id, ``cell [stage]``, a run directory's name).
        run_dir: the run directory.
        source: ``summary.json``, ``events`` (the fallback) or ``not run``.
        epoch: epochs trained (None when the summary did not say: the event-file fallback).
        step: optimizer steps (from the fallback: the highest step of any scalar).
        values: tag -> final value, in ``FINAL_TAGS`` order.
    """

    label: str
    run_dir: Path
    source: str
    epoch: int | None = None
    step: int | None = None
    values: dict[str, float] = field(default_factory=dict)


def _from_events(run_dir: Path) -> tuple[dict[str, float], int | None]:
    """The last value (highest step, then latest written) of every scalar tag in ``run_dir``'s
    event files, and the highest step any of them was logged at (None without scalars)."""
    guidance = {"scalars": 0, "images": 1, "histograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    last: dict[str, float] = {}
    step: int | None = None
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        if events:
            latest = max(events, key=lambda e: (e.step, e.wall_time))
            last[tag] = float(latest.value)
            step = latest.step if step is None else max(step, latest.step)
    return last, step


def final_row(label: str, run_dir: Path) -> FinalRow:
    """The final values of the run in ``run_dir``: its fit's summary, else its event files."""
    summary = read_summary(summary_file(run_dir, "fit"))
    if summary is not None and isinstance(summary.get("final"), dict):
        values = {k: float(v) for k, v in summary["final"].items() if isinstance(v, (int, float))}
        return FinalRow(
            label, run_dir, SUMMARY, summary.get("epoch"), summary.get("global_step"), values
        )
    if not any(run_dir.glob("events.out.tfevents.*")):
        return FinalRow(label, run_dir, MISSING)
    scalars, step = _from_events(run_dir)
    return FinalRow(label, run_dir, EVENTS, None, step, final_values(scalars))


def _columns(rows: Sequence[FinalRow]) -> list[str]:
    """Every tag some row has, in ``FINAL_TAGS`` order (a summary may hold others: then by name)."""
    tags = {t for row in rows for t in row.values}
    ordered = list(final_values(dict.fromkeys(tags, 0.0)))
    return ordered + sorted(tags - set(ordered))


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _cells(row: FinalRow, columns: Sequence[str]) -> list[str]:
    values = (_number(row.values.get(c)) for c in columns)
    return [row.label, row.source, _count(row.epoch), _count(row.step), *values]


def final_table_lines(rows: Sequence[FinalRow]) -> list[str]:
    """The markdown table: run, source, epoch, step, then one column per final tag."""
    columns = _columns(rows)
    header = ["run", "source", "epoch", "step", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows]
    return lines


def write_final_table(rows: Sequence[FinalRow], out_dir: Path) -> tuple[Path, Path]:
    """Write ``final_values.csv`` (full precision, the run directory too) and ``final_values.md``
    into ``out_dir``; returns their paths."""
    columns = _columns(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / CSV_NAME, out_dir / MD_NAME
    lines = [["run", "source", "epoch", "step", *columns, "run_dir"]]
    for row in rows:
        values = [repr(row.values[c]) if c in row.values else "" for c in columns]
        counters = [_count(row.epoch), _count(row.step)]
        lines.append([row.label, row.source, *counters, *values, str(row.run_dir)])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(lines)
    atomic_write_text(csv_path, text.getvalue())
    md = ["# Final values", "", f"Tags: {', '.join(FINAL_TAGS)}.", "", *final_table_lines(rows)]
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return csv_path, md_path
