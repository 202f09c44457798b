"""The data contract: everything that reads data outside the training loop reads it through this.

Training batches go through Lightning's loaders. Everything else, the rank monitor and LiDAR, the
k-NN bank and its linear probe, reconstructions, predictions, an export's preprocessing, reads a
datamodule only through :class:`ImageData`, so a callback works on every source (memory, image
files, streaming shards, Hugging Face) or refuses it in one line before training starts, and never
reaches into a datamodule's private attributes.

What a datamodule promises (every shipped one implements it; ``tests/data/test_contract.py``):

* **geometry**: ``num_classes``, ``in_chans``, ``image_size``, ``mean``, ``std`` (0..1 scale),
  ``classes`` (names in label order), ``batch_size`` (per process), set before ``setup`` so the CLI
  can link them into the model;
* **fixed images**: ``probe_batch(n, split)``: the same ``n`` unaugmented images of a split on every
  call, every rank and every epoch (a smaller ``n`` is a prefix of a larger one), held-out or
  training (the k-NN bank), as the evaluation crop the held-out split gets;
* **views**: ``augmented_views(n, views, seed)``: the first ``n`` of those training images, each in
  ``views`` versions made by the datamodule's *own training augmentation* from ``seed``. Where the
  training crops are taken from the original file in the loader workers (file-backed folders,
  streaming shards), the views are crops of the original file by that same crop function, not
  re-crops of one pre-cropped image; ``augment`` says whether there is an augmentation at all;
* **normalisation**: ``normalize(uint8) -> float32``, the device-side step every batch gets;
* **held-out preprocessing**: ``eval_interpolation`` and ``eval_crop_pct`` say how a held-out image
  became ``image_size`` pixels (shorter side to ``image_size / eval_crop_pct``, centre crop), so an
  export can hand the same preprocessing to timm;
* **known structure**: ``intrinsic_rank``, the rank of the centred pixel matrix where the source
  knows it by construction (``SyntheticLowRank``), else None; plots and the TensorBoard overview
  draw it as a reference line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["ImageData", "Split", "is_image_data"]

Split = Literal["train", "heldout"]


@runtime_checkable
class ImageData(Protocol):
    """What every maskrank datamodule offers to code outside the training loop."""

    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: Sequence[str]
    batch_size: int
    augment: bool
    eval_interpolation: str
    eval_crop_pct: float
    intrinsic_rank: int | None

    def probe_batch(self, n: int, split: Split = "heldout") -> tuple[Tensor, Tensor]:
        """``(images uint8 (n', C, S, S), labels int64 (n',))``, ``n' = min(n, split size)``:
        the same unaugmented images on every call."""
        ...

    def augmented_views(
        self, n: int, views: int, seed: int, device: torch.device | None = None
    ) -> Tensor:
        """``(n', views, C, S, S)`` normalized float32 views of ``probe_batch(n, "train")``'s
        images, drawn by the training augmentation from ``seed`` alone, on ``device``."""
        ...

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """``(B, C, S, S)`` uint8 -> normalized float32 on the same device."""
        ...


def is_image_data(datamodule: object) -> bool:
    """True when ``datamodule`` implements :class:`ImageData` (a maskrank datamodule)."""
    return datamodule is not None and isinstance(datamodule, ImageData)
