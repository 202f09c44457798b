"""The online linear probe and the uniformity term of MAE pretraining (SCIENCE.md §9).

* The probe (BatchNorm without affine parameters, then a linear layer, as in MAE's linear-probe
  protocol) sees its features detached, so its loss never reaches the encoder. It reads either
  an extra gradient-free, eval-mode pass of the encoder over every token (``unmasked``: the
  features an offline probe reads; :func:`unmasked_feature`) or the training step's own masked
  pass over the visible tokens (``visible``: latent (B, 1 + K, D), no extra pass, but features an
  offline probe never sees: the CLS token of 25 % of the patches).
* The uniformity term (Wang & Isola 2020; U-MAE, Zhang et al. 2022) reads the visible-token latent
  with its graph and pushes the encoder to spread it over more directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from maskrank.models.features import EncoderFeatures

__all__ = ["Feature", "OnlineLinearProbe", "ProbeInput", "latent_feature", "unmasked_feature"]

Feature = Literal["cls", "mean"]
ProbeInput = Literal["unmasked", "visible"]


def latent_feature(latent: torch.Tensor, feature: Feature) -> torch.Tensor:
    """The CLS token or the mean of the visible patch tokens of ``latent`` (B, 1 + K, D) -> (B, D)."""
    return latent[:, 0] if feature == "cls" else latent[:, 1:].mean(dim=1)


@torch.no_grad()
def unmasked_feature(
    encode: Callable[[torch.Tensor], EncoderFeatures],
    module: nn.Module,
    images: torch.Tensor,
    feature: Feature,
) -> torch.Tensor:
    """``encode(images)``'s CLS or mean-patch feature (B, D), with ``module`` in eval mode.

    Eval mode draws no dropout masks, so the extra pass leaves the global RNG (and with it the
    masks and dropout of every later training step) as it was; the mode is restored after.
    """
    was_training = module.training
    module.eval()
    try:
        features = encode(images)
    finally:
        module.train(was_training)
    return features.cls if feature == "cls" else features.patch_mean


class OnlineLinearProbe(nn.Module):
    """``Linear(BatchNorm1d(x, affine=False))`` on detached features (B, D) -> logits (B, C).

    The linear layer starts at zero and is built without drawing from the global RNG, so adding
    the probe to a run changes neither the encoder's initialization nor the masks it later draws
    (the encoder trains bit-identically with and without it).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws; keep it private
            self.norm = nn.BatchNorm1d(dim, affine=False)
            self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features.detach()))  # (B, C); no gradient to the encoder
