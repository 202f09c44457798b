"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def event_tags(run_dir: Path, kind: str = "scalars") -> set[str]:
    """All tags of one kind ("scalars", "images", "histograms") in a run directory's event files."""
    tags: set[str] = set()
    for events in Path(run_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={kind: 0})
        acc.Reload()
        tags |= set(acc.Tags().get(kind, []))
    return tags
