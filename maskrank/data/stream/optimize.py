"""Convert an image dataset into litdata chunks for streaming (`maskrank data optimize`).

::

    maskrank data optimize --src data/imagenet --out /shared/imagenet-litdata --workers 16
    maskrank data optimize --src data/cifar10-hf --out data/cifar10-litdata

``--src`` is an ImageFolder (``<src>/train/<class>/<image>``, ``<src>/val`` or ``<src>/test``) or a
Hugging Face dataset folder (written by ``save_to_disk``, or any folder ``load_dataset`` reads,
with a held-out split named validation, val or test). The output is the layout of
:mod:`maskrank.data.stream.layout`: one sample per image holding the original encoded bytes, its label
and its index in the sorted source split, written by ``litdata.optimize`` over ``--workers``
processes with a progress bar. An interrupted conversion resumes when run again with the same
``--src`` and ``--out`` (finished splits are kept, litdata resumes the unfinished one from its
checkpoints); ``--overwrite`` starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import litdata
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from maskrank.data.hf.source import (
    class_names,
    encoded_image,
    find_columns,
    load_splits,
    undecoded,
)
from maskrank.data.stream.layout import META_NAME, SPLITS, DatasetMeta, is_url
from maskrank.errors import ConfigError, DatasetNotFoundError
from maskrank.io.atomic import atomic_write_text

__all__ = ["optimize_dataset"]

# Forked workers start in well under a second; spawned ones re-import torch first (tens of
# seconds on a loaded 2-core machine). The sample functions only read files, so fork is safe.
_START_METHOD = "fork" if sys.platform.startswith("linux") else None
_MARKER = ".maskrank-optimize.json"  # an unfinished conversion: its source, for resuming
Job = tuple[Callable[[Any], dict[str, Any]], list[Any]]  # (sample function, its inputs)


# ----------------------------------------------------------------------------- sample functions
def _folder_sample(item: tuple[int, str, int]) -> dict[str, Any]:
    """One ImageFolder file as a sample (runs in litdata's worker processes)."""
    index, path, label = item
    with open(path, "rb") as handle:
        return {"index": index, "image": handle.read(), "label": label}


_HF_OPEN: dict[tuple[str, str], Any] = {}  # per worker process: (src, split) -> undecoded split


def _hf_sample(src: str, split: str, image: str, label: str, index: int) -> dict[str, Any]:
    """Row ``index`` of a Hugging Face split as a sample (runs in litdata's worker processes)."""
    key = (src, split)
    if key not in _HF_OPEN:
        train, held, held_name = load_splits(src, val_split=split if split != "train" else None)
        _HF_OPEN[key] = undecoded(train if split == "train" else held, image)
    row = _HF_OPEN[key][int(index)]
    return {"index": int(index), "image": encoded_image(row[image]), "label": int(row[label])}


# ----------------------------------------------------------------------------- sources
def _folder_jobs(src: str) -> tuple[list[str], dict[str, Job]]:
    """Classes and per-split jobs of an ImageFolder."""
    train = os.path.join(src, "train")
    held = next(
        (os.path.join(src, n) for n in ("val", "test") if os.path.isdir(os.path.join(src, n))), None
    )
    if held is None:
        raise DatasetNotFoundError(f"--src {src} has train/ but neither val/ nor test/")
    classes, class_to_idx = find_classes(train)
    jobs: dict[str, Job] = {}
    for split, folder in (("train", train), ("val", held)):
        samples = make_dataset(folder, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DatasetNotFoundError(f"--src: {folder} holds no images in class folders")
        jobs[split] = (_folder_sample, [(i, p, y) for i, (p, y) in enumerate(samples)])
    return classes, jobs


def _hf_jobs(src: str) -> tuple[list[str], dict[str, Job]]:
    """Classes and per-split jobs of a Hugging Face dataset folder."""
    train, held, held_name = load_splits(src, flag="--src")
    image, label = find_columns(train, None, None, f"{src} [train]")
    find_columns(held, image, label, f"{src} [{held_name}]")
    classes = class_names(train, label, None, f"{src} [train]")
    class_names(held, label, len(classes), f"{src} [{held_name}]")
    return classes, {
        "train": (partial(_hf_sample, src, "train", image, label), list(range(len(train)))),
        "val": (partial(_hf_sample, src, held_name, image, label), list(range(len(held)))),
    }


def _jobs(src: str) -> tuple[list[str], dict[str, Job]]:
    if not os.path.isdir(src):
        raise DatasetNotFoundError(f"--src {src} is not a folder")
    is_hf = any(os.path.isfile(os.path.join(src, f)) for f in ("dataset_dict.json", "state.json"))
    if not is_hf and os.path.isdir(os.path.join(src, "train")):
        return _folder_jobs(src)
    return _hf_jobs(src)


# ----------------------------------------------------------------------------- output folder
def _prepare_out(out: str, src: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` or it is this source's unfinished output."""
    if is_url(out):
        raise ConfigError(
            f"--out {out}: write to a local or shared folder, then copy it to the object store "
            f"(e.g. `aws s3 sync {os.path.basename(out.rstrip('/'))} {out}`)"
        )
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; expected a folder")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if entries and overwrite:
        shutil.rmtree(out)
    elif entries:
        marker = os.path.join(out, _MARKER)
        if os.path.isfile(marker) and not os.path.isfile(os.path.join(out, META_NAME)):
            with open(marker) as handle:
                previous = json.load(handle).get("source")
            if previous == src:
                return  # resume
        what = "an optimized dataset" if META_NAME in entries else f"{len(entries)} entries"
        raise ConfigError(
            f"--out {out} is not empty (it holds {what}); pass --overwrite to replace it, or "
            f"choose an empty folder"
        )
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, _MARKER), json.dumps({"source": src}))


def optimize_dataset(
    src: str,
    out: str,
    workers: int = 1,
    overwrite: bool = False,
    chunk_bytes: str = "64MB",
    progress: bool = True,
) -> DatasetMeta:
    """Convert ``src`` into ``out`` (see the module docstring); returns what ``maskrank.json`` says.

    Raises:
        ConfigError: ``out`` is not empty (without ``overwrite``) or is a URL; bad ``workers``.
        DatasetNotFoundError: ``src`` is neither an ImageFolder nor a Hugging Face dataset folder.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    src = os.path.abspath(src)
    classes, jobs = _jobs(src)
    _prepare_out(out, src, overwrite)
    for split in SPLITS:
        folder = os.path.join(out, split)
        if os.path.isfile(os.path.join(folder, "index.json")):
            continue  # finished by an earlier, interrupted run
        fn, inputs = jobs[split]
        litdata.optimize(
            fn=fn,
            inputs=inputs,
            output_dir=os.path.abspath(folder),
            num_workers=workers,
            chunk_bytes=chunk_bytes,
            use_checkpoint=True,
            verbose=progress,
            start_method=_START_METHOD,
        )
    meta = DatasetMeta(tuple(classes), {s: len(jobs[s][1]) for s in SPLITS}, src)
    atomic_write_text(os.path.join(out, META_NAME), meta.to_json())
    os.remove(os.path.join(out, _MARKER))
    return meta
