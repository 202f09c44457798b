"""The layout of a dataset written by ``maskrank data optimize``, and reading its description.

::

    <root>/train/            litdata chunks + index.json, one sample per training image
    <root>/val/              the held-out split, same format
    <root>/maskrank.json     {"format", "classes", "splits": {"train": N, "val": M}, "source"}

Every sample is ``{"index": int, "image": bytes, "label": int}``: ``index`` is the image's position
in the sorted source split (seeds its augmentation), ``image`` the original encoded file.
``maskrank.json`` is written last, so its presence means the conversion finished.

``<root>`` is a local folder or an object-store URL that litdata reads (``s3://``, ``gs://``,
``azure://``, or ``local:/path`` for a local folder streamed through the cache like a remote one);
``maskrank.json`` is read from a URL with ``obstore`` (which litdata uses itself), taking
credentials from the environment as litdata does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import obstore
from obstore.store import from_url

from maskrank.data.messages import one_line
from maskrank.errors import CorruptFileError, DatasetNotFoundError

__all__ = [
    "FORMAT",
    "META_NAME",
    "SPLITS",
    "URL_PREFIXES",
    "DatasetMeta",
    "is_url",
    "join",
    "read_meta",
]

FORMAT = 1
META_NAME = "maskrank.json"
SPLITS = ("train", "val")  # folder names under <root>: training and held-out
URL_PREFIXES = ("s3://", "gs://", "r2://", "azure://", "local:")


@dataclass(frozen=True)
class DatasetMeta:
    """What ``maskrank.json`` says about an optimized dataset.

    Attributes:
        classes: class names; the label of ``classes[i]`` is ``i``.
        splits: samples per split folder (``train``, ``val``).
        source: the ``--src`` it was converted from.
    """

    classes: tuple[str, ...]
    splits: dict[str, int]
    source: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "classes": list(self.classes),
                "splits": self.splits,
                "source": self.source,
            },
            indent=1,
        )


def is_url(root: str) -> bool:
    """True for the object-store URLs litdata streams from (and ``local:`` folders)."""
    return root.startswith(URL_PREFIXES)


def join(root: str, name: str) -> str:
    """``root/name`` for a folder or a URL."""
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.join(root, name)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _read_url(url: str) -> bytes:
    """The bytes of one object; ``local:/path`` is a local file."""
    if url.startswith("local:"):
        return _read_file(url.removeprefix("local:"))
    folder, name = url.rsplit("/", 1)
    store = from_url(folder.replace("azure://", "az://", 1))
    return bytes(obstore.get(store, name).bytes())


def read_meta(root: str, flag: str = "--data.root") -> DatasetMeta:
    """Read and check ``<root>/maskrank.json``.

    Raises:
        DatasetNotFoundError: ``root`` or its ``maskrank.json`` does not exist (or cannot be
            reached), with the command that creates it.
        CorruptFileError: the file is not a description this version reads.
    """
    path = join(root, META_NAME)
    hint = f"expected a dataset written by `maskrank data optimize --src <dataset> --out {root}`"
    if not is_url(root) and not os.path.isdir(root):
        raise DatasetNotFoundError(f"{flag} {root} does not exist; {hint}")
    try:
        text = _read_url(path) if is_url(root) else _read_file(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{flag} {root} has no {META_NAME}; {hint}") from None
    except Exception as exc:  # network, credentials, unknown bucket: one line, not a traceback
        raise DatasetNotFoundError(f"{flag}: cannot read {path} ({one_line(exc)})") from None
    try:
        raw: dict[str, Any] = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this version reads {FORMAT}")
        meta = DatasetMeta(
            tuple(str(c) for c in raw["classes"]),
            {str(k): int(v) for k, v in raw["splits"].items()},
            str(raw["source"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(
            f"{path} is not a maskrank dataset description ({one_line(exc)})"
        ) from None
    if set(meta.splits) != set(SPLITS):
        raise CorruptFileError(f"{path} lists splits {sorted(meta.splits)}, expected {SPLITS}")
    return meta
