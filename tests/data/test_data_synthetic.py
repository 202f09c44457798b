"""The synthetic union-of-subspaces data: shapes, determinism and the exact rank."""

from __future__ import annotations

import pytest
import torch

from maskrank.data import SyntheticLowRank, make_low_rank_images
from maskrank.errors import ConfigError

K, D_RANK, SIZE, CHANS, N = 4, 3, 16, 3, 200


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_low_rank_images(K, D_RANK, N, SIZE, CHANS, seed=0)


def test_shapes_dtypes_and_balanced_labels(sample) -> None:
    images, labels, bases = sample
    assert images.shape == (N, CHANS, SIZE, SIZE) and images.dtype == torch.uint8
    assert labels.shape == (N,) and labels.dtype == torch.int64
    assert bases.shape == (K, D_RANK, CHANS * SIZE * SIZE)
    assert labels.bincount(minlength=K).tolist() == [N // K] * K
    # Each class basis is orthonormal.
    gram = bases @ bases.transpose(1, 2)  # (K, d, d)
    torch.testing.assert_close(gram, torch.eye(D_RANK, dtype=gram.dtype).expand(K, -1, -1))
    # Per-pixel std is about signal_std (32) around 128.
    centred = images.double() - 128
    assert abs(centred.mean().item()) < 2
    assert 24 < centred.std().item() < 34


def test_singular_values_gap_exactly_at_intrinsic_rank(sample) -> None:
    images, _, _ = sample
    rank = K * D_RANK
    sigma = torch.linalg.svdvals(images.double().reshape(N, -1) - 128)  # (min(N, D),)
    assert sigma[rank - 1] / sigma[rank] > 10
    # No comparable gap before it: the signal spectrum is spread over all K * d directions.
    assert (sigma[: rank - 1] / sigma[1:rank]).max() < 3


def test_each_class_lies_in_its_own_subspace(sample) -> None:
    images, labels, bases = sample
    x = images.double().reshape(N, -1) - 128  # (N, D)
    coords = torch.einsum("np,kdp->nkd", x, bases)  # (N, K, d)
    residual = x.norm(dim=1, keepdim=True) ** 2 - (coords**2).sum(-1)  # (N, K)
    predicted = residual.argmin(dim=1)
    assert torch.equal(predicted, labels)  # nearest subspace classifies perfectly


def test_determinism() -> None:
    a = make_low_rank_images(3, 2, 30, 8, 1, seed=5)
    b = make_low_rank_images(3, 2, 30, 8, 1, seed=5)
    c = make_low_rank_images(3, 2, 30, 8, 1, seed=6)
    d = make_low_rank_images(3, 2, 30, 8, 1, seed=5, sample_seed=99)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])
    assert torch.equal(a[2], d[2]) and not torch.equal(a[0], d[0])  # same bases, new samples


def test_noise_breaks_the_exact_rank() -> None:
    images, _, _ = make_low_rank_images(K, D_RANK, N, SIZE, CHANS, noise_std=8.0, seed=0)
    sigma = torch.linalg.svdvals(images.double().reshape(N, -1) - 128)
    assert sigma[K * D_RANK - 1] / sigma[K * D_RANK] < 10


def test_datamodule_attributes_and_splits() -> None:
    dm = SyntheticLowRank(
        num_classes=3,
        class_rank=2,
        image_size=8,
        in_chans=1,
        train_size=30,
        val_size=12,
        seed=4,
        batch_size=8,
    )
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (3, 1, 8)
    assert dm.class_rank == 2 and dm.intrinsic_rank == 6
    assert dm.mean == (0.5,) and dm.std == pytest.approx((32 / 255,))
    dm.setup("fit")
    train, val = dm._split("train"), dm._split("heldout")
    assert train.images.shape == (30, 1, 8, 8) and val.images.shape == (12, 1, 8, 8)
    assert not torch.equal(train.images[:12], val.images)  # different sample seeds
    # Both splits come from the same bases: the union is still rank 6.
    both = torch.cat([train.images, val.images]).double().reshape(42, -1) - 128
    sigma = torch.linalg.svdvals(both)
    assert sigma[5] / sigma[6] > 10
    again = SyntheticLowRank(
        num_classes=3,
        class_rank=2,
        image_size=8,
        in_chans=1,
        train_size=30,
        val_size=12,
        seed=4,
        batch_size=8,
    )
    again.setup("fit")
    assert torch.equal(again._split("train").images, train.images)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"class_rank": 100, "image_size": 4, "in_chans": 1}, "--data.class_rank"),
        ({"num_classes": 0}, "--data.num_classes"),
        ({"train_size": 0}, "--data.train_size"),
        ({"signal_std": 0.0}, "--data.signal_std"),
        ({"noise_std": -1.0}, "--data.noise_std"),
        ({"image_size": 0}, "--data.image_size"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        SyntheticLowRank(**kwargs)
