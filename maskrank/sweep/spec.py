"""The sweep file: an omegaconf YAML that names base config(s), axes to vary, seeds and overrides.

Single-stage form::

    base: configs/quickstart.yaml          # a maskrank config (path relative to the working dir)
    overrides: {trainer.max_epochs: 3}     # dotted CLI keys, applied to every cell
    grid: {model.init_args.mask_ratio: [0.25, 0.5, 0.75, 0.9]}   # cartesian product of axes
    zip:                                   # keys that vary together: one axis of 2 points
      model.init_args.vit.proj_drop_rate: [0.0, 0.1]
      model.init_args.vit.attn_drop_rate: [0.0, 0.1]
    seeds: [0, 1]                          # --seed_everything, one more axis

A grid entry whose value is a mapping is an *option axis*: its labels are its values and each label
names a set of overrides (``grid: {drop: {none: {}, attn: {model.init_args.vit.attn_drop_rate:
0.1}}}`` gives cells ``drop=none`` and ``drop=attn``). ``zip`` may also be a list of such groups.

Multi-stage form: ``stages`` maps names to ``{base, overrides, metrics}``, run in order for every
cell. A stage refers to an earlier stage of the same cell as ``${stages.<name>.ckpt}`` (its
``checkpoints/last.ckpt``) or ``${stages.<name>.dir}`` (its run directory). A grid or zip key that
starts with a stage name (``pretrain.model.init_args.mask_ratio``) applies to that stage only;
other keys apply to every stage. Everywhere, ``${cell.id}``, ``${cell.seed}`` and
``${cell.params.<key>}`` are the cell's own values and ``${vars.<name>}`` a user variable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskrank.errors import ConfigError

__all__ = [
    "Axis",
    "Cell",
    "Stage",
    "SweepSpec",
    "cell_id",
    "clean_key",
    "format_value",
    "short_names",
]

TOP_KEYS = ("name", "base", "stages", "overrides", "grid", "zip", "seeds", "metrics", "vars")
STAGE_KEYS = ("base", "overrides", "metrics")
# Top-level keys of a maskrank config: a stage may not be named like one (grid-key scoping).
CONFIG_KEYS = frozenset(
    (
        "trainer",
        "model",
        "data",
        "seed_everything",
        "ckpt_path",
        "checkpoint",
        "lr_monitor",
        "overview",
    )
    + ("optimizer", "lr_scheduler", "config", "weights_only", "cell", "vars")
)
DEFAULT_METRICS = ("train/loss", "val/*", "test/*", "probe/*", "rank/final_*")
SINGLE_STAGE = "run"
_KEY = re.compile(r"^[A-Za-z_][\w.]*\+?$")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAX_ID = 120


@dataclass(frozen=True)
class Axis:
    """Keys that vary together (one for a grid axis, several for a zip group) and their points.

    An option axis (``options``) has one key, its name, and labelled sets of overrides as points.
    """

    keys: tuple[str, ...]
    points: tuple[tuple[Any, ...], ...]
    options: bool = False


@dataclass(frozen=True)
class Stage:
    """One fit of every cell: its base config and the tag patterns it reports (``metrics``)."""

    name: str
    base: str
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: ``params`` maps each swept key (and ``seed``) to its value."""

    id: str
    params: dict[str, Any]
    seed: int | None


@dataclass
class SweepSpec:
    """A validated sweep file; :meth:`cells` expands it and :meth:`stage_overrides` resolves it."""

    path: Path
    name: str
    raw: DictConfig
    stages: list[Stage]
    axes: list[Axis]
    seeds: list[int] | None
    multi_stage: bool
    param_keys: list[str] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        """Every cell in a stable order: the product of the axes (first varies slowest), x seeds."""
        short = short_names([*self.param_keys, *(["seed"] if self.seeds is not None else [])])
        cells: list[Cell] = []
        for combo in itertools.product(*(axis.points for axis in self.axes), self.seeds or [None]):
            *points, seed = combo
            params = {
                k: v
                for axis, p in zip(self.axes, points, strict=True)
                for k, v in zip(axis.keys, p, strict=True)
            }
            if seed is not None:
                params["seed"] = seed
            cells.append(Cell(cell_id(params, short), params, seed))
        seen: dict[str, Cell] = {}
        for cell in cells:
            if cell.id in seen:
                raise ConfigError(
                    f"{self.path}: cells {seen[cell.id].params} and {cell.params} get the same id "
                    f"{cell.id!r}; make the swept values distinct"
                )
            seen[cell.id] = cell
        return cells

    def applies(self, key: str, stage: Stage) -> str | None:
        """The CLI key of swept ``key`` within ``stage`` (its stage prefix removed), or None."""
        if not self.multi_stage or key == "seed":
            return key
        head, _, rest = key.partition(".")
        if head in {s.name for s in self.stages}:
            return rest if head == stage.name else None
        return key

    def stage_overrides(
        self, cell: Cell, stage: Stage, dirs: Mapping[str, Path], cell_dir: Path
    ) -> list[tuple[str, Any, str]]:
        """``(key, value, source)`` for ``stage`` of ``cell``, interpolations resolved.

        ``dirs`` maps each stage name to its run directory; only stages before ``stage`` expose a
        ``ckpt``. ``source`` says where the key came from (for error messages).
        """
        ctx = OmegaConf.create(OmegaConf.to_container(self.raw, resolve=False))
        params: DictConfig = OmegaConf.create({})
        for key, value in cell.params.items():
            OmegaConf.update(params, key, value, force_add=True)
        ctx.cell = {"id": cell.id, "seed": cell.seed, "dir": str(cell_dir), "params": params}
        index = [s.name for s in self.stages].index(stage.name)
        if self.multi_stage:
            for i, other in enumerate(self.stages):
                ctx.stages[other.name].dir = str(dirs[other.name])
                if i < index:
                    ctx.stages[other.name].ckpt = str(
                        dirs[other.name] / "checkpoints" / "last.ckpt"
                    )
        out: dict[str, tuple[Any, str]] = {}
        options = {a.keys[0] for a in self.axes if a.options}
        nodes = [("overrides", ctx.get("overrides"))]
        if self.multi_stage:
            nodes.append(
                (f"stages.{stage.name}.overrides", ctx.stages[stage.name].get("overrides"))
            )
        for source, node in nodes:
            for key, value in _resolve(node, source, self.path).items():
                out[clean_key(key, source, self.path)] = (value, source)
        swept: list[tuple[str, Any, str]] = []
        for key, value in cell.params.items():
            if key in options:
                source = f"grid.{key}.{value}"
                raw = next(v for k, v in ctx.grid[key].items_ex(resolve=False) if str(k) == value)
                node = _resolve(raw, source, self.path)
                swept += [(clean_key(k, source, self.path), v, source) for k, v in node.items()]
            else:
                swept.append((key, value, "seeds" if key == "seed" else "grid"))
        for key, value, source in swept:
            cli_key = "seed_everything" if source == "seeds" else self.applies(key, stage)
            if cli_key:
                if cli_key in out:
                    raise ConfigError(
                        f"{self.path}: key {key!r} is both swept ({source}) and set in "
                        f"{out[cli_key][1]}"
                    )
                out[cli_key] = (value, source)
        return [(key, value, source) for key, (value, source) in out.items()]


def _resolve(node: Any, source: str, path: Path) -> dict[str, Any]:
    if node is None:
        return {}
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: {source} must be a mapping of dotted keys to values")
    try:
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        first = str(err).splitlines()[0]
        hint = " (a stage can use the ckpt of an earlier stage only)" if "ckpt" in first else ""
        raise ConfigError(f"{path}: {source}: {first}{hint}") from None


def clean_key(key: Any, source: str, path: Path) -> str:
    """``key`` without a leading ``--``, checked to be a dotted config key the sweep may set."""
    key = str(key).removeprefix("--")
    if not _KEY.match(key):
        raise ConfigError(
            f"{path}: {source}: {key!r} is not a dotted config key like trainer.max_epochs"
        )
    if key == "trainer.logger" or key.startswith("trainer.logger."):
        raise ConfigError(
            f"{path}: {source}: {key} is set by the sweep (every cell logs to its own run directory)"
        )
    return key


def format_value(value: Any) -> str:
    """A short, filesystem-safe text for ``value`` in a cell id."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")
    if len(text) > 24 or not text:
        return (text[:15] + "-" if text else "") + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest unique suffix: ``model.init_args.mask_ratio`` -> ``mask_ratio``."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(1 for other in keys if other == name or other.endswith("." + name)) == 1:
                break
        out[key] = name
    return out


def cell_id(params: Mapping[str, Any], short: Mapping[str, str]) -> str:
    """``mask_ratio=0.25,seed=0``; long ids are cut and made unique with a hash."""
    if not params:
        return "default"
    text = ",".join(f"{short[k]}={format_value(v)}" for k, v in params.items())
    if len(text) > _MAX_ID:
        text = text[: _MAX_ID - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text
