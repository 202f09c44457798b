"""ImageFolderDataModule on tiny generated PNG trees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import maskrank.data.imagefolder as imagefolder_module
from maskrank.data import ImageFolderDataModule
from maskrank.errors import ConfigError, CorruptFileError, DatasetNotFoundError


def _chw(pixels: np.ndarray) -> torch.Tensor:
    """HWC (or HW) numpy image -> CHW uint8 tensor."""
    tensor = torch.from_numpy(pixels)
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0)


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def _module(root: Path, cache: Path | None, **kwargs) -> ImageFolderDataModule:
    args = dict(image_size=8, batch_size=3, cache_dir=str(cache) if cache else None)
    return ImageFolderDataModule(str(root), **{**args, **kwargs})


def test_train_val_layout_labels_and_pixels(tmp_path: Path, make_image_tree) -> None:
    written = make_image_tree(tmp_path / "imgs")
    dm = _module(tmp_path / "imgs", None)
    assert dm.num_classes == 3 and dm.classes == ["cat", "dog", "emu"]
    assert (dm.in_chans, dm.image_size) == (3, 8)
    assert dm.mean == (0.485, 0.456, 0.406) and dm.std == (0.229, 0.224, 0.225)
    dm.setup("fit")
    for split, key in (("train", "train"), ("heldout", "val")):
        data = dm._split(split)
        assert data.images.dtype == torch.uint8 and data.images.shape == (9, 3, 8, 8)
        expected = torch.stack([_chw(pixels) for _, pixels, _ in written[key]])
        assert torch.equal(data.images, expected)
        assert data.labels.tolist() == [label for _, _, label in written[key]]


def test_test_folder_is_the_fallback_heldout_split(tmp_path: Path, make_image_tree) -> None:
    written = make_image_tree(tmp_path, splits=("train", "test"), classes=("a", "b"))
    dm = _module(tmp_path, None)
    dm.setup("validate")
    held = dm._split("heldout")
    assert torch.equal(held.images, torch.stack([_chw(p) for _, p, _ in written["test"]]))
    images, labels = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 8, 8)


def test_resize_grey_and_nonsquare(tmp_path: Path, make_image_tree) -> None:
    make_image_tree(tmp_path, size=(12, 20), channels=3, per_class=1)
    dm = _module(tmp_path, None, image_size=6, in_chans=1)
    assert dm.mean == (0.5,) and dm.std == (0.5,)
    dm.setup("fit")
    assert dm._split("train").images.shape == (3, 1, 6, 6)


def test_cache_hit_gives_identical_tensors(tmp_path: Path, make_image_tree, monkeypatch) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    make_image_tree(root)
    before = _files(root)
    first = _module(root, cache)
    first.setup("fit")
    assert len(list(cache.glob("*.pt"))) == 2  # train + held-out
    assert _files(root) == before  # nothing written inside the source root

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(imagefolder_module, "decode_all", no_decode)
    second = _module(root, cache)
    second.setup("fit")
    for split in ("train", "heldout"):
        assert torch.equal(second._split(split).images, first._split(split).images)
        assert torch.equal(second._split(split).labels, first._split(split).labels)

    # Changing a file invalidates the cache (size / mtime are part of the key).
    victim = next((root / "train" / "dog").glob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="decoded again"):
        _module(root, cache).setup("fit")


def test_cache_disabled_writes_nothing(tmp_path: Path, make_image_tree) -> None:
    make_image_tree(tmp_path / "imgs")
    before = _files(tmp_path)
    _module(tmp_path / "imgs", None).setup("fit")
    assert _files(tmp_path) == before


def test_lazy_mode_matches_in_memory(tmp_path: Path, make_image_tree) -> None:
    # square images of the output size with crop_pct 1: the held-out crop is the image itself
    make_image_tree(tmp_path, size=(7, 7))
    eager = _module(tmp_path, None, image_size=7)
    lazy = _module(tmp_path, None, image_size=7, in_memory=False, crop_pct=1.0)
    eager.setup("fit")
    lazy.setup("fit")
    held = eager._split("heldout")
    batches = list(lazy.val_dataloader())
    assert all(images.dtype == torch.uint8 for images, _ in batches)
    assert torch.equal(torch.cat([images for images, _ in batches]), held.images)
    assert torch.equal(torch.cat([labels for _, labels in batches]), held.labels)
    assert torch.equal(lazy.probe_batch(4)[0], eager.probe_batch(4)[0])
    images, labels = next(iter(lazy.train_dataloader()))
    assert images.shape == (3, 3, 7, 7) and labels.dtype == torch.int64


def _corrupt(root: Path) -> str:
    bad = root / "train" / "dog" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return str(bad)


def test_corrupt_image_names_the_file(tmp_path: Path, make_image_tree) -> None:
    make_image_tree(tmp_path)
    bad = _corrupt(tmp_path)
    with pytest.raises(CorruptFileError, match="not a readable image") as info:
        _module(tmp_path, None).setup("fit")
    assert bad in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_in_worker_is_one_line(tmp_path: Path, make_image_tree) -> None:
    make_image_tree(tmp_path, per_class=1)
    bad = _corrupt(tmp_path)
    dm = _module(tmp_path, None, in_memory=False, num_workers=1, batch_size=1)
    dm.setup("fit")
    with pytest.raises(CorruptFileError) as info:
        list(dm.train_dataloader())
    message = str(info.value)
    assert bad in message and "\n" not in message and "Traceback" not in message


def test_missing_root_and_layout_errors(tmp_path: Path, make_image_tree) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=str(missing)):
        _module(missing, None)
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetNotFoundError, match=os.path.join(str(tmp_path / "a"), "train")):
        _module(tmp_path / "a", None)
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class folders"):
        _module(tmp_path / "b", None)
    make_image_tree(tmp_path / "c", splits=("train",))
    with pytest.raises(DatasetNotFoundError, match="neither val/ nor test/"):
        _module(tmp_path / "c", None)


def test_empty_class_folders(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    dm = _module(tmp_path, None)
    assert dm.num_classes == 1
    with pytest.raises(DatasetNotFoundError, match=r"contains no images.*\.png") as info:
        dm.setup("fit")
    assert str(tmp_path / "train") in str(info.value)


def test_bad_arguments(tmp_path: Path, make_image_tree) -> None:
    make_image_tree(tmp_path, per_class=1)
    with pytest.raises(ConfigError, match="--data.in_chans"):
        _module(tmp_path, None, in_chans=2)
    with pytest.raises(ConfigError, match="--data.mean"):
        _module(tmp_path, None, mean=(0.5,))
