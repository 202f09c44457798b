"""The online linear probe and the uniformity term of MAE pretraining (SCIENCE.md §9).

Both read the encoder's output on the *visible* tokens of the training step's own masked pass
(latent (B, 1 + K, D)), so neither needs a forward pass of its own:

* the probe (BatchNorm without affine parameters, then a linear layer, as in MAE's linear-probe
  protocol) sees the features detached, so its loss never reaches the encoder;
* the uniformity term (Wang & Isola 2020; U-MAE, Zhang et al. 2022) sees them with their graph and
  pushes the encoder to spread them over more directions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["Feature", "OnlineLinearProbe", "latent_feature"]

Feature = Literal["cls", "mean"]


def latent_feature(latent: torch.Tensor, feature: Feature) -> torch.Tensor:
    """The CLS token or the mean of the visible patch tokens of ``latent`` (B, 1 + K, D) -> (B, D)."""
    return latent[:, 0] if feature == "cls" else latent[:, 1:].mean(dim=1)


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
