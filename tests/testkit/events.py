"""Reading a run directory's TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

__all__ = ["event_scalars", "event_tags"]


def _accumulators(run_dir: Path, kind: str) -> list[EventAccumulator]:
    accumulators = []
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={kind: 0})
        acc.Reload()
        accumulators.append(acc)
    return accumulators


def event_tags(run_dir: Path, kind: str = "scalars") -> set[str]:
    """All tags of one kind ("scalars", "images", "histograms") in a run directory's event files."""
    return {tag for acc in _accumulators(run_dir, kind) for tag in acc.Tags().get(kind, [])}


def event_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar series of a run directory: tag -> values in the order they were written."""
    values: dict[str, list[float]] = {}
    for acc in _accumulators(run_dir, "scalars"):
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values
