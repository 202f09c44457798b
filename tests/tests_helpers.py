"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# The tiny ViT every test uses (img 32, patch 8, dim 64, depth 2) and, as a config entry, the tiny
# SyntheticLowRank datamodule the CLI tests train on.
TINY_VIT = {"preset": "vit_nano_32", "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
TINY_DATA = {
    "class_path": "maskrank.data.SyntheticLowRank",
    "init_args": {
        "num_classes": 4,
        "class_rank": 2,
        "train_size": 64,
        "val_size": 32,
        "batch_size": 16,
    },
}


def event_tags(run_dir: Path, kind: str = "scalars") -> set[str]:
    """All tags of one kind ("scalars", "images", "histograms") in a run directory's event files."""
    tags: set[str] = set()
    for events in Path(run_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={kind: 0})
        acc.Reload()
        tags |= set(acc.Tags().get(kind, []))
    return tags
