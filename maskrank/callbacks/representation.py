"""Rank of the encoder's representations on a fixed probe set (SCIENCE.md §1-2).

After every ``every_n_epochs`` validation epochs (never in the sanity check) the encoder embeds the
datamodule's fixed held-out probe set (``probe_batch``), unaugmented, in eval mode and without
masking, through ``pl_module.encode`` (``MAEPretraining`` and ``ImageClassifier`` both have it).
Under DDP each rank embeds a contiguous shard, the features are gathered, and rank zero decomposes
them, so the numbers do not depend on the number of devices.

The probe features are shared with :class:`maskrank.callbacks.OnlineKNN` when both run after the
same validation epoch (one forward pass; see :mod:`maskrank.callbacks._features`).

Logged (``<where>`` = ``final_cls``, ``final_mean``, ``block03_cls``, ``block03_mean``, ``tokens``):

* ``rank/<where>/<metric>`` scalars. For ``final_*`` and ``tokens``: ``effective_rank`` (RankMe, on
  raw features), ``stable_rank``, ``numerical_rank_1e-3``, ``energy_rank_0.9``,
  ``energy_rank_0.99``, ``normalized_nuclear_norm``, and on the centred covariance ``alpha_req`` and
  ``participation_ratio``. Per block only ``effective_rank`` and ``stable_rank``, unless
  ``all_metrics`` (then per block the full set, and everywhere also ``nuclear_norm``,
  ``spectral_norm`` and ``frobenius_norm``, which depend on the feature scale).
* with ``lidar``: ``rank/final_cls/lidar`` and ``rank/final_mean/lidar``, LiDAR (SCIENCE.md §9) of
  ``lidar.views`` augmented views of ``lidar.samples`` fixed training images
  (:mod:`maskrank.callbacks.lidar_views`).
* ``spectrum/<where>`` histograms of the singular values (final features and tokens; every block
  too with ``all_metrics``) and a ``spectrum_plot/representation`` image: ``σ_k / σ_1`` against
  ``k`` (log scale) for the final features, and the effective rank of every block's CLS and mean
  token, with the data's intrinsic rank (the data contract's ``intrinsic_rank``, where known) as a
  reference line in both panels. Both need a TensorBoardLogger; the scalars go to every logger.
* with ``embedding``: the probe set's final CLS and mean features in TensorBoard's PROJECTOR tab,
  with labels, class names and thumbnails, at the last measurement of a fit (and every
  ``embedding_every_n_epochs``); files and sizes in :mod:`maskrank.callbacks.embedding`.
"""

from __future__ import annotations

import re

import pytorch_lightning as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from maskrank.callbacks._common import (
    due_after_validation,
    image_data,
    log_from_rank_zero,
    observed,
    probe_images,
    skip_nonfinite,
    tensorboard,
)
from maskrank.callbacks._features import (
    clear_feature_cache,
    embed_cached,
    merge_shards,
    shard_bounds,
)
from maskrank.callbacks.embedding import MAX_POINTS, ProbeEmbedding
from maskrank.callbacks.lidar_views import (
    LidarSpec,
    check_augmenting,
    lidar_embeddings,
    lidar_metrics,
)
from maskrank.errors import ConfigError
from maskrank.metrics import (
    alpha_req,
    covariance_eigenvalues,
    participation_ratio,
    singular_values,
    spectrum_metrics,
)
from maskrank.models.observed import Encodes

__all__ = ["RepresentationRankMonitor", "merge_shards", "shard_bounds"]

_FALLBACK_PROBE_SIZE = 2048  # when the module has no ``encoder.embed_dim`` to scale from
_SCALE_METRICS = ("nuclear_norm", "spectral_norm", "frobenius_norm")
_BLOCK_METRICS = ("effective_rank", "stable_rank")


class RepresentationRankMonitor(pl.Callback):
    """Log the spectrum metrics of encoder features on a fixed probe set (SCIENCE.md §1-2).

    Args:
        every_n_epochs: measure after every this many validation epochs of a fit (a stand-alone
            validate always measures). At the default 5 the monitor costs 0.87 % of a ViT-Tiny
            MAE's CIFAR-10 training on one CPU core (docs/RESULTS.md#rank-callback-cost): one
            probe pass of 10·D full-token images costs about 4 % of an epoch.
        probe_size: images in the probe set; None means 10 x the encoder width (RankMe needs about
            10·D samples), clamped to the held-out split's size. Keep it fixed to compare runs.
        batch_size: images per forward pass of the probe (memory, not results).
        per_block: also measure the CLS and mean-patch token after every encoder block.
        token_matrix: also measure the matrix of all final patch tokens, shape (N·L, D).
        all_metrics: log every metric for every feature (per block too), norms included; the
            default keeps per-block tags to effective and stable rank.
        histograms: log singular-value histograms ``spectrum/<where>`` (TensorBoard only).
        plot: log the ``spectrum_plot/representation`` figure (TensorBoard only).
        lidar: also log LiDAR, e.g. ``{views: 8, samples: 1000}`` (``LidarSpec``); None: off.
            It embeds ``views x samples`` images, so it costs that many probe images.
        embedding: send the probe features (final CLS and mean token) with labels, class names
            and 32-pixel thumbnails to TensorBoard's projector (TensorBoard only): at the last
            measurement of a fit, at every stand-alone validation, and every
            ``embedding_every_n_epochs``. False: never.
        embedding_every_n_epochs: also write the projector files after every this many epochs of
            a fit; a multiple of ``every_n_epochs`` (they are the monitor's features). None: the
            last measurement of the fit only (each write keeps its own files, see
            :mod:`maskrank.callbacks.embedding` for their sizes).
        embedding_points: the first this many probe points go to the projector (1 to 4096;
            about 8 bytes per point and feature dimension, per feature, per write).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        probe_size: int | None = None,
        batch_size: int = 256,
        per_block: bool = True,
        token_matrix: bool = False,
        all_metrics: bool = False,
        histograms: bool = True,
        plot: bool = True,
        lidar: LidarSpec | None = None,
        embedding: bool = True,
        embedding_every_n_epochs: int | None = None,
        embedding_points: int = 1024,
    ) -> None:
        if every_n_epochs < 1 or batch_size < 1 or (probe_size is not None and probe_size < 2):
            raise ValueError(
                "RepresentationRankMonitor: every_n_epochs and batch_size must be >= 1 and "
                f"probe_size >= 2 or None, got {every_n_epochs}, {batch_size}, {probe_size}"
            )
        _check_embedding(every_n_epochs, embedding_every_n_epochs, embedding_points)
        self.every_n_epochs = every_n_epochs
        self.probe_size = probe_size
        self.batch_size = batch_size
        self.per_block = per_block
        self.token_matrix = token_matrix
        self.all_metrics = all_metrics
        self.histograms = histograms
        self.plot = plot
        self.lidar = lidar
        self.embedding = embedding
        self.embedding_every_n_epochs = embedding_every_n_epochs
        self.embedding_points = embedding_points
        self._embedding = (
            ProbeEmbedding(embedding_every_n_epochs, embedding_points) if embedding else None
        )
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    def extra_repr(self) -> str:
        """The configuration, for ``repr``."""
        return (
            f"every_n_epochs={self.every_n_epochs}, probe_size={self.probe_size}, "
            f"per_block={self.per_block}, token_matrix={self.token_matrix}, "
            f"all_metrics={self.all_metrics}, lidar={self.lidar}, embedding={self.embedding}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.lidar is not None:
            check_augmenting(trainer.datamodule)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clear_feature_cache(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        if observed(pl_module, type(self).__name__, self._warned, Encodes) is None:
            return
        images = probe_images(
            trainer, pl_module, self._size(pl_module), type(self).__name__, self._warned
        )
        if images is None:
            return
        features = self._gather_features(trainer, pl_module, images)  # every rank takes part
        views = None
        if self.lidar is not None:
            views = lidar_embeddings(trainer, pl_module, self.lidar, self.batch_size)
        metrics = None
        if trainer.is_global_zero:
            measured = skip_nonfinite(trainer, type(self).__name__, lambda: self._measure(features))
            if isinstance(measured, dict):  # skipped: non-finite features, logged as such
                metrics = measured
            else:
                metrics, spectra = measured
                if views is not None:
                    metrics.update(
                        skip_nonfinite(trainer, type(self).__name__, lambda: lidar_metrics(views))
                    )
                self._log_pictures(trainer, spectra, metrics)
                if self._embedding is not None:
                    self._embedding.offer(trainer, features)
        self.last_metrics = log_from_rank_zero(trainer, pl_module, metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the fit's last measurement goes to the projector (the features were kept on rank zero)
        if trainer.is_global_zero and self._embedding is not None:
            self._embedding.flush(trainer)

    # ------------------------------------------------------------------------------ features
    def _size(self, pl_module: pl.LightningModule) -> int:
        if self.probe_size is not None:
            return self.probe_size
        # a maskrank task's ViT width; a bare Encodes module gets the fallback size
        width = getattr(getattr(pl_module, "encoder", None), "embed_dim", None)
        return 10 * int(width) if width else _FALLBACK_PROBE_SIZE

    def _gather_features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor
    ) -> dict[str, Tensor]:
        """Features of the whole probe set on every rank (one forward pass shared with the other
        evaluation callbacks of this validation epoch)."""
        name = ("heldout", images.shape[0])
        features = embed_cached(
            trainer, pl_module, name, images, self.batch_size, tokens=self.token_matrix
        )
        return {
            key: value
            for key, value in features.items()
            if (self.per_block or not key.startswith("block"))
            and (self.token_matrix or key != "tokens")
        }

    # ------------------------------------------------------------------------------ metrics
    def _measure(self, features: dict[str, Tensor]) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Scalars ``rank/<where>/<metric>`` and singular values (K,) per ``<where>``."""
        metrics: dict[str, float] = {}
        spectra: dict[str, Tensor] = {}
        for where, value in features.items():
            x = value.reshape(-1, value.shape[-1]).double().cpu()  # (N or N·L, D)
            sv = singular_values(x)  # (min(N, D),) descending
            spectra[where] = sv
            full = self.all_metrics or not where.startswith("block")
            values = self._matrix_metrics(x, sv, full)
            metrics.update({f"rank/{where}/{name}": v for name, v in values.items()})
        return metrics, spectra

    def _matrix_metrics(self, x: Tensor, sv: Tensor, full: bool) -> dict[str, float]:
        """Metrics of one feature matrix ``x`` (N, D) with singular values ``sv``."""
        spec = spectrum_metrics(sv=sv)
        if not full:
            return {name: spec[name] for name in _BLOCK_METRICS}
        if not self.all_metrics:
            spec = {k: v for k, v in spec.items() if k not in _SCALE_METRICS}
        eig = covariance_eigenvalues(x)  # (D,) of the centred covariance
        spec["participation_ratio"] = participation_ratio(eigenvalues=eig)
        try:
            spec["alpha_req"] = alpha_req(eigenvalues=eig)
        except ValueError:  # rank < 2 (e.g. collapsed features): no slope to fit, not logged
            pass
        return spec

    # ------------------------------------------------------------------------------ pictures
    def _log_pictures(
        self, trainer: pl.Trainer, spectra: dict[str, Tensor], metrics: dict[str, float]
    ) -> None:
        logger = tensorboard(trainer)
        if logger is None:
            return
        step = trainer.global_step
        if self.histograms:
            for where, sv in spectra.items():
                if self.all_metrics or not where.startswith("block"):
                    logger.experiment.add_histogram(f"spectrum/{where}", sv.float(), step)
        if self.plot:
            data = image_data(trainer, type(self).__name__, self._warned)
            known = data.intrinsic_rank if data is not None else None
            figure = spectrum_figure(spectra, metrics, intrinsic_rank=known)
            logger.experiment.add_figure("spectrum_plot/representation", figure, step, close=False)


def _check_embedding(every: int, embedding_every: int | None, points: int) -> None:
    if embedding_every is not None and (embedding_every < 1 or embedding_every % every):
        raise ConfigError(
            f"RepresentationRankMonitor: embedding_every_n_epochs = {embedding_every} must be a "
            f"positive multiple of every_n_epochs = {every} (the projector gets the monitor's "
            "features), or None for the last measurement only"
        )
    if not 1 <= points <= MAX_POINTS:
        raise ConfigError(
            f"RepresentationRankMonitor: embedding_points = {points} must be in [1, {MAX_POINTS}]"
        )


def spectrum_figure(
    spectra: dict[str, Tensor],
    metrics: dict[str, float],
    floor: float = 1e-4,
    intrinsic_rank: int | None = None,
) -> Figure:
    """Left: ``σ_k / σ_1`` against ``k`` (log) for the final CLS token, the mean patch token and
    the token matrix, down to ``floor`` (below it is numerical noise); right: effective rank per
    block, for CLS and mean tokens, on integer block ticks. A known ``intrinsic_rank`` of the data
    is drawn in both: a vertical line at ``k = intrinsic_rank`` on the left, where a spectrum that
    learned the data's structure drops, and a horizontal line on the right.

    A pyplot-free Agg figure (no global matplotlib state, safe without a display).
    """
    labels = {"final_cls": "CLS token", "final_mean": "mean patch token", "tokens": "all tokens"}
    figure = Figure(figsize=(10.0, 3.8), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    for where, label in labels.items():
        if where in spectra:
            sv = spectra[where]  # (K,) descending
            rel = (sv / sv[0].clamp_min(1e-300)).clamp_min(floor / 10)
            erank = metrics.get(f"rank/{where}/effective_rank")
            suffix = "" if erank is None else f" (effective rank {erank:.1f})"
            left.semilogy(range(1, sv.numel() + 1), rel.numpy(), label=label + suffix)
    if intrinsic_rank is not None:
        left.axvline(intrinsic_rank, **_reference_line(intrinsic_rank))
    left.set_ylim(floor, 1.5)
    left.set(xlabel="k", ylabel="σ_k / σ_1", title="singular values of the final features")
    if left.has_data():
        left.legend(fontsize=8)
    for kind, label in (("cls", "CLS token"), ("mean", "mean patch token")):
        curve = sorted(
            (int(m.group(1)), value)
            for key, value in metrics.items()
            if (m := re.fullmatch(rf"rank/block(\d+)_{kind}/effective_rank", key))
        )  # [(block, effective rank)]
        if curve:
            right.plot(*zip(*curve, strict=True), marker="o", label=label)
    if intrinsic_rank is not None:
        right.axhline(intrinsic_rank, **_reference_line(intrinsic_rank))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(xlabel="block", ylabel="effective rank", title="effective rank per block")
    if right.has_data():
        right.legend(fontsize=8)
    return figure


def _reference_line(rank: int) -> dict:
    """Matplotlib style of the intrinsic-rank reference line."""
    return {"color": "0.4", "linestyle": "--", "linewidth": 1.0, "label": f"data's rank {rank}"}
