"""Reading a sweep file (format: :mod:`maskrank.sweep.spec`) into a checked :class:`SweepSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from maskrank.errors import ConfigError
from maskrank.sweep.spec import (
    CONFIG_KEYS,
    DEFAULT_METRICS,
    NAME,
    SINGLE_STAGE,
    STAGE_KEYS,
    TOP_KEYS,
    Axis,
    Stage,
    SweepSpec,
    clean_key,
)

__all__ = ["load_sweep"]


def _values(node: Any, where: str, path: Path) -> list[Any]:
    if not isinstance(node, ListConfig) or len(node) == 0:
        raise ConfigError(f"{path}: {where} must be a non-empty list of values")
    return list(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def _axes(raw: DictConfig, path: Path) -> list[Axis]:
    axes: list[Axis] = []
    grid = raw.get("grid")
    grid = OmegaConf.create({}) if grid is None else grid
    if not isinstance(grid, DictConfig):
        raise ConfigError(f"{path}: grid must be a mapping of dotted keys to lists of values")
    for key in grid:
        if isinstance(grid[key], DictConfig):  # an option axis: label -> {dotted key: value}
            for label, node in grid[key].items():
                if node is not None and not isinstance(node, DictConfig):
                    raise ConfigError(f"{path}: grid.{key}.{label} must be a mapping of overrides")
                for k in node or {}:
                    clean_key(k, f"grid.{key}.{label}", path)
            if not grid[key] or not NAME.match(str(key)):
                raise ConfigError(
                    f"{path}: grid.{key}: an option axis needs a plain name and labels"
                )
            axes.append(Axis((str(key),), tuple((str(label),) for label in grid[key]), True))
            continue
        values = _values(grid[key], f"grid.{key}", path)
        axes.append(Axis((clean_key(key, "grid", path),), tuple((v,) for v in values)))
    groups = raw.get("zip") or []
    groups = [groups] if isinstance(groups, DictConfig) else groups
    for i, group in enumerate(groups):
        if not isinstance(group, DictConfig) or not group:
            raise ConfigError(
                f"{path}: zip must be a mapping (or a list of mappings) of keys to lists"
            )
        columns = {
            clean_key(k, "zip", path): _values(group[k], f"zip key {k}", path) for k in group
        }
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ConfigError(
                f"{path}: zip group {i}: lists {list(columns)} must have the same length"
            )
        axes.append(Axis(tuple(columns), tuple(zip(*columns.values(), strict=True))))
    return axes


def _base(value: Any, where: str, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {where} must be the path of a maskrank config")
    for candidate in (Path(value), path.parent / value):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"{path}: {where}: no config file {value} (relative to . or {path.parent})")


def _metrics(value: Any, where: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_METRICS
    if not isinstance(value, ListConfig) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {where} must be a list of tag patterns like 'val/*'")
    return tuple(value)


def load_sweep(path: str | Path, changes: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep file; raises ConfigError naming the file and the offending key.

    ``changes`` are omegaconf dotlist entries merged over the file (``vars.epochs=2``,
    ``seeds=[0]``), as ``maskrank sweep --set`` gives them.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no sweep file {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml and omegaconf errors alike
        raise ConfigError(f"{path}: not a valid YAML file: {str(err).splitlines()[0]}") from None
    if changes:
        bad = [c for c in changes if "=" not in c]
        if bad:
            raise ConfigError(f"--set {bad[0]}: expected KEY=VALUE, e.g. vars.epochs=2")
        try:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(changes)))
        except Exception as err:
            raise ConfigError(f"--set {' '.join(changes)}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a sweep file must be a mapping (base, grid, seeds, ...)")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; expected one of {', '.join(TOP_KEYS)}"
        )
    name = str(raw.get("name") or path.stem)
    if not NAME.match(name):
        raise ConfigError(f"{path}: name {name!r} may only use letters, digits, '.', '_' and '-'")
    if ("base" in raw) == ("stages" in raw):
        raise ConfigError(f"{path}: give either base (one config) or stages (several), not both")
    metrics = _metrics(raw.get("metrics"), "metrics", path)
    if "base" in raw:
        stages = [Stage(SINGLE_STAGE, _base(raw.base, "base", path), metrics)]
    else:
        if not isinstance(raw.stages, DictConfig) or not raw.stages:
            raise ConfigError(f"{path}: stages must map stage names to {{base, overrides}}")
        stages = []
        for sname, sdef in raw.stages.items():
            where = f"stages.{sname}"
            if not NAME.match(str(sname)) or "." in str(sname) or sname in CONFIG_KEYS:
                raise ConfigError(f"{path}: {where}: not a valid stage name (or a config key)")
            if not isinstance(sdef, DictConfig):
                raise ConfigError(f"{path}: {where} must be a mapping with base and overrides")
            extra = [k for k in sdef if k not in STAGE_KEYS]
            if extra:
                raise ConfigError(
                    f"{path}: {where}: unknown key {extra[0]!r}; expected {STAGE_KEYS}"
                )
            stage_metrics = _metrics(sdef.get("metrics"), f"{where}.metrics", path)
            stages.append(
                Stage(str(sname), _base(sdef.get("base"), f"{where}.base", path), stage_metrics)
            )
    seeds = raw.get("seeds")
    if seeds is not None:
        seeds = _values(seeds, "seeds", path)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"{path}: seeds must be a list of integers")
    axes = _axes(raw, path)
    keys = [k for axis in axes for k in axis.keys]
    if len(set(keys)) != len(keys) or (seeds is not None and "seed_everything" in keys):
        raise ConfigError(f"{path}: a key is swept twice (grid, zip, seeds): {keys}")
    spec = SweepSpec(path, name, raw, stages, axes, seeds, "stages" in raw, keys)
    for key in (k for axis in axes if not axis.options for k in axis.keys):
        if not any(spec.applies(key, s) for s in stages):
            raise ConfigError(f"{path}: swept key {key!r} applies to no stage")
    return spec
