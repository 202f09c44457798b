"""Where a sweep keeps its files: the one owner of run-directory paths, the manifest and markers.

    <sweep dir>/
      sweep.yaml              the sweep file as run (--set changes included)
      sweep.json              the manifest: cells, parameters, stages (what ``report`` reads)
      results.csv, results.md the table of finished cells
      plots/                  ``maskrank report`` figures
      <cell id>/              one run directory per cell (single stage) ...
      <cell id>/<stage>/      ... or one per stage of the cell
        result.json           the marker of a finished fit: its metrics and arguments

Every write is atomic (:mod:`maskrank.io.atomic`): a killed sweep leaves whole files or none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrank.errors import ConfigError
from maskrank.io.atomic import atomic_write_text

__all__ = ["DEFAULT_ROOT", "SweepLayout", "read_json", "write_json"]

DEFAULT_ROOT = Path("runs") / "sweeps"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new, never half."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SweepLayout:
    """The paths of one sweep directory (see the module doc)."""

    root: Path

    @classmethod
    def for_sweep(cls, name: str, out: str | Path | None) -> SweepLayout:
        """``--out`` if given, else ``runs/sweeps/<name>``; an existing file there is refused."""
        root = Path(out) if out is not None else DEFAULT_ROOT / name
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--out {root} exists and is not a directory")
        return cls(root)

    @property
    def manifest(self) -> Path:
        return self.root / "sweep.json"

    @property
    def sweep_file(self) -> Path:
        return self.root / "sweep.yaml"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / cell_id

    def run_dir(self, cell_id: str, stage: str, multi_stage: bool) -> Path:
        """The run directory of one fit: ``<cell>`` or ``<cell>/<stage>``."""
        return self.cell_dir(cell_id) / stage if multi_stage else self.cell_dir(cell_id)

    @staticmethod
    def result_file(run_dir: Path) -> Path:
        return run_dir / "result.json"

    def is_sweep(self) -> bool:
        return self.manifest.is_file()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest, manifest)

    def read_manifest(self) -> dict[str, Any]:
        manifest = read_json(self.manifest)
        if not isinstance(manifest, dict):
            raise ConfigError(
                f"{self.manifest}: missing or unreadable; is {self.root} a sweep directory?"
            )
        return manifest

    def read_result(self, run_dir: Path) -> dict[str, Any] | None:
        """The marker of a finished fit in ``run_dir``, or None."""
        result = read_json(self.result_file(run_dir))
        return result if isinstance(result, dict) else None

    def write_result(self, run_dir: Path, result: dict[str, Any]) -> None:
        write_json(self.result_file(run_dir), result)
