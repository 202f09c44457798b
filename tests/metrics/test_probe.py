from __future__ import annotations

import pytest
import torch

from maskrank.metrics import linear_probe_accuracy


def _blobs(n: int, d: int, k: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = 5.0 * torch.randn(k, d, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, k, (n,), generator=g)
    return centers[labels] + spread * torch.randn(n, d, generator=g), labels


def test_separable_features_are_probed_perfectly():
    xtr, ytr = _blobs(300, 16, 4, 0.5, 0)
    xte, yte = _blobs(200, 16, 4, 0.5, 1)
    assert linear_probe_accuracy(xtr, ytr, xte, yte) == 1.0


def test_uninformative_features_give_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(400, 8, generator=g), torch.randn(2000, 8, generator=g)
    ytr, yte = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(linear_probe_accuracy(xtr, ytr, xte, yte) - 0.25) < 0.05


def test_scale_of_features_does_not_matter():
    xtr, ytr = _blobs(300, 16, 4, 4.0, 0)
    xte, yte = _blobs(200, 16, 4, 4.0, 1)
    a = linear_probe_accuracy(xtr, ytr, xte, yte)
    b = linear_probe_accuracy(1e3 * xtr, ytr, 1e3 * xte, yte)
    assert a == pytest.approx(b, abs=0.01)


def test_bad_inputs():
    x, y = _blobs(10, 4, 2, 1.0, 0)
    with pytest.raises(ValueError, match="labels"):
        linear_probe_accuracy(x, y[:5], x, y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        linear_probe_accuracy(bad, y, x, y)
