"""Weighted k-NN accuracy of the encoder's features during pretraining (SCIENCE.md §9).

After every ``every_n_epochs`` validation epochs (never in the sanity check; a stand-alone
validate always measures) the encoder embeds, in eval mode and without masking:

* a fixed labelled **bank** of ``bank_size`` training images (unaugmented), and
* the fixed held-out **probe** set of ``probe_size`` images (the representation monitor's),

and the callback logs the weighted k-NN accuracy (cosine, ``k`` neighbours, weights
``exp(s / temperature)``) of the probe against the bank, for the CLS token and the mean patch
token: ``eval/knn_acc/final_cls`` and ``eval/knn_acc/final_mean`` (``<where>`` as in the monitor's
``rank/<where>/...`` tags). With ``linear_probe`` (default) it also fits a logistic-regression
probe on the same bank features (standardised, L-BFGS: the offline protocol of
:func:`maskrank.metrics.linear_probe_accuracy`) and logs its accuracy on the probe set,
``eval/linear_acc/<where>``: an offline linear probe at the cost of one small convex fit, the
reference the online probe of :class:`~maskrank.tasks.MAEPretraining` is judged against. Under
DDP both sets are sharded over the ranks and the features gathered, so the accuracy does not
depend on the device count. When
:class:`~maskrank.callbacks.RepresentationRankMonitor` measures the same probe set after the same
validation epoch, the probe features come from its forward pass (one pass, not two).
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from maskrank.callbacks._common import due_after_validation, log_from_rank_zero, probe_images
from maskrank.callbacks._features import clear_feature_cache, embed, embed_cached
from maskrank.data import is_image_data
from maskrank.errors import ConfigError
from maskrank.metrics import knn_accuracy, linear_probe_accuracy

__all__ = ["OnlineKNN"]

_FALLBACK_SIZE = 2048  # when the module has no ``encoder.embed_dim`` to scale from
_WHERE = ("final_cls", "final_mean")


def _flag(name: str) -> str:
    return f"OnlineKNN {name} (trainer.callbacks[...].init_args.{name})"


class OnlineKNN(pl.Callback):
    """Log weighted k-NN accuracy of unmasked CLS and mean-patch features (SCIENCE.md §9).

    Args:
        every_n_epochs: measure after every this many validation epochs of a fit. The default
            matches RepresentationRankMonitor's, so both share the probe pass.
        bank_size: labelled training images in the bank; None means 10 x the encoder width,
            clamped to the training split's size. Fixed (seeded) for the whole run.
        probe_size: held-out query images; None means 10 x the encoder width, as the
            representation monitor's probe set (so both use the same images and one pass).
        k: neighbours per query (the usual protocol: 20); at most the bank's size.
        temperature: ``T`` of the vote weights ``exp(cosine / T)`` (the usual protocol: 0.07).
        batch_size: images per forward pass (memory, not results).
        linear_probe: also log ``eval/linear_acc/<where>``, a logistic-regression probe fitted
            on the bank's features and tested on the probe set (no extra forward pass).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        bank_size: int | None = None,
        probe_size: int | None = None,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 256,
        linear_probe: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"{_flag('every_n_epochs')} must be >= 1, got {every_n_epochs}")
        if batch_size < 1:
            raise ConfigError(f"{_flag('batch_size')} must be >= 1, got {batch_size}")
        if k < 1:
            raise ConfigError(f"{_flag('k')} must be >= 1, got {k}")
        if bank_size is not None and bank_size < 1:
            raise ConfigError(f"{_flag('bank_size')} must be >= 1 or None, got {bank_size}")
        if probe_size is not None and probe_size < 1:
            raise ConfigError(f"{_flag('probe_size')} must be >= 1 or None, got {probe_size}")
        if not temperature > 0:
            raise ConfigError(f"{_flag('temperature')} must be > 0, got {temperature}")
        self.every_n_epochs = every_n_epochs
        self.bank_size = bank_size
        self.probe_size = probe_size
        self.k = k
        self.temperature = temperature
        self.batch_size = batch_size
        self.linear_probe = linear_probe
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"OnlineKNN(every_n_epochs={self.every_n_epochs}, bank_size={self.bank_size}, "
            f"probe_size={self.probe_size}, k={self.k}, temperature={self.temperature}, "
            f"linear_probe={self.linear_probe})"
        )

    def _size(self, pl_module: pl.LightningModule, size: int | None) -> int:
        if size is not None:
            return size
        width = getattr(getattr(pl_module, "encoder", None), "embed_dim", None)
        return 10 * int(width) if width else _FALLBACK_SIZE

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse, before any training, a datamodule without labels or a ``k`` above the bank."""
        dm = trainer.datamodule
        if not is_image_data(dm) or dm.num_classes < 2:
            name = type(dm).__name__ if dm is not None else "no datamodule"
            raise ConfigError(
                f"OnlineKNN needs a maskrank datamodule (maskrank.data.ImageData) with class "
                f"labels (num_classes >= 2); got {name}: remove OnlineKNN from trainer.callbacks"
            )
        _, labels = dm.probe_batch(self._size(pl_module, self.bank_size), "train")
        if self.k > labels.shape[0]:
            raise ConfigError(
                f"{_flag('k')} = {self.k} is larger than the bank of {labels.shape[0]} training "
                f"images; lower k or raise bank_size"
            )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clear_feature_cache(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        if not callable(getattr(pl_module, "encode", None)):
            if "encode" not in self._warned:
                self._warned.add("encode")
                rank_zero_warn("OnlineKNN needs a module with .encode(images); skipped.")
            return
        owner = type(self).__name__
        bank = probe_images(
            trainer,
            pl_module,
            self._size(pl_module, self.bank_size),
            owner,
            self._warned,
            split="train",
            with_labels=True,
        )
        probe = probe_images(
            trainer,
            pl_module,
            self._size(pl_module, self.probe_size),
            owner,
            self._warned,
            with_labels=True,
        )
        if bank is None or probe is None:
            return
        (bank_images, bank_labels), (probe_images_, probe_labels) = bank, probe
        # every rank takes part in both passes; the probe pass is shared with the rank monitor
        bank_features = embed(trainer, pl_module, bank_images, self.batch_size)
        name = ("heldout", probe_images_.shape[0])
        probe_features = embed_cached(trainer, pl_module, name, probe_images_, self.batch_size)
        metrics = None
        if trainer.is_global_zero:
            metrics = self.measure(bank_features, bank_labels, probe_features, probe_labels)
        self.last_metrics = log_from_rank_zero(trainer, pl_module, metrics)

    def measure(
        self,
        bank: dict[str, Tensor],
        bank_labels: Tensor,
        probe: dict[str, Tensor],
        probe_labels: Tensor,
    ) -> dict[str, float]:
        """``eval/knn_acc/<where>`` (and ``eval/linear_acc/<where>``) for CLS and mean-patch."""
        out = {}
        for where in _WHERE:
            train, test = bank[where].cpu(), probe[where].cpu()
            out[f"eval/knn_acc/{where}"] = knn_accuracy(
                train, bank_labels, test, probe_labels, self.k, self.temperature
            )
            if self.linear_probe:
                out[f"eval/linear_acc/{where}"] = linear_probe_accuracy(
                    train, bank_labels, test, probe_labels
                )
        return out
