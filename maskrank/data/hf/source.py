"""Hugging Face ``datasets`` as a source of images and labels: loading, splits, columns, classes.

Shared by :class:`~maskrank.data.hf.HFDataModule` and ``maskrank data optimize``.

* :func:`load_splits` opens a folder written by ``save_to_disk`` (``load_from_disk``), any other
  local folder through ``load_dataset(path)``, and a Hub name only when ``download`` is set;
  it returns the training split and the held-out one (``validation``, ``val`` or ``test``).
* :func:`find_columns` picks the image column (the first ``datasets.Image`` feature unless named)
  and the label column (the first ``ClassLabel`` unless named), and lists the columns a dataset
  has when one is missing.
* :func:`class_names` reads the classes from the ``ClassLabel`` feature, or counts integer labels.
* :func:`encoded_image` returns a row's image as encoded bytes, never decoded by ``datasets``.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature

from maskrank.data.messages import one_line
from maskrank.errors import ConfigError, DatasetNotFoundError

__all__ = [
    "HELDOUT_SPLITS",
    "class_names",
    "encoded_image",
    "find_columns",
    "load_splits",
    "undecoded",
]

HELDOUT_SPLITS = ("validation", "val", "test")
_IMAGE_NAMES = ("image", "img", "images", "jpg", "png")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "cls")


def _open(path: str, download: bool, cache_dir: str | None, flag: str) -> Any:
    """``load_from_disk`` / local ``load_dataset`` / Hub ``load_dataset`` (only with download)."""
    saved = any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
    try:
        if os.path.isdir(path) and saved:
            return datasets.load_from_disk(path)
        if os.path.isdir(path):
            return datasets.load_dataset(path, cache_dir=cache_dir)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise DatasetNotFoundError(
            f"{flag} {path} cannot be read by datasets ({one_line(exc)})"
        ) from None
    if not download:
        raise DatasetNotFoundError(
            f"{flag} {path} is not a local folder; give a folder written by save_to_disk (or "
            f"any folder load_dataset reads), or set --data.download true to fetch it from the Hub"
        )
    try:
        return datasets.load_dataset(path, cache_dir=cache_dir)
    except Exception as exc:  # the Hub's many failure modes (name, network, auth): one line
        raise DatasetNotFoundError(f"{flag} {path}: download failed ({one_line(exc)})") from None


def load_splits(
    path: str,
    train_split: str = "train",
    val_split: str | None = None,
    download: bool = False,
    cache_dir: str | None = None,
    flag: str = "--data.path",
) -> tuple[Dataset, Dataset, str]:
    """The training split, the held-out split and the held-out split's name.

    ``val_split`` None takes the first of ``validation``, ``val``, ``test`` that exists.
    """
    loaded = _open(path, download, cache_dir, flag)
    if isinstance(loaded, Dataset):
        raise ConfigError(
            f"{flag} {path} is a single split; save a DatasetDict with '{train_split}' and a "
            f"held-out split ({', '.join(HELDOUT_SPLITS)})"
        )
    assert isinstance(loaded, DatasetDict)
    names = list(loaded.keys())
    if train_split not in loaded:
        raise ConfigError(
            f"--data.train_split {train_split!r} is not a split of {path}; it has: "
            f"{', '.join(names)}"
        )
    held = val_split or next((s for s in HELDOUT_SPLITS if s in loaded), None)
    if held is None or held not in loaded:
        raise ConfigError(
            f"--data.val_split {held!r} is not a split of {path}; it has: {', '.join(names)}"
            if held
            else f"{path} has no held-out split ({', '.join(HELDOUT_SPLITS)}); it has: "
            f"{', '.join(names)}; name one with --data.val_split"
        )
    return loaded[train_split], loaded[held], held


def _pick(features: Features, given: str | None, kind: type, names: tuple[str, ...]) -> str | None:
    """The named column, else the first of feature type ``kind``, else the first known name."""
    if given is not None:
        return given if given in features else None
    typed = [name for name, feature in features.items() if isinstance(feature, kind)]
    if typed:
        return typed[0]
    return next((name for name in names if name in features), None)


def find_columns(
    data: Dataset, image_column: str | None, label_column: str | None, where: str
) -> tuple[str, str]:
    """The image and label column names of ``data``; a one-line error lists its columns."""
    features = data.features
    columns = ", ".join(features)
    image = _pick(features, image_column, ImageFeature, _IMAGE_NAMES)
    if image is None:
        what = f"--data.image_column {image_column!r} is not" if image_column else "no image column"
        raise ConfigError(
            f"{where}: {what} found; its columns: {columns} (name one with --data.image_column)"
        )
    if not isinstance(features[image], ImageFeature):
        raise ConfigError(
            f"{where}: column {image!r} holds {features[image]}, not images (datasets.Image); "
            f"its columns: {columns}"
        )
    label = _pick(features, label_column, ClassLabel, _LABEL_NAMES)
    if label is None:
        what = f"--data.label_column {label_column!r} is not" if label_column else "no label column"
        raise ConfigError(
            f"{where}: {what} found; its columns: {columns} (name one with --data.label_column)"
        )
    feature = features[label]
    if not (
        isinstance(feature, ClassLabel) or (isinstance(feature, Value) and "int" in feature.dtype)
    ):
        raise ConfigError(
            f"{where}: label column {label!r} holds {feature}; expected class indices "
            f"(ClassLabel or integers)"
        )
    return image, label


def class_names(data: Dataset, label: str, num_classes: int | None, where: str) -> list[str]:
    """Class names: the ``ClassLabel`` names, or ``"0".."K-1"`` for integer labels.

    ``num_classes`` (the user's ``--data.num_classes``) must agree with a ``ClassLabel`` and be
    larger than every integer label.
    """
    feature = data.features[label]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(
                f"--data.num_classes {num_classes} disagrees with {where}, whose label column "
                f"{label!r} has {len(names)} classes"
            )
        return names
    values = [int(v) for v in data.unique(label)]  # one Arrow pass
    low, high = min(values), max(values)
    if low < 0:
        raise ConfigError(f"{where}: label column {label!r} holds a negative label ({low})")
    count = high + 1 if num_classes is None else num_classes
    if count <= high:
        raise ConfigError(
            f"--data.num_classes {num_classes} is too small for {where}, whose labels reach "
            f"{high} (needs at least {high + 1})"
        )
    return [str(i) for i in range(count)]


def encoded_image(value: dict[str, Any]) -> bytes:
    """The encoded bytes of an undecoded ``datasets.Image`` value ``{"bytes", "path"}``."""
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as handle:
        return handle.read()


def undecoded(data: Dataset, image: str) -> Dataset:
    """``data`` whose ``image`` column yields ``{"bytes", "path"}`` instead of PIL images."""
    return data.cast_column(image, ImageFeature(decode=False))
