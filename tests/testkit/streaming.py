"""Tiny datasets for the streaming and Hugging Face tests (importable by subprocesses via tests/).

Every image is a flat colour that encodes its identity: pixel value ``(3 * id + 1, id % 7, 200)``,
so an unaugmented (centre-cropped) image tells which source image it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_lightning import Callback

CLASSES = ("ant", "bee", "cat", "dog")


def flat_image(identity: int, height: int = 40, width: int = 36) -> Image.Image:
    """A flat RGB image whose red channel is ``3 * identity + 1`` (identity < 85)."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = 3 * identity + 1
    pixels[..., 1] = identity % 7
    pixels[..., 2] = 200
    return Image.fromarray(pixels)


def identities(images_uint8: torch.Tensor) -> list[int]:
    """The identities of flat images ``(B, 3, H, W)`` uint8, read from the red centre pixel."""
    red = images_uint8[:, 0, images_uint8.shape[2] // 2, images_uint8.shape[3] // 2]
    return [(int(v) - 1) // 3 for v in red]


def write_image_folder(root: Path, train: int = 64, val: int = 16) -> Path:
    """``root/{train,val}/<class>/<id>.png``: ids 0..train-1 for train, train.. for val.

    The label of id ``i`` is ``i % 4``; sizes vary so crops resample.
    """
    for split, ids in (("train", range(train)), ("val", range(train, train + val))):
        for i in ids:
            folder = root / split / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            flat_image(i, 40 + i % 5, 36 + i % 3).save(folder / f"{i:03d}.png")
    return root


def sorted_ids(root: Path, split: str) -> list[int]:
    """Ids of ``root/split`` in ImageFolder order (class folder, then file name)."""
    return [int(p.stem) for p in sorted((root / split).glob("*/*.png"))]


def stream_config(root: Path, **extra) -> dict:
    """A StreamingDataModule config entry for the tiny ViT (32 px)."""
    init = {"root": str(root), "image_size": 32, "batch_size": 8, "num_workers": 0, **extra}
    return {"class_path": "maskrank.data.StreamingDataModule", "init_args": init}


# defined here, not in a test module: ddp_spawn workers unpickle it by module name
class SeenIds(Callback):
    """Each rank appends the image ids of its training batches to ``<folder>/rank<r>_epoch<e>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        images = batch[0]  # normalized float (B, 3, 32, 32) of flat images
        red = images[:, 0, 16, 16] * dm.std[0] + dm.mean[0]  # (B,) on the 0..1 scale
        ids = ((red * 255).round().long() - 1) // 3
        name = self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}"
        with name.open("a") as handle:
            handle.write("".join(f"{int(i)}\n" for i in ids))
