"""The online linear probe and the uniformity term of MAE pretraining (SCIENCE.md §9).

* The probe (whitening with running statistics, then a linear layer: a linear classifier of the
  features, :class:`RunningWhitening`) sees its features detached, so its loss never reaches the
  encoder. It reads either an extra gradient-free, eval-mode pass of the encoder over every token
  (``unmasked``: the features an offline probe reads; :func:`unmasked_feature`) or the training
  step's own masked pass over the visible tokens (``visible``: latent (B, 1 + K, D), no extra
  pass, but features an offline probe never sees: the CLS token of 25 % of the patches).
* The uniformity term (Wang & Isola 2020; U-MAE, Zhang et al. 2022) reads the visible-token latent
  with its graph and pushes the encoder to spread it over more directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from maskrank.models.features import EncoderFeatures

__all__ = [
    "Feature",
    "OnlineLinearProbe",
    "ProbeInput",
    "RunningWhitening",
    "latent_feature",
    "unmasked_feature",
]

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


class RunningWhitening(nn.Module):
    """``(x - mean) @ W.T`` with ``W = L^-1``, ``L L^T = cov + ridge I``: (B, D) -> (B, D).

    Why not MAE's per-coordinate BatchNorm: an MAE's CLS features are strongly anisotropic (a
    few directions hold most of the variance, and per-coordinate standardisation leaves that as
    it is), and a linear head trained by AdamW on such inputs learns the low-variance directions,
    where the classes often differ, only after many epochs. Whitened inputs make the head's loss
    about equally curved in every direction (docs/guides/online_eval.md). The map is affine, so
    the probe stays a linear classifier of the features.

    ``mean`` and ``cov`` are running estimates (the plain average of the first 10 training
    batches, then momentum 0.1 as BatchNorm's), updated in training mode before they whiten the
    batch, so one batch's covariance, singular when B <= D, never whitens alone. Few samples
    estimate a D x D covariance badly, and whitening with it amplifies directions that only look
    quiet: the covariance is shrunk to its diagonal by ``D / (n + D)``, n the effective number of
    samples behind it (at n = 0 this is BatchNorm's standardisation; the quickstart runs at
    n ~ 19 x 128, shrinkage 0.03). ``ridge = eps * trace(cov) / D`` then bounds how much any
    direction is amplified (by at most ``eps^-1/2``). Cost per call: a D x D Cholesky
    factorisation and triangular inverse in float64.

    Args:
        dim: feature width D.
        eps: the ridge as a fraction of the mean variance.
        momentum: weight of each training batch in the running estimates.
    """

    def __init__(self, dim: int, eps: float = 1e-2, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_cov", torch.eye(dim))
        # sum of the squared weights of the samples in the running estimates: 1 / effective count
        self.register_buffer("weight_sq", torch.tensor(float("inf")))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A per-coordinate probe's state (BatchNorm1d: running_var, no covariance) loads as the
        # diagonal covariance with no samples behind it, i.e. fully shrunk to that diagonal: the
        # same standardisation until the next training batch restarts the estimates.
        var = state_dict.pop(prefix + "running_var", None)
        if var is not None and prefix + "running_cov" not in state_dict:
            state_dict[prefix + "running_cov"] = torch.diag(var)
            state_dict[prefix + "weight_sq"] = torch.tensor(float("inf"))
            state_dict[prefix + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        """Fold the batch's mean (D,) and unbiased covariance (D, D) into the running ones."""
        mean = x.mean(dim=0)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        # a plain average of the batches until 1 / momentum of them, then exponential (tensors
        # throughout: no host sync on an accelerator)
        weight = (1.0 / (self.num_batches_tracked + 1).float()).clamp_min(self.momentum)
        self.running_mean.lerp_(mean, weight.to(mean.dtype))
        self.running_cov.lerp_(cov, weight.to(cov.dtype))
        old = torch.nan_to_num(self.weight_sq, posinf=0.0)
        self.weight_sq.copy_((1 - weight) ** 2 * old + weight**2 / x.shape[0])
        self.num_batches_tracked += 1

    def shrinkage(self) -> torch.Tensor:
        """``D / (n + D)`` (0-d), n the effective number of samples behind the running
        covariance (1 before any): how far the covariance is pulled to its diagonal."""
        dim = self.running_cov.shape[0]
        return dim / (self.weight_sq.reciprocal() + dim)

    def whitening_matrix(self) -> torch.Tensor:
        """``W = L^-1`` (D, D) of the shrunk running covariance plus the ridge, float64."""
        cov = self.running_cov.double()
        dim = cov.shape[0]
        alpha = self.shrinkage()
        cov = (1 - alpha) * cov + alpha * torch.diag(cov.diagonal())
        ridge = self.eps * cov.diagonal().mean().clamp_min(torch.finfo(cov.dtype).tiny)
        eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
        factor, _ = torch.linalg.cholesky_ex(cov + ridge * eye)  # no host sync on an error flag
        return torch.linalg.solve_triangular(factor, eye, upper=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: bf16 rounding of x would be amplified in the directions of
        # small variance that whitening scales up
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.training and x.shape[0] > 1:  # a covariance needs two samples
                self._update(x)
            matrix = self.whitening_matrix().float()
            return (x - self.running_mean) @ matrix.T


class OnlineLinearProbe(nn.Module):
    """``Linear(RunningWhitening(x))`` on detached features (B, D) -> logits (B, C).

    The linear layer starts at zero and is built without drawing from the global RNG, so adding
    the probe to a run changes neither the encoder's initialization nor the masks it later draws
    (the encoder trains bit-identically with and without it).

    Args:
        dim: feature width D.
        num_classes: classes C.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = RunningWhitening(dim)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws; keep it private
            self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features.detach()))  # (B, C); no gradient to the encoder
