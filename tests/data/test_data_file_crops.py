"""File-backed crops: boxes of the original image, reduced-size decoding, worker determinism."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

import maskrank.data.images.decode as decode_module
from maskrank.data import ImageFolderDataModule
from maskrank.data.images.crops import CropBox, CropSpec, crop_rng, draw_crop, random_resized_box
from maskrank.data.images.decode import decode_box, decode_crop, reduction_factor
from maskrank.data.images.file_crops import CroppedImageFiles
from maskrank.errors import ConfigError


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth natural-looking ``(H, W, 3)`` uint8 image: low-frequency waves and a gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, size=3)
        wave = np.sin(2 * np.pi * (fx * x + fy * y) + phase) + 0.5 * np.cos(9 * x * fy)
        channels.append(128 + 70 * wave + 40 * (x - y))
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def write(path: Path, pixels: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality)
    return path


def jpeg_tree(root: Path, count: int = 8, size: tuple[int, int] = (30, 40)) -> Path:
    """``root/{train,val}/{a,b}/*.jpg`` smooth images of ``size`` (height, width)."""
    for split in ("train", "val"):
        for label, name in enumerate(("a", "b")):
            for i in range(count // 2):
                write(root / split / name / f"{i}.jpg", smooth_image(*size, seed=10 * i + label))
    return root


# ---------------------------------------------------------------- crop fidelity
def test_training_boxes_cover_the_full_width_of_a_nonsquare_image(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.jpg", smooth_image(60, 150))
    spec = CropSpec(size=16, train=True, scale=(0.2, 1.0))
    covered = np.zeros(150, dtype=bool)
    boxes = []
    for index in range(300):
        image, box, _ = decode_crop(str(path), spec, crop_rng(0, 0, index))
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        assert 0 <= box.left and box.left + box.width <= 150
        assert 0 <= box.top and box.top + box.height <= 60
        covered[box.left : box.left + box.width] = True
        boxes.append(box)
    assert covered.all()  # every column of the original image is sampled, edges included
    assert any(b.left == 0 for b in boxes) and any(b.left + b.width == 150 for b in boxes)
    assert len({(b.left, b.top, b.width, b.height) for b in boxes}) > 250


def test_box_distribution_matches_torchvision_random_resized_crop() -> None:
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    reference = np.array(
        [RandomResizedCrop.get_params(torch.empty(1, 375, 500), scale, ratio) for _ in range(3000)]
    )  # (N, 4): top, left, height, width
    ours = [random_resized_box(500, 375, scale, ratio, crop_rng(0, 0, i)) for i in range(3000)]
    area = np.array([b.width * b.height for b in ours]) / (500 * 375)
    ref_area = reference[:, 2] * reference[:, 3] / (500 * 375)
    aspect = np.log([b.width / b.height for b in ours])
    ref_aspect = np.log(reference[:, 3] / reference[:, 2])
    assert abs(area.mean() - ref_area.mean()) < 0.02  # standard error ~0.004
    assert abs(aspect.mean() - ref_aspect.mean()) < 0.02
    assert abs(np.quantile(area, 0.1) - np.quantile(ref_area, 0.1)) < 0.03


def test_a_small_scale_crop_is_taken_at_the_original_resolution(tmp_path: Path) -> None:
    # lossless noise, so any resampling (or a crop of a pre-resized image) changes the pixels
    pixels = np.random.default_rng(1).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    path = write(tmp_path / "noise.png", pixels)
    side = round((0.2 * 300 * 400) ** 0.5)  # a 0.2-scale square box is side x side pixels
    spec = CropSpec(size=side, train=True, scale=(0.2, 0.2), ratio=(1.0, 1.0), hflip=False)
    for index in range(3):
        image, box, flipped = decode_crop(str(path), spec, crop_rng(0, 0, index))
        assert (box.width, box.height, flipped) == (side, side, False)
        expected = pixels[box.top : box.top + side, box.left : box.left + side]
        assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_evaluation_crop_is_resize_then_centre_crop(tmp_path: Path) -> None:
    # gentle ramps: the reference's box differs from ours by under a pixel of the original
    y, x = np.mgrid[0:90, 0:160]
    ramps = [x * 1.5, y * 2.5, 128 + 100 * np.sin(2 * np.pi * x / 160)]
    pixels = np.stack(ramps, -1).astype(np.uint8)
    path = write(tmp_path / "eval.png", pixels)
    image, box, _ = decode_crop(str(path), CropSpec(size=28, train=False, crop_pct=0.875), None)
    assert box == CropBox(40, 5, 79, 79)  # side round(0.875 * 90) = 79, centred
    # the reference recipe: shorter side to 28 / 0.875 = 32 (bicubic), centre 28 x 28
    resized = Image.fromarray(pixels).resize((round(160 * 32 / 90), 32), Image.Resampling.BICUBIC)
    left = (resized.width - 28) // 2
    reference = np.asarray(resized.crop((left, 2, left + 28, 30))).astype(int)
    ours = image.permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - reference).mean() < 2.5 and np.abs(ours - reference).max() <= 5


def test_flip_mirrors_the_unflipped_crop(tmp_path: Path) -> None:
    path = write(tmp_path / "f.png", smooth_image(50, 70))
    spec = CropSpec(size=20, train=True)
    flips = []
    for index in range(40):
        image, box, flipped = decode_crop(str(path), spec, crop_rng(3, 1, index))
        flips.append(flipped)
        assert torch.equal(image, decode_box(str(path), box, 20, flip=flipped))
        if flipped:
            assert torch.equal(image.flip(-1), decode_box(str(path), box, 20, flip=False))
    assert 5 < sum(flips) < 35


# ---------------------------------------------------------------- reduced-size decoding
@pytest.mark.parametrize("simplejpeg", [True, False], ids=["simplejpeg", "pil"])
def test_reduced_size_decode_matches_full_decode_and_resize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simplejpeg: bool
) -> None:
    if simplejpeg and not decode_module.HAS_SIMPLEJPEG:
        pytest.skip("simplejpeg is not installed")
    monkeypatch.setattr(decode_module, "HAS_SIMPLEJPEG", simplejpeg)
    shapes: list[tuple[int, ...]] = []
    original = decode_module._Decoder.pixels

    def recording(self, factor):
        pixels = original(self, factor)
        shapes.append(pixels.shape)
        return pixels

    monkeypatch.setattr(decode_module._Decoder, "pixels", recording)
    path = write(tmp_path / "big.jpg", smooth_image(600, 800), quality=90)
    # (box, output size, factor, mean tolerance, 99th-percentile tolerance) in levels of 255:
    # a box on the reduced grid differs only by DCT scaling vs bicubic filtering; another box is
    # also rounded to the reduced grid (a shift under factor / 2 original pixels, < 1/4 output px)
    for box, size, factor, mean_tol, p99_tol in [
        (CropBox(0, 0, 640, 480), 64, 4, 0.5, 2),
        (CropBox(0, 0, 800, 600), 32, 8, 0.5, 2),
        (CropBox(40, 30, 640, 480), 64, 4, 3.0, 8),
        (CropBox(100, 50, 300, 250), 64, 2, 3.0, 8),
    ]:
        assert reduction_factor(box, size) == factor
        reduced = decode_box(str(path), box, size).to(torch.int16)
        assert shapes[-1][:2] == (600 // factor, 800 // factor)  # decoded at 1 / factor
        full = decode_box(str(path), box, size, reduce=False).to(torch.int16)
        assert shapes[-1][:2] == (600, 800)
        difference = (reduced - full).abs().float()
        assert difference.mean() <= mean_tol, (factor, difference.mean())
        assert difference.quantile(0.99) <= p99_tol, (factor, difference.quantile(0.99))


def test_bytes_grey_cmyk_and_png_sources(tmp_path: Path) -> None:
    pixels = smooth_image(40, 50)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    from_bytes = decode_box(buffer.getvalue(), CropBox(0, 0, 50, 40), 24)
    from_path = decode_box(str(write(tmp_path / "a.jpg", pixels, 95)), CropBox(0, 0, 50, 40), 24)
    assert torch.equal(from_bytes, from_path)
    grey = decode_box(buffer.getvalue(), CropBox(0, 0, 40, 40), 16, in_chans=1)
    assert grey.shape == (1, 16, 16)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(pixels).convert("CMYK").save(cmyk, quality=95)
    from_cmyk = decode_box(str(cmyk), CropBox(0, 0, 50, 40), 24).to(torch.int16)
    assert (from_cmyk - from_path.to(torch.int16)).abs().float().mean() < 12  # same picture


# ---------------------------------------------------------------- determinism in workers
def _batches(dm: ImageFolderDataModule, epochs: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        out += [images for images, _ in loader]
    return out


def test_worker_crops_depend_only_on_seed_epoch_and_index(tmp_path: Path) -> None:
    root = jpeg_tree(tmp_path / "imgs", count=8, size=(30, 40))
    common = dict(image_size=16, batch_size=2, in_memory=False, cache_dir=None)
    main = ImageFolderDataModule(str(root), num_workers=0, **common)
    workers = ImageFolderDataModule(str(root), num_workers=2, **common)
    again = ImageFolderDataModule(str(root), num_workers=0, **common)
    other = ImageFolderDataModule(str(root), num_workers=0, seed=1, **common)
    for dm in (main, workers, again, other):
        dm.setup("fit")
    reference = _batches(main, 2)
    assert len(reference) == 8
    for batch, same in zip(reference, _batches(workers, 2), strict=True):
        assert torch.equal(batch, same)
    assert all(torch.equal(a, b) for a, b in zip(reference, _batches(again, 2), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(reference, _batches(other, 2), strict=True))
    # epoch 1 crops the same images differently from epoch 0 (its order differs too)
    epoch0 = torch.cat(reference[:4]).float().mean((1, 2, 3)).sort().values
    epoch1 = torch.cat(reference[4:]).float().mean((1, 2, 3)).sort().values
    assert not torch.equal(epoch0, epoch1)

    # a loader restored at epoch 1, batch 2 continues with exactly those batches, in workers
    resumed = ImageFolderDataModule(str(root), num_workers=2, **common)
    resumed.setup("fit")
    resumed._resume = {"epoch": 1, "skip_batches": 2}
    assert all(
        torch.equal(a, b)
        for a, b in zip(reference[6:], [x for x, _ in resumed.train_dataloader()], strict=True)
    )


def test_file_backed_batches_are_normalized_but_not_augmented_again(tmp_path: Path) -> None:
    root = jpeg_tree(tmp_path / "imgs", count=4, size=(30, 40))
    dm = ImageFolderDataModule(
        str(root), image_size=16, batch_size=2, in_memory=False, cache_dir=None
    )
    dm.setup("fit")
    images, _ = next(iter(dm.train_dataloader()))
    out = dm.preprocess(images, train=True)
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-5)
    probe, _ = dm.probe_batch(2)
    assert probe.shape == (2, 3, 16, 16)
    assert torch.equal(probe, dm.probe_batch(2)[0])  # evaluation crops draw nothing


def test_skip_bad_leaves_the_file_out_and_counts_it(tmp_path: Path) -> None:
    root = jpeg_tree(tmp_path / "imgs", count=4, size=(30, 40))
    bad = root / "train" / "a" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a valid header, truncated scan data
    samples = [(str(p), 0) for p in sorted((root / "train").rglob("*.jpg"))]
    spec = CropSpec(size=16, train=True)
    strict = CroppedImageFiles(samples, spec, 3)
    with pytest.raises(Exception, match="1.jpg is not a readable image"):
        strict.__getitems__(range(4))
    lenient = CroppedImageFiles(samples, spec, 3, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped: .*1.jpg"):
        images, labels = lenient.__getitems__(range(4))
    assert images.shape == (3, 3, 16, 16) and labels.shape == (3,)
    assert lenient.skipped == 1


def test_crop_spec_checks_its_fields() -> None:
    with pytest.raises(ConfigError, match="--data.crop_pct"):
        CropSpec(size=8, train=False, crop_pct=0.0)
    with pytest.raises(ConfigError, match="--data.crop_scale"):
        CropSpec(size=8, train=True, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="generator"):
        draw_crop(10, 10, CropSpec(size=8, train=True), None)
