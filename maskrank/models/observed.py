"""What maskrank's callbacks read from a task: a small typed Protocol both tasks implement.

Callbacks observe; they never reach into a task's attributes or hyperparameters. Anything they
need comes through this interface, so a new task works with every monitor by implementing it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from maskrank.models.features import EncoderFeatures
from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.masking import MaskingSpec

__all__ = ["Encodes", "ObservedTask"]


@runtime_checkable
class Encodes(Protocol):
    """All a representation monitor needs: unmasked features of a batch of images."""

    def encode(self, images: Tensor) -> EncoderFeatures:
        """Unmasked features of normalized ``images`` (B, C, H, W) for probes and rank metrics."""
        ...


@runtime_checkable
class ObservedTask(Encodes, Protocol):
    """The surface of a task that callbacks use (``MAEPretraining``, ``ImageClassifier``)."""

    @property
    def encoder(self) -> VisionTransformer:
        """The timm ViT being trained (a classifier's head included)."""
        ...

    @property
    def masked_autoencoder(self) -> MaskedAutoencoder | None:
        """The MAE around the encoder, or None for a task without one."""
        ...

    @property
    def masking(self) -> MaskingSpec | None:
        """The run's masking (its ``eval_ratio`` is the one evaluation ratio), or None."""
        ...

    def explicit_dropout_rates(self) -> dict[nn.Module, float]:
        """``fc2`` module -> ``p`` of every explicit dropout penalty in the loss."""
        ...
