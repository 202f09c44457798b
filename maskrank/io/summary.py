"""A run's summary: the final values that matter, as ``summary.json`` and as a few printed lines.

``maskrank fit``, ``validate`` and ``test`` end by writing one JSON file into the run directory,
atomically (:mod:`maskrank.io.atomic`): ``summary.json`` for ``fit``, ``summary_validate.json``
and ``summary_test.json`` for the others, so evaluating a run never overwrites its fit's summary.
The schema (``maskrank report`` reads it; keep the keys)::

    {"command": "fit" | "validate" | "test",
     "run_dir": str,
     "tensorboard": "tensorboard --logdir <run_dir's parent>",
     "last_checkpoint": str | null, "best_checkpoint": str | null,
     "best_score": float | null, "monitor": str | null,
     "epoch": int,          # epochs trained (for validate/test: of the checkpoint evaluated)
     "global_step": int,    # optimizer steps (the same)
     "final": {tag: float}} # the last logged value of each tag in FINAL_TAGS that was logged

A non-finite value is left out of ``final`` (JSON has no NaN) but printed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from maskrank.io.atomic import atomic_write_text

__all__ = [
    "FINAL_TAGS",
    "KEYS",
    "build_summary",
    "final_values",
    "format_summary",
    "read_summary",
    "summary_file",
    "write_summary",
]

COMMANDS = ("fit", "validate", "test")
KEYS = (
    "command",
    "run_dir",
    "tensorboard",
    "last_checkpoint",
    "best_checkpoint",
    "best_score",
    "monitor",
    "epoch",
    "global_step",
    "final",
)
# Glob patterns, in the order of the printed table: losses, accuracies, label-free rank, cost.
FINAL_TAGS = (
    "val/loss",
    "val/loss_trivial",
    "val/acc*",
    "test/loss",
    "test/acc*",
    "eval/*acc*",
    "rank/final_cls/effective_rank",
    "rank/final_mean/effective_rank",
    "rank/final_cls/lidar",
    "rank/final_mean/lidar",
    "cost/step_s",
)


def summary_file(run_dir: str | Path, command: str) -> Path:
    """``<run_dir>/summary.json`` for ``fit``, ``summary_<command>.json`` otherwise."""
    if command not in COMMANDS:
        raise ValueError(f"summary: command must be one of {COMMANDS}, got {command!r}")
    name = "summary.json" if command == "fit" else f"summary_{command}.json"
    return Path(run_dir) / name


def final_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """The tags of ``metrics`` matching :data:`FINAL_TAGS`, in pattern order, then by name."""
    out: dict[str, float] = {}
    for pattern in FINAL_TAGS:
        for tag in sorted(metrics):
            if tag not in out and fnmatchcase(tag, pattern):
                out[tag] = float(metrics[tag])
    return out


def build_summary(
    command: str,
    run_dir: str | Path,
    *,
    last_checkpoint: str | None,
    best_checkpoint: str | None,
    best_score: float | None,
    monitor: str | None,
    epoch: int,
    global_step: int,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """The summary dict (schema in the module doc); ``metrics`` are all last logged values."""
    run_dir = Path(run_dir)
    score = None if best_score is None or not math.isfinite(best_score) else float(best_score)
    return {
        "command": command,
        "run_dir": str(run_dir),
        "tensorboard": f"tensorboard --logdir {run_dir.parent}",
        "last_checkpoint": last_checkpoint or None,
        "best_checkpoint": best_checkpoint or None,
        "best_score": score,
        "monitor": monitor or None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "final": final_values(metrics),
    }


def write_summary(summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` atomically to its file in its run directory (non-finite values of
    ``final`` left out); returns the path."""
    path = summary_file(summary["run_dir"], summary["command"])
    data = dict(summary)
    data["final"] = {k: v for k, v in summary["final"].items() if math.isfinite(v)}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """The summary in ``path``, or None if it is missing, unreadable or not a summary."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and set(KEYS) <= data.keys() else None


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def format_summary(
    summary: Mapping[str, Any], path: Path | None = None, note: str | None = None
) -> list[str]:
    """The printed lines: run directory, checkpoints, the final values, how to open TensorBoard.

    ``path`` is where the JSON was written; ``note`` is added to the first line.
    """
    head = f"{summary['command']} done: {summary['run_dir']}"
    head += f" (epoch {summary['epoch']}, step {summary['global_step']})"
    lines = [head + (f"; {note}" if note else "")]
    if summary["last_checkpoint"]:
        lines.append(f"  last checkpoint: {summary['last_checkpoint']}")
    if summary["best_checkpoint"]:
        score = summary["best_score"]
        what = "" if score is None else f" ({summary['monitor']} = {_number(score)})"
        lines.append(f"  best checkpoint: {summary['best_checkpoint']}{what}")
    final = summary["final"]
    if final:
        width = max(map(len, final))
        lines += [f"  {tag:<{width}}  {_number(value)}" for tag, value in final.items()]
    if path is not None:
        lines.append(f"  summary: {path}")
    lines.append(f"  open: {summary['tensorboard']}")
    return lines
