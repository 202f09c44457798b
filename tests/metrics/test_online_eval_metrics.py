"""k-NN accuracy, LiDAR and uniformity (SCIENCE.md §9) against their definitions."""

from __future__ import annotations

import pytest
import torch

from maskrank.metrics import knn_accuracy, knn_predict, lda_matrix, lidar, uniformity_loss

from . import _reference as ref


def _clusters(gen: torch.Generator, n_per: int, classes: int, d: int = 16, noise: float = 0.05):
    """Features around ``classes`` random unit directions, and their labels (n_per * classes,)."""
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=gen), dim=1)
    labels = torch.arange(classes).repeat_interleave(n_per)
    x = centres[labels] + noise * torch.randn(len(labels), d, generator=gen)
    return x, labels


# ------------------------------------------------------------------------------------ k-NN
def test_knn_is_perfect_on_separable_clusters(gen):
    bank, bank_y = _clusters(gen, 30, 5)
    queries, query_y = bank + 0.01 * torch.randn(bank.shape, generator=gen), bank_y
    perm = torch.randperm(len(query_y), generator=gen)
    assert knn_accuracy(bank, bank_y, queries[perm], query_y[perm]) == 1.0


def test_knn_is_at_chance_on_random_labels(gen):
    classes = 10
    bank = torch.randn(2000, 32, generator=gen)
    bank_y = torch.randint(classes, (2000,), generator=gen)
    queries = torch.randn(2000, 32, generator=gen)
    query_y = torch.randint(classes, (2000,), generator=gen)
    acc = knn_accuracy(bank, bank_y, queries, query_y)
    # 2000 queries at p = 0.1: the binomial standard deviation is 0.0067; 5 sigma either side
    assert abs(acc - 1 / classes) < 0.034


def test_knn_vote_is_weighted_by_exp_similarity_over_temperature():
    # one query; bank: 2 near items of class 0 and 3 farther ones of class 1.
    q = torch.tensor([[1.0, 0.0]])
    near, far = torch.tensor([1.0, 0.05]), torch.tensor([1.0, 0.9])
    bank = torch.stack([near, near, far, far, far])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # sharp vote (small T): the two closest win; flat vote (huge T): the majority wins
    assert knn_predict(bank, labels, q, k=5, temperature=0.07).item() == 0
    assert knn_predict(bank, labels, q, k=5, temperature=1e3).item() == 1
    # cosine, not Euclidean: scaling the bank changes nothing
    assert knn_predict(100 * bank, labels, q, k=5, temperature=0.07).item() == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k = 0 must be >= 1"),
        ({"k": 11}, "larger than the bank of 10"),
        ({"k": 3, "temperature": 0.0}, "temperature"),
    ],
)
def test_knn_bad_arguments_say_why(kwargs, message):
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match=message):
        knn_accuracy(x, y, x, y, **kwargs)


def test_knn_bad_inputs_say_why():
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="differ in width"):
        knn_accuracy(x, y, torch.randn(10, 5), y)
    with pytest.raises(ValueError, match="bank labels"):
        knn_accuracy(x, y[:5], x, y)
    with pytest.raises(ValueError, match="integer class indices"):
        knn_accuracy(x, y.float(), x, y)
    with pytest.raises(ValueError, match="non-finite"):
        knn_accuracy(x.index_fill(0, torch.tensor([1]), float("nan")), y, x, y)


# ------------------------------------------------------------------------------------ LiDAR
@pytest.mark.parametrize("n, q, d", [(40, 4, 6), (25, 2, 12), (8, 8, 20)])
def test_lidar_matches_float64_reference(gen, n, q, d):
    spread = torch.linspace(3.0, 0.1, d)  # anisotropic, so the whitening matters
    means = torch.randn(n, 1, d, generator=gen) * spread
    views = means + 0.3 * torch.randn(n, q, d, generator=gen) * spread.flip(0)
    expected = ref.lidar(views)
    assert lidar(views) == pytest.approx(expected, rel=1e-4)
    assert lidar(views.float()) == pytest.approx(expected, rel=1e-4)


def test_lidar_is_one_for_features_collapsed_to_one_direction(gen):
    u = torch.nn.functional.normalize(torch.randn(32, generator=gen), dim=0)
    scale = torch.randn(50, 1, generator=gen) + 0.2 * torch.randn(50, 8, generator=gen)  # (n, q)
    views = scale[..., None] * u  # (50, 8, 32), all along u
    assert lidar(views) == pytest.approx(1.0, abs=1e-4)


def test_lidar_ignores_directions_that_only_carry_augmentation_noise(gen):
    # 3 directions separate the samples; 10 more vary only between views of one sample:
    # RankMe-like counting of the raw features would see 13, LiDAR sees about 3.
    n, q = 200, 8
    signal = torch.zeros(n, 1, 13)
    signal[..., :3] = torch.randn(n, 1, 3, generator=gen)
    noise = torch.zeros(n, q, 13)
    noise[..., 3:] = torch.randn(n, q, 10, generator=gen)
    value = lidar(signal + 0.05 * torch.randn(n, q, 13, generator=gen) + noise)
    assert 2.5 < value < 4.0


def test_lda_matrix_is_whitened_between_scatter(gen):
    views = torch.randn(30, 4, 5, generator=gen, dtype=torch.float64)
    m = lda_matrix(views)
    assert torch.allclose(m, m.T) and torch.linalg.eigvalsh(m).min() > -1e-10


@pytest.mark.parametrize(
    "views, message",
    [
        (torch.randn(10, 1, 4), "at least 2 views"),
        (torch.randn(1, 4, 4), "at least 2 samples"),
        (torch.randn(10, 4), r"\(n samples, q views, D\)"),
    ],
)
def test_lidar_bad_inputs_say_why(views, message):
    with pytest.raises(ValueError, match=message):
        lidar(views)
    with pytest.raises(ValueError, match="delta"):
        lidar(torch.randn(4, 2, 3), delta=0.0)


# ------------------------------------------------------------------------------- uniformity
def test_uniformity_matches_direct_computation(gen):
    x = torch.randn(20, 7, generator=gen, dtype=torch.float64) * 3
    assert uniformity_loss(x).item() == pytest.approx(ref.uniformity(x), rel=1e-10)
    assert uniformity_loss(x, t=0.5).item() == pytest.approx(ref.uniformity(x, 0.5), rel=1e-10)
    # the Wang & Isola form (pdist over unordered pairs) gives the same mean
    z = torch.nn.functional.normalize(x, dim=1)
    pdist_form = torch.pdist(z).pow(2).mul(-2.0).exp().mean().log()
    assert uniformity_loss(x).item() == pytest.approx(pdist_form.item(), rel=1e-10)


def test_uniformity_is_zero_when_collapsed_and_lower_when_spread(gen):
    collapsed = torch.ones(16, 8) * torch.rand(16, 1, generator=gen).add(0.5)
    assert uniformity_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    spread = torch.randn(256, 8, generator=gen)
    assert uniformity_loss(spread).item() < -2.0


def test_uniformity_gradient_spreads_features(gen):
    x = (torch.ones(32, 8) + 0.1 * torch.randn(32, 8, generator=gen)).requires_grad_()
    before = uniformity_loss(x).item()
    uniformity_loss(x).backward()
    with torch.no_grad():
        x -= 0.1 * x.grad
    assert uniformity_loss(x).item() < before
    assert torch.isfinite(x.grad).all()


def test_uniformity_bad_inputs_say_why():
    with pytest.raises(ValueError, match="at least 2"):
        uniformity_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="2-D"):
        uniformity_loss(torch.randn(4))
    with pytest.raises(ValueError, match="t must be"):
        uniformity_loss(torch.randn(4, 3), t=-1.0)
