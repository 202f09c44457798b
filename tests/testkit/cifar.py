"""A tiny CIFAR-10 folder in the layout :class:`maskrank.data.CIFAR10DataModule` reads.

``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, each batch a pickled
dict with ``data`` (N, 3072) uint8 rows (1024 red, then green, then blue values) and ``labels``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_cifar10"]

FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def write_cifar10(root: Path, per_file: int = 16) -> Path:
    """Write ``per_file`` random images per batch file (5 training files, 1 test file) under
    ``root``; returns ``root``. Every class appears in every file when ``per_file >= 10``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in FILES:
        entry = {
            "data": rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_file)],
            "batch_label": name,
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
