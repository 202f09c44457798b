"""Linear-probe accuracy of frozen features: a label-using yardstick for the label-free ranks.

A multinomial logistic regression on standardized features, trained full-batch with L-BFGS (the
features of a probe set fit in memory; L-BFGS converges in a few dozen iterations with no learning
rate to tune). Used by the learning checks and by sweeps that correlate RankMe with probe accuracy
(SCIENCE.md §7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskrank.metrics._checks import check_finite


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be (N, D), got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name} labels must be (N,) matching the features' N={features.shape[0]}")
    check_finite(features, f"{name} features")


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Test accuracy in [0, 1] of a logistic-regression probe trained on the train features.

    Features are standardized with the train set's mean and std (as a BatchNorm without affine
    parameters would, MAE's linear-probe protocol); ``weight_decay`` is an L2 penalty on the
    weights. Raises ValueError on mismatched shapes, non-finite features or fewer than 2 classes.
    """
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    if num_classes < 2:
        raise ValueError("a linear probe needs at least 2 classes")
    # callable from a Lightning validation hook, which runs under inference mode: the fit
    # needs autograd, so it leaves inference mode and works on ordinary copies of the inputs
    with torch.inference_mode(False), torch.enable_grad():
        x = train_features.detach().double().cpu().clone()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        x = (x - mean) / std  # (N, D)
        y = train_labels.cpu().clone()
        w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        xt = (test_features.detach().double().cpu() - mean) / std
        pred = (xt @ w + b).argmax(dim=1)
    return float((pred == test_labels.cpu()).double().mean())
