"""RandAugment of file-backed training crops: seeded per (seed, epoch, index), refused in memory."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from maskrank.data import ImageFolderDataModule
from maskrank.data.images.auto_augment import SeededRandAugment
from maskrank.errors import ConfigError

MAE_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


def _files(root: Path, channels: int = 3, **kw) -> ImageFolderDataModule:
    data = ImageFolderDataModule(
        root=str(root),
        image_size=16,
        in_chans=channels,
        in_memory=False,
        cache_dir=None,
        batch_size=2,
        num_workers=0,
        seed=3,
        **kw,
    )
    data.setup("fit")
    return data


def _train(data: ImageFolderDataModule):
    return data._split("train")


def test_randaugment_is_a_function_of_seed_epoch_and_index(tmp_path, make_image_tree):
    make_image_tree(tmp_path, size=(24, 30), per_class=2)
    plain = _train(_files(tmp_path))
    first = _train(_files(tmp_path, auto_augment=MAE_RAND_AUGMENT))
    again = _train(_files(tmp_path, auto_augment=MAE_RAND_AUGMENT))  # a fresh process's view
    n = len(first)
    epoch0 = [first.crop(i, epoch=0) for i in range(n)]
    # the same (seed, epoch, index) gives the same image, in any order, in another instance
    for i in reversed(range(n)):
        assert torch.equal(again.crop(i, epoch=0), epoch0[i])
    # it is an augmentation of the crop, different per epoch
    changed = sum(not torch.equal(plain.crop(i, epoch=0), epoch0[i]) for i in range(n))
    assert changed >= n - 1  # an identity op pair may leave one image as cropped
    redrawn = sum(not torch.equal(first.crop(i, epoch=1), epoch0[i]) for i in range(n))
    assert redrawn == n


def test_randaugment_leaves_the_global_generators_where_they_were(tmp_path, make_image_tree):
    make_image_tree(tmp_path, size=(24, 30), per_class=1)
    files = _train(_files(tmp_path, auto_augment=MAE_RAND_AUGMENT))
    random.seed(11)
    np.random.seed(11)
    expected = (random.random(), np.random.rand())
    random.seed(11)
    np.random.seed(11)
    files.crop(0, epoch=2)  # mixup and everything else on the main process draw from these
    assert (random.random(), np.random.rand()) == expected


def test_loader_workers_produce_the_in_process_images(tmp_path, make_image_tree):
    make_image_tree(tmp_path, size=(24, 30), per_class=2)
    files = _train(_files(tmp_path, auto_augment=MAE_RAND_AUGMENT))
    files.set_epoch(4)
    loader = DataLoader(files, batch_size=3, num_workers=2, collate_fn=lambda batch: batch)
    batches = [images for images, _ in loader]
    expected = torch.stack([files.crop(i, epoch=4) for i in range(len(files))])
    torch.testing.assert_close(torch.cat(batches), expected, rtol=0, atol=0)


def test_the_strongest_magnitude_posterizes_to_black_instead_of_failing():
    # m10: every PosterizeIncreasing keeps 0 bits, which the installed Pillow refuses
    augment = SeededRandAugment("rand-m10-n1-inc1", 16, (0.5, 0.5, 0.5))
    image = torch.randint(1, 256, (3, 16, 16), dtype=torch.uint8)
    outputs = [augment(image, seed=0, epoch=0, index=i) for i in range(60)]
    assert any(int(out.max()) == 0 for out in outputs)  # posterize drawn: the image went black


def test_grey_images_are_augmented(tmp_path, make_image_tree):
    make_image_tree(tmp_path, size=(24, 30), per_class=1, channels=1)
    plain = _train(_files(tmp_path, channels=1))
    files = _train(_files(tmp_path, channels=1, auto_augment=MAE_RAND_AUGMENT))
    image = files.crop(0, epoch=0)
    assert image.shape == plain.crop(0, epoch=0).shape and image.dtype == torch.uint8
    assert any(not torch.equal(files.crop(i, 0), plain.crop(i, 0)) for i in range(len(files)))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"in_memory": True}, r"^--data\.auto_augment must be null with in_memory: true"),
        ({"augment": False}, r"^--data\.auto_augment must be null with augment: false"),
        ({"auto_augment": "rand-x9"}, r"^--data\.auto_augment must be a timm RandAugment"),
        ({"auto_augment": "v0"}, r"^--data\.auto_augment must be a timm RandAugment .*'v0'"),
    ],
)
def test_auto_augment_where_it_cannot_run_is_one_line(
    tmp_path, make_image_tree, settings, expected
):
    make_image_tree(tmp_path, per_class=1)
    args = {"in_memory": False, "auto_augment": MAE_RAND_AUGMENT, **settings}
    with pytest.raises(ConfigError, match=expected) as error:
        ImageFolderDataModule(root=str(tmp_path), image_size=8, cache_dir=None, **args)
    assert "\n" not in str(error.value)
