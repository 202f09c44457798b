"""``maskrank data``: dataset tools; ``maskrank data optimize`` writes streaming shards.

The conversion itself is :func:`maskrank.data.stream.optimize.optimize_dataset`; this module only
parses the command line and prints what was written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from maskrank.data.stream.optimize import optimize_dataset

__all__ = ["data_command"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrank data", description="Dataset tools for streaming (litdata)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    optimize = commands.add_parser(
        "optimize",
        help="convert an ImageFolder or Hugging Face dataset folder into litdata chunks",
        description="Convert an ImageFolder or a Hugging Face dataset folder into litdata "
        "chunks for StreamingDataModule. A non-empty --out is refused unless --overwrite; an "
        "interrupted conversion continues when run again with the same --src and --out.",
    )
    optimize.add_argument("--src", required=True, help="ImageFolder or Hugging Face dataset folder")
    optimize.add_argument("--out", required=True, help="output folder (must be empty)")
    optimize.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    optimize.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    optimize.add_argument("--chunk-bytes", default="64MB", help="chunk size (default: 64MB)")
    return parser


def data_command(argv: Sequence[str]) -> None:
    """``maskrank data optimize --src SRC --out OUT [--workers N] [--overwrite]``.

    ``argv`` starts after ``data``. User mistakes raise :class:`~maskrank.errors.MaskRankError`;
    argument errors exit with status 2 (argparse).
    """
    args = _parser().parse_args(list(argv))
    meta = optimize_dataset(args.src, args.out, args.workers, args.overwrite, args.chunk_bytes)
    counts = ", ".join(f"{split} {n}" for split, n in meta.splits.items())
    print(f"maskrank: wrote {args.out}: {len(meta.classes)} classes, {counts} images")
