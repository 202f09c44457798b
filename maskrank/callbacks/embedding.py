"""The rank monitor's probe features in TensorBoard's embedding projector (SCIENCE.md §2).

The features :class:`~maskrank.callbacks.RepresentationRankMonitor` decomposes (final CLS token
and mean patch token of the fixed held-out probe set) are handed to
``SummaryWriter.add_embedding`` with each point's label and class name (the data contract's
``classes``) and a thumbnail of its image, so the PROJECTOR tab shows whether classes separate
(PCA, t-SNE, UMAP, coloured by class). Written at the last measurement of a fit (and every
``every_n_epochs`` when asked) and at every stand-alone validation, on rank zero, and only with a
TensorBoardLogger.

What lands in the run directory (``<step>`` is the global step zero-padded to 5 digits)::

    projector_config.pbtxt                    one entry per embedding: "<tag>:<step>"
    <step>/probe_final_cls/tensors.tsv        (N, D) features, 4 significant digits
    <step>/probe_final_cls/metadata.tsv       header "label<TAB>class", one row per point
    <step>/probe_final_cls/sprite.png         N thumbnails on a square grid
    <step>/probe_final_mean/                  the same for the mean patch token (sprite shared)

Sizes: ``N`` is the probe size capped at ``max_points`` (:data:`MAX_POINTS` at most, so the sprite
stays below TensorBoard's 8192-pixel limit); thumbnails are at most :data:`THUMBNAIL` pixels a
side. Per write, ``tensors.tsv`` takes about 6.5 bytes per value (N x D values, twice) and the
sprite 1-2 KB per point for 32-pixel images. The quickstart's probe set (640 points, 64 wide,
32-pixel images) writes 1.7 MB per write: two 0.26 MB ``tensors.tsv``, two 2.6 KB
``metadata.tsv`` and one 1.17 MB ``sprite.png`` (832 x 832 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch.nn.functional as F
from google.protobuf import text_format
from pytorch_lightning.trainer.states import TrainerFn
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from maskrank.callbacks._common import image_data, tensorboard
from maskrank.io.atomic import atomic_write_text

__all__ = [
    "MAX_POINTS",
    "THUMBNAIL",
    "WHERE",
    "EmbeddingPoints",
    "ProbeEmbedding",
    "add_embeddings",
    "compact",
    "embedding_points",
    "merge_projector_config",
    "share_sprite",
    "thumbnails",
]

MAX_POINTS = 4096  # ceil(sqrt(4096)) x 32 px = 2048 px sprite, well below TensorBoard's 8192
THUMBNAIL = 32  # pixels a side, at most
WHERE = ("final_cls", "final_mean")  # the probe features that go to the projector
HEADER = ["label", "class"]
CONFIG_FILE = "projector_config.pbtxt"


def compact(features: Tensor, digits: int = 4) -> np.ndarray:
    """``features`` (N, D) as float64, rounded to ``digits`` significant digits of its largest
    magnitude, so that ``tensors.tsv`` holds short decimals (``0.1235``) instead of float32's
    17-digit expansions; the projector's PCA, t-SNE and UMAP do not need more."""
    x = features.detach().double().cpu().numpy()
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return x
    return np.round(x, digits - 1 - math.floor(math.log10(peak)))


def thumbnails(images: Tensor, size: int = THUMBNAIL) -> Tensor:
    """uint8 images (N, C, S, S) -> float thumbnails (N, C', s, s) in [0, 1], ``s = min(S, size)``.

    ``C'`` is ``C`` for grey (1) and RGB (3) images; any other channel count is averaged to grey
    (the sprite holds grey or RGB only). Shrunk by area averaging.
    """
    x = images.float() / 255.0
    if x.shape[1] not in (1, 3):
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-1] > size or x.shape[-2] > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.clamp(0.0, 1.0)


@dataclass(frozen=True)
class EmbeddingPoints:
    """What ``add_embedding`` gets for one probe set: rows in probe order."""

    features: dict[str, np.ndarray]  # WHERE -> (N, D) compacted
    metadata: list[list[str]]  # N rows of [label, class name]
    images: Tensor  # (N, C', s, s) float thumbnails


def _tsv_cell(text: str) -> str:
    """A class name safe for one TSV cell (tabs and line breaks would shift the columns)."""
    return " ".join(str(text).split()) or "?"


def embedding_points(
    features: dict[str, Tensor],
    labels: Tensor,
    classes: Sequence[str],
    images: Tensor,
    thumbnail: int = THUMBNAIL,
) -> EmbeddingPoints:
    """The projector's points: features ``WHERE`` (N, D), labels (N,), uint8 images (N, C, S, S).

    A label without a class name (outside ``classes``) is shown by its number.
    """
    n = labels.shape[0]
    for where in WHERE:
        if features[where].shape[0] != n:
            raise ValueError(f"{where}: {features[where].shape[0]} feature rows for {n} labels")
    names = [_tsv_cell(c) for c in classes]
    metadata = [
        [str(label), names[label] if 0 <= label < len(names) else str(label)]
        for label in labels.tolist()
    ]
    return EmbeddingPoints(
        {where: compact(features[where]) for where in WHERE},
        metadata,
        thumbnails(images, thumbnail),
    )


def _read_config(path: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except (text_format.ParseError, UnicodeDecodeError):
            return ProjectorConfig()  # unreadable: the entries of this process replace it
    return config


def merge_projector_config(before: ProjectorConfig, after: ProjectorConfig) -> ProjectorConfig:
    """``after``'s entries, preceded by those of ``before`` it does not replace (same files).

    A SummaryWriter rewrites ``projector_config.pbtxt`` from the entries *it* added, so a fit
    resumed into its run directory would otherwise drop the embeddings of the earlier process.
    """
    merged = ProjectorConfig()
    paths = {e.tensor_path for e in after.embeddings}
    merged.embeddings.extend(e for e in before.embeddings if e.tensor_path not in paths)
    merged.embeddings.extend(after.embeddings)
    return merged


def share_sprite(config: ProjectorConfig, step: int) -> None:
    """Point every entry of ``step`` without a sprite at the sprite of the first tag's entry
    (the points are the same images, so one sprite file per step is enough)."""
    first = f"probe_{WHERE[0]}:{step:05d}"
    source = next((e for e in config.embeddings if e.tensor_name == first), None)
    if source is None or not source.HasField("sprite"):
        return
    for entry in config.embeddings:
        if entry.tensor_name.endswith(f":{step:05d}") and not entry.HasField("sprite"):
            entry.sprite.CopyFrom(source.sprite)


def add_embeddings(writer: SummaryWriter, points: EmbeddingPoints, step: int) -> None:
    """Write ``points`` (every feature in ``WHERE``, tag ``probe_<where>``) at ``step`` through
    ``writer`` (a torch SummaryWriter), keeping earlier processes' projector entries. The
    thumbnails are written once, with the first tag, and shared."""
    path = Path(writer.get_logdir()) / CONFIG_FILE
    before = _read_config(path)
    for i, (where, mat) in enumerate(points.features.items()):
        writer.add_embedding(
            mat,
            metadata=points.metadata,
            metadata_header=HEADER,
            label_img=points.images if i == 0 else None,
            global_step=step,
            tag=f"probe_{where}",
        )
    after = _read_config(path)
    share_sprite(after, step)
    merged = merge_projector_config(before, after)
    atomic_write_text(path, text_format.MessageToString(merged))


class ProbeEmbedding:
    """Keeps the latest probe features on rank zero and writes them to the projector when due.

    Args:
        every_n_epochs: also write after every this many epochs of a fit (at measurements only);
            None: only the last measurement of the fit. A stand-alone validation always writes.
        max_points: the first this many probe points go to the projector (1..MAX_POINTS).
        thumbnail: the thumbnails' largest side in pixels (1..THUMBNAIL).
    """

    def __init__(
        self, every_n_epochs: int | None = None, max_points: int = 1024, thumbnail: int = THUMBNAIL
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self.thumbnail = thumbnail
        self._kept: dict[str, Tensor] | None = None  # WHERE -> (n, D) float32 on the CPU
        self._step = -1
        self._written = True

    def offer(self, trainer: pl.Trainer, features: dict[str, Tensor]) -> None:
        """Keep this measurement's features (rank zero); write them now if due."""
        # a compact copy: a slice would keep the whole probe's features alive until the next one
        self._kept = {
            w: features[w][: self.max_points].detach().float().cpu().clone() for w in WHERE
        }
        self._step, self._written = trainer.global_step, False
        fitting = trainer.state.fn == TrainerFn.FITTING
        every = self.every_n_epochs
        if not fitting or (every is not None and (trainer.current_epoch + 1) % every == 0):
            self.write(trainer)

    def flush(self, trainer: pl.Trainer) -> None:
        """Write the last kept features unless already written (the end of a fit)."""
        if self._kept is not None and not self._written:
            self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """The kept features, their labels, class names and thumbnails to the projector."""
        logger = tensorboard(trainer)
        data = image_data(trainer, type(self).__name__, set())
        if logger is None or data is None or self._kept is None:
            return
        n = self._kept[WHERE[0]].shape[0]
        raw, labels = data.probe_batch(n)  # (n, C, S, S) uint8: a prefix of the monitor's probe
        points = embedding_points(self._kept, labels, data.classes, raw, self.thumbnail)
        add_embeddings(logger.experiment, points, self._step)
        self._written = True
