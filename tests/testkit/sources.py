"""One tiny dataset on every data source maskrank reads, written once per test session.

The same 96 textured images (64 training, 32 held-out, 4 classes, sizes 36-44 px so every crop
resamples) as

* ``synthetic``: :class:`~maskrank.data.SyntheticLowRank` (its own images, same counts);
* ``folder_memory``: an ImageFolder decoded into memory, augmented on the device;
* ``folder_files``: the same folder read from the files, cropped in the loader workers;
* ``stream``: the folder after ``maskrank data optimize`` (litdata shards);
* ``hf``: the same images as a Hugging Face dataset written by ``save_to_disk``.

:func:`data_config` gives a datamodule's config entry for the CLI, :func:`build_data` the
datamodule itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from maskrank.data.stream.optimize import optimize_dataset

__all__ = ["SOURCES", "Sources", "build_data", "data_config", "textured_image", "write_sources"]

SOURCES = ("synthetic", "folder_memory", "folder_files", "stream", "hf")
CLASSES = ("ant", "bee", "cat", "dog")
TRAIN, HELDOUT, BATCH = 64, 32, 16


def textured_image(identity: int, height: int, width: int) -> Image.Image:
    """A smooth random RGB image, distinct per ``identity``: 8x8 noise upsampled (bicubic), so
    different crops of it differ and a crop still looks like its neighbourhood."""
    rng = np.random.default_rng(10_000 + identity)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Sources:
    """Where :func:`write_sources` put the files of each file-based source."""

    folder: Path
    stream: Path
    hf: Path


def write_sources(base: Path) -> Sources:
    """Write the ImageFolder, its streaming shards and the Hugging Face copy under ``base``."""
    folder, hf_rows = base / "folder", {"train": [], "test": []}
    for split, ids in (("train", range(TRAIN)), ("val", range(TRAIN, TRAIN + HELDOUT))):
        for i in ids:
            label = i % len(CLASSES)
            image = textured_image(i, 36 + 4 * (i % 3), 40 + 2 * (i % 3))
            path = folder / split / CLASSES[label] / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            hf_rows["train" if split == "train" else "test"].append((image, label))
    optimize_dataset(str(folder), str(base / "stream"), workers=1, progress=False)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    splits = {
        split: datasets.Dataset.from_dict(
            {"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features
        )
        for split, rows in hf_rows.items()
    }
    datasets.DatasetDict(splits).save_to_disk(str(base / "hf"))
    return Sources(folder, base / "stream", base / "hf")


def data_config(source: str, sources: Sources, **init_args: Any) -> dict[str, Any]:
    """The ``data:`` entry of a config for ``source`` (32 px, batch 16, no loader workers)."""
    common: dict[str, Any] = {"batch_size": BATCH, "num_workers": 0}
    if source == "synthetic":
        name = "SyntheticLowRank"
        args = {"num_classes": 4, "class_rank": 2, "train_size": TRAIN, "val_size": HELDOUT}
    elif source in ("folder_memory", "folder_files"):
        name = "ImageFolderDataModule"
        args = {"root": str(sources.folder), "image_size": 32, "cache_dir": None}
        args["in_memory"] = source == "folder_memory"
    elif source == "stream":
        name, args = "StreamingDataModule", {"root": str(sources.stream), "image_size": 32}
    elif source == "hf":
        name, args = "HFDataModule", {"path": str(sources.hf), "image_size": 32}
    else:
        raise ValueError(f"unknown source {source!r}; one of {SOURCES}")
    return {"class_path": f"maskrank.data.{name}", "init_args": {**common, **args, **init_args}}


def build_data(source: str, sources: Sources, **init_args: Any) -> Any:
    """The datamodule of :func:`data_config`, instantiated."""
    config = data_config(source, sources, **init_args)
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config["init_args"])
