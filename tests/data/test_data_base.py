"""Behaviour every datamodule shares, exercised through the tiny synthetic datamodule."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from maskrank.data import SyntheticLowRank, to_float
from maskrank.data.pairs import TensorPairs, keep_batch
from maskrank.errors import ConfigError


def tiny(**kwargs) -> SyntheticLowRank:
    """A 3-class, 8x8 RGB synthetic datamodule with 40 train / 20 held-out images."""
    args = dict(num_classes=3, class_rank=2, image_size=8, train_size=40, val_size=20, batch_size=8)
    return SyntheticLowRank(**{**args, **kwargs})


def test_loaders_yield_uint8_batches_from_memory() -> None:
    dm = tiny()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 5
    for images, labels in train:
        assert images.shape == (8, 3, 8, 8) and images.dtype == torch.uint8
        assert labels.shape == (8,) and labels.dtype == torch.int64
    val = list(dm.val_dataloader())
    assert [len(labels) for _, labels in val] == [8, 8, 4]  # no drop_last outside training
    held = dm._split("heldout")
    assert torch.equal(torch.cat([images for images, _ in val]), held.images)  # fixed order
    assert torch.equal(torch.cat([labels for _, labels in val]), held.labels)
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        assert torch.equal(next(iter(loader))[0], val[0][0])


def test_train_loader_covers_each_image_once_per_epoch() -> None:
    dm = tiny(batch_size=10)
    dm.setup("fit")
    labels = torch.cat([labels for _, labels in dm.train_dataloader()])
    assert sorted(labels.tolist()) == sorted(dm._split("train").labels.tolist())


def test_tensor_pairs_and_collate_are_picklable() -> None:
    data = TensorPairs(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
    images, labels = pickle.loads(pickle.dumps(keep_batch))(data.__getitems__([3, 1]))
    assert images.shape == (2, 1, 2, 2) and labels.tolist() == [3, 1]
    assert len(pickle.loads(pickle.dumps(data))) == 4


def test_preprocess_eval_is_deterministic_normalization() -> None:
    dm = tiny()
    images = dm.probe_batch(6)[0]
    out = dm.preprocess(images, train=False)
    assert torch.equal(out, to_float(images, dm.mean, dm.std))
    assert torch.equal(out, dm.preprocess(images, train=False))


def test_preprocess_train_augments() -> None:
    dm = tiny()
    images = dm.probe_batch(16)[0]
    torch.manual_seed(0)
    augmented = dm.preprocess(images, train=True)
    assert augmented.shape == (16, 3, 8, 8) and augmented.dtype == torch.float32
    assert not torch.allclose(augmented, dm.preprocess(images, train=False))
    torch.manual_seed(0)
    assert torch.equal(augmented, dm.preprocess(images, train=True))  # seeded -> reproducible
    plain = tiny(augment=False)
    assert torch.equal(plain.preprocess(images, train=True), plain.preprocess(images, train=False))


def test_on_after_batch_transfer_augments_only_while_training() -> None:
    dm = tiny()
    images, labels = dm.probe_batch(8)
    expected = to_float(images, dm.mean, dm.std)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)  # no trainer attached
    assert torch.equal(out, expected) and out_labels is labels
    dm.trainer = SimpleNamespace(training=False)  # type: ignore[assignment]
    assert torch.equal(dm.on_after_batch_transfer((images, labels), 0)[0], expected)
    dm.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]
    assert not torch.allclose(dm.on_after_batch_transfer((images, labels), 0)[0], expected)


def test_train_subset_is_deterministic() -> None:
    full = tiny()
    full.setup("fit")
    a, b = tiny(train_subset=10), tiny(train_subset=10)
    other = tiny(train_subset=10, seed=1)
    for dm in (a, b, other):
        dm.setup("fit")
    sub_a, sub_b = a._split("train"), b._split("train")
    assert len(sub_a) == 10
    assert torch.equal(sub_a.images, sub_b.images) and torch.equal(sub_a.labels, sub_b.labels)
    # The subset consists of rows of the full training set.
    rows = full._split("train").images.reshape(40, -1)
    for image in sub_a.images.reshape(10, -1):
        assert bool((rows == image).all(dim=1).any())
    # A different seed draws another subset (and other data; compare against its own full set).
    other_full = tiny(seed=1)
    other_full.setup("fit")
    assert not torch.equal(
        other._split("train").images, other_full._split("train").images[:10]
    )  # shuffled pick, not the first 10
    assert len(list(a.train_dataloader())) == 1
    big = tiny(train_subset=1000)  # larger than the set: whole set
    big.setup("fit")
    assert len(big._split("train")) == 40


def test_probe_batch_is_deterministic_and_clamped() -> None:
    a, b = tiny(), tiny()
    images, labels = a.probe_batch(7)
    assert images.shape == (7, 3, 8, 8) and images.dtype == torch.uint8 and labels.shape == (7,)
    again = b.probe_batch(7)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    more = a.probe_batch(12)
    assert torch.equal(more[0][:7], images)  # smaller n is a prefix
    assert len(a.probe_batch(500)[1]) == 20  # clamped to the held-out size
    assert not torch.equal(images, a._split("heldout").images[:7])  # a shuffled pick
    with pytest.raises(ValueError):
        a.probe_batch(0)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"batch_size": 0}, "--data.batch_size"),
        ({"num_workers": -1}, "--data.num_workers"),
        ({"crop_scale": (0.5, 0.2)}, "--data.crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "--data.crop_scale"),
        ({"crop_scale": (0.5, 1.2)}, "--data.crop_scale"),
        ({"train_subset": 0}, "--data.train_subset"),
    ],
)
def test_common_arguments_are_validated(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag) as info:
        tiny(**kwargs)
    assert "\n" not in str(info.value)


def test_batch_larger_than_training_set_is_a_config_error() -> None:
    dm = tiny(batch_size=64)
    with pytest.raises(ConfigError, match="--data.batch_size 64"):
        dm.setup("fit")
    dm.setup("validate")  # only the held-out split is needed there


class _Recorder(pl.LightningModule):
    """Records the batches Lightning hands to the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 3)
        self.train_batches: list[torch.Tensor] = []
        self.val_batches: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.train_batches.append(images)
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_gets_normalized_augmented_batches() -> None:
    dm, model = tiny(), _Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.train_batches) == 2
    for images in model.train_batches:
        assert images.dtype == torch.float32 and images.shape == (8, 3, 8, 8)
    trainer.validate(model, datamodule=dm, verbose=False)
    first_val = dm._split("heldout").images[:8]
    assert torch.equal(model.val_batches[0], to_float(first_val, dm.mean, dm.std))


def test_the_batch_size_check_counts_the_processes() -> None:
    dm = tiny(batch_size=16)  # 40 training images: enough for one process, not for each of three
    dm.trainer = SimpleNamespace(world_size=1)
    dm.setup("fit")
    dm = tiny(batch_size=16)
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(
        ConfigError, match=r"batch_size 16 .*13 training images each of the 3 processes"
    ):
        dm.setup("fit")
