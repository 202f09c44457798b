"""A sweep's results: last scalar values per run, the cell table, Spearman's rho, TensorBoard HParams.

``results.csv`` has a row per finished cell: ``cell``, the swept keys (``seed`` included), then the
selected final metrics (by default ``train/loss``, ``val/*``, ``test/*``, ``probe/*``,
``rank/final_*``; in a multi-stage sweep prefixed ``<stage>:``). ``results.md`` is the same table
for people, the Spearman correlation between every label-free effective-rank column and every
accuracy column across cells (SCIENCE.md §7), and means over seeds.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from maskrank.sweep.layout import SweepLayout
from maskrank.sweep.spec import format_value, short_names

__all__ = [
    "Table",
    "average_ranks",
    "collect",
    "correlations",
    "last_scalars",
    "spearman",
    "write_hparams",
    "write_tables",
]

RANK_PATTERNS = ("rank/*effective_rank", "rank/*lidar")
ACC_PATTERNS = ("val/acc*", "test/acc*", "probe/*acc*", "eval/*acc*")


def last_scalars(run_dir: Path) -> dict[str, float]:
    """The last value (highest step, then latest written) of every scalar tag in ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        return {}
    guidance = {"scalars": 0, "images": 1, "histograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    out: dict[str, float] = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        if events:
            out[tag] = float(max(events, key=lambda e: (e.step, e.wall_time)).value)
    return out


def select(metrics: Mapping[str, float], patterns: Iterable[str]) -> dict[str, float]:
    """The tags matching any glob pattern, in pattern order then alphabetically."""
    out: dict[str, float] = {}
    for pattern in patterns:
        for tag in sorted(metrics):
            if tag not in out and fnmatchcase(tag, pattern):
                out[tag] = metrics[tag]
    return out


@dataclass
class Table:
    """Finished cells: ``rows`` map ``cell``, every param key and every metric key to a value."""

    name: str
    param_keys: list[str]
    metric_keys: list[str]
    rows: list[dict[str, Any]]
    total: int


def collect(sweep_dir: Path, manifest: Mapping[str, Any]) -> Table:
    """The table of the finished cells listed in ``manifest`` (``sweep.json``) under ``sweep_dir``."""
    layout = SweepLayout(sweep_dir)
    rows: list[dict[str, Any]] = []
    metric_keys: dict[str, None] = {}
    for cell in manifest["cells"]:
        row: dict[str, Any] = {"cell": cell["id"], **cell["params"]}
        for stage in manifest["stages"]:
            shared = cell.get("runs", {}).get(stage["name"])  # see maskrank.sweep.plan.plan
            run_dir = (
                layout.root / shared
                if shared
                else layout.run_dir(cell["id"], stage["name"], manifest["multi_stage"])
            )
            result = layout.read_result(run_dir)
            if result is None:
                break
            prefix = f"{stage['name']}:" if manifest["multi_stage"] else ""
            for tag, value in select(result["metrics"], stage["metrics"]).items():
                row[prefix + tag] = value
                metric_keys.setdefault(prefix + tag)
        else:
            rows.append(row)
    return Table(
        manifest["name"],
        list(manifest["param_keys"]),
        list(metric_keys),
        rows,
        len(manifest["cells"]),
    )


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the average of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks) over the pairs where both are finite.

    None when fewer than 2 pairs remain or one side is constant (rho is undefined).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: x and y differ in length ({len(x)} vs {len(y)})")
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if _finite(a) and _finite(b)]
    if len(pairs) < 2:
        return None
    rx, ry = average_ranks([a for a, _ in pairs]), average_ranks([b for _, b in pairs])
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return None if var == 0 else cov / var


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tag(column: str) -> str:
    return column.split(":", 1)[-1]


def correlations(table: Table) -> list[tuple[str, str, float | None, int]]:
    """``(rank column, accuracy column, rho, n)`` for every label-free rank x accuracy pair."""
    ranks = [c for c in table.metric_keys if any(fnmatchcase(_tag(c), p) for p in RANK_PATTERNS)]
    accs = [c for c in table.metric_keys if any(fnmatchcase(_tag(c), p) for p in ACC_PATTERNS)]
    out = []
    for r in ranks:
        for a in accs:
            both = [row for row in table.rows if _finite(row.get(r)) and _finite(row.get(a))]
            out.append(
                (r, a, spearman([row[r] for row in both], [row[a] for row in both]), len(both))
            )
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if _finite(value) and isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def seed_means(table: Table) -> list[list[str]]:
    """Rows of ``params (without seed) | n | mean ± std`` per metric; [] without repeated seeds."""
    keys = [k for k in table.param_keys if k != "seed"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table.rows:
        groups.setdefault(json.dumps([row.get(k) for k in keys], default=str), []).append(row)
    if "seed" not in table.param_keys or all(len(g) < 2 for g in groups.values()):
        return []
    out = []
    for group in groups.values():
        cells = [_cell(group[0].get(k)) for k in keys] + [str(len(group))]
        for m in table.metric_keys:
            vals = [r[m] for r in group if _finite(r.get(m))]
            std = f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.4g}{std}" if vals else "")
        out.append(cells)
    return out


def write_tables(table: Table, out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` into ``out_dir``; returns their paths."""
    columns = ["cell", *table.param_keys, *table.metric_keys]
    csv_path, md_path = SweepLayout(out_dir).results_csv, SweepLayout(out_dir).results_md
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in table.rows:
            writer.writerow([_csv(row.get(c)) for c in columns])
    short = short_names(table.param_keys)
    lines = [f"# Sweep {table.name}", "", f"{len(table.rows)} of {table.total} cells finished.", ""]
    lines += _md(
        ["cell", *(short[k] for k in table.param_keys), *table.metric_keys],
        ([row["cell"], *(_cell(row.get(c)) for c in columns[1:])] for row in table.rows),
    )
    corr = correlations(table)
    if corr:
        lines += ["", "## Label-free rank vs accuracy (Spearman's rho across cells)", ""]
        lines += _md(
            ["rank metric", "accuracy", "rho", "cells"],
            ([r, a, "n/a" if rho is None else f"{rho:+.3f}", str(n)] for r, a, rho, n in corr),
        )
    means = seed_means(table)
    if means:
        lines += ["", "## Mean ± std over seeds", ""]
        keys = [short[k] for k in table.param_keys if k != "seed"]
        lines += _md([*keys, "seeds", *table.metric_keys], means)
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value) if not isinstance(value, float) else repr(value)
    return json.dumps(value)


def _hparam(value: Any) -> int | float | str | bool:
    return value if isinstance(value, (int, float, str, bool)) else format_value(value)


def write_hparams(
    log_dir: Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    domains: Mapping[str, list[Any]],
    with_scalars: bool,
) -> None:
    """A TensorBoard HParams session in ``log_dir``: the cell's params and its final metrics.

    Replaces an earlier one. The metrics' values are the run's scalar tags of the same name; with
    ``with_scalars`` (multi-stage, prefixed names) they are written here as scalars at step 0.
    """
    from torch.utils.tensorboard.summary import hparams, scalar
    from torch.utils.tensorboard.writer import FileWriter

    for old in log_dir.glob("events.out.tfevents.*.hparams"):
        old.unlink()
    hp = {k: _hparam(v) for k, v in params.items()}
    discrete = {
        k: [_hparam(v) for v in vals]
        for k, vals in domains.items()
        if k in hp and all(type(_hparam(v)) is type(hp[k]) for v in vals)
    }
    writer = FileWriter(str(log_dir), filename_suffix=".hparams")
    for summary in hparams(hp, dict(metrics), discrete):
        writer.add_summary(summary)
    if with_scalars:
        for name, value in metrics.items():
            writer.add_summary(scalar(name, value), 0)
    writer.flush()
    writer.close()
