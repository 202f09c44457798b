"""Every shipped datamodule implements the data contract (maskrank.data.ImageData), with its promises:
fixed probe images across calls and epochs, views of one image that differ, made by the source's own
training augmentation from a seed alone, and the device normalisation."""

from __future__ import annotations

import pytest
import torch

from maskrank.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageData,
    is_image_data,
)
from maskrank.data.images.crops import CropSpec, crop_rng
from maskrank.data.images.decode import decode_crop
from maskrank.data.images.encoded import sample_seed, train_crop
from testkit.sources import SOURCES, build_data


def _epochs(dm, count: int) -> None:
    """Run ``count`` whole training epochs of one loader (advances the epoch-seeded crops)."""
    loader = dm.train_dataloader()
    for epoch in range(count):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # as Lightning's fit loop does before each epoch
        for _ in loader:
            pass


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_keeps_the_contract(source, sources):
    dm = build_data(source, sources)
    assert isinstance(dm, ImageData) and is_image_data(dm)
    dm.setup("fit")
    assert len(dm.classes) == dm.num_classes == 4 and dm.batch_size == 16
    heldout, train = dm.probe_batch(12), dm.probe_batch(12, "train")
    assert heldout[0].dtype == torch.uint8 and heldout[0].shape == (12, 3, 32, 32)
    assert not torch.equal(heldout[0], train[0])
    assert torch.equal(dm.probe_batch(5, "train")[0], train[0][:5])  # a prefix of a larger set
    _epochs(dm, 2)
    # the k-NN bank and the probe set: the same unaugmented images after training epochs
    for split, (images, labels) in (("heldout", heldout), ("train", train)):
        again = dm.probe_batch(12, split)
        assert torch.equal(again[0], images) and torch.equal(again[1], labels)

    views = dm.augmented_views(6, 3, seed=11)  # (6, 3, C, S, S) normalized
    assert views.shape == (6, 3, 3, 32, 32) and views.dtype == torch.float32
    for a, b in ((0, 1), (0, 2), (1, 2)):  # every image's views differ from each other
        assert (views[:, a] - views[:, b]).flatten(1).abs().amax(dim=1).min() > 0.05
    assert torch.equal(views, dm.augmented_views(6, 3, seed=11))  # a function of the seed
    assert not torch.equal(views, dm.augmented_views(6, 3, seed=12))

    raw = heldout[0][:4]
    mean = torch.tensor(dm.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.std).view(1, -1, 1, 1)
    torch.testing.assert_close(dm.normalize(raw), (raw.float() / 255 - mean) / std)


def test_file_backed_views_are_the_loader_workers_crops_of_the_original_file(sources):
    # View v of an image is the crop the loader would take in epoch v of a run seeded with the
    # view seed, taken from the file, not a re-crop of one stored square.
    dm = build_data("folder_files", sources)
    dm.setup("fit")
    views = dm.augmented_views(3, 2, seed=5)  # (3, 2, C, S, S)
    files = dm.train_dataloader().dataset
    order = dm._probe_indices(len(files), 3)
    spec = CropSpec(size=32, train=True, scale=dm.crop_scale, hflip=dm.hflip)
    for row, index in enumerate(order):
        path = files.samples[index][0]
        for v in range(2):
            crop, _, _ = decode_crop(path, spec, crop_rng(5, v, index), 3)
            torch.testing.assert_close(views[row, v], dm.normalize(crop[None])[0])


def test_streaming_views_are_the_loader_workers_crops_of_the_stored_image(sources):
    dm = build_data("stream", sources)
    dm.setup("fit")
    views = dm.augmented_views(3, 2, seed=5)
    folder = sources.folder / "train"
    paths = sorted(folder.glob("*/*.png"))  # optimize stores the split in this order
    for row, index in enumerate(dm._probe_indices("train", 3)):
        data = paths[index].read_bytes()
        for v in range(2):
            crop = train_crop(data, sample_seed(5, v, index), 32, dm.crop_scale, dm.hflip, 3, "x")
            torch.testing.assert_close(views[row, v], dm.normalize(crop[None])[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda root, fx: (fx["cifar"](root), CIFAR10DataModule(root=str(root), batch_size=2))[1],
        lambda root, fx: (
            fx["cifar"](root, variant="cifar100"),
            CIFAR100DataModule(root=str(root), batch_size=2),
        )[1],
        lambda root, fx: (fx["fmnist"](root), FashionMNISTDataModule(root=str(root), batch_size=2))[
            1
        ],
    ],
    ids=["cifar10", "cifar100", "fashion_mnist"],
)
def test_the_downloaded_datasets_keep_the_contract(
    make, tmp_path, write_cifar, write_fashion_mnist
):
    dm = make(tmp_path, {"cifar": write_cifar, "fmnist": write_fashion_mnist})
    assert is_image_data(dm)
    dm.setup("fit")
    images, _ = dm.probe_batch(3, "train")
    assert torch.equal(images, dm.probe_batch(3, "train")[0])
    views = dm.augmented_views(3, 2, seed=0)
    assert views.shape == (3, 2, dm.in_chans, dm.image_size, dm.image_size)
    assert (views[:, 0] - views[:, 1]).flatten(1).abs().amax(dim=1).min() > 0
    assert len(dm.classes) == dm.num_classes and dm.classes[0] != "0"  # names from the files
