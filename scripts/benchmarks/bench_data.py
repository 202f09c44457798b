"""Per-core throughput of maskrank's file-backed ImageNet loader vs torchvision's, on real JPEGs.

    python scripts/benchmarks/bench_data.py                 # 240 files, 5 paired rounds (~1 min on 2 cores)
    python scripts/benchmarks/bench_data.py --quick         # 48 files, 2 rounds (a smoke run)

Data: ImageNet-like JPEGs (500 x 375, quality 90) made from the natural photographs scikit-image
ships (``skimage.data``: astronaut, coffee, chelsea, rocket, ...), each randomly rescaled (1-1.6x),
randomly cropped and re-encoded, in an ImageFolder layout under a temporary folder.

Arms, each producing what a training step consumes, a ``(3, 224, 224)`` uint8 crop of the MAE
recipe (random resized crop, scale (0.2, 1), ratio (3/4, 4/3), bicubic, flip):

* reference: ``torchvision.datasets.ImageFolder`` + ``RandomResizedCrop(224, (0.2, 1), BICUBIC)``
  + ``RandomHorizontalFlip`` + ``PILToTensor`` (the MAE recipe's transform with uint8 output; MAE's
  ``ToTensor`` + ``Normalize`` would only add float work to the reference);
* maskrank: :class:`maskrank.data.images.file_crops.CroppedImageFiles` (``decode_crop``);
* maskrank-PIL: the same with ``simplejpeg`` switched off (PIL decodes), a lever breakdown.

Both run in this one process, single-threaded (as in a DataLoader worker), every arm once per
round on the same shuffled files, in a fresh random order per round (``--seed``, printed;
``benchlib``), whole batches of 32 stacked as a loader does, timed in wall seconds or, with
``--clock cpu``, in the process's CPU seconds (what a worker core spends; far less inflated than
wall time on a machine shared with other work). Reported: images/s per process (median and
interquartile range or range over rounds), the paired per-round ratio to the reference,
the worker cores needed to feed a ViT-B/16 MAE at 3 000 img/s, decode-only and resample-only times
of the candidate libraries, and crop-box statistics of both loaders (same distribution expected).
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

import maskrank.data.images.decode as decode_module
from maskrank.data.images.crops import CropSpec, crop_rng, random_resized_box
from maskrank.data.images.file_crops import CroppedImageFiles

SIZE, SCALE, RATIO = 224, (0.2, 1.0), (3 / 4, 4 / 3)
FEED_TARGET = 3000  # img/s a ViT-B/16 MAE step consumes on a fast GPU
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def natural_images() -> list[np.ndarray]:
    """scikit-image's colour sample photographs as ``(H, W, 3)`` uint8 arrays."""
    import skimage.data  # dev extra; only this benchmark needs it

    images = []
    for name in SAMPLES:
        try:
            pixels = getattr(skimage.data, name)()
        except Exception:  # a sample that needs a download is skipped offline
            continue
        images.append(np.stack([pixels] * 3, -1) if pixels.ndim == 2 else pixels[..., :3])
    if not images:
        raise SystemExit("bench_data: scikit-image ships no usable sample photographs here")
    return images


def make_jpeg_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``root/train/c<k>/<i>.jpg``: ``count`` 500 x 375 quality-90 JPEGs of natural images
    (and one copy per class in ``root/val``)."""
    rng = np.random.default_rng(seed)
    sources = natural_images()
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)])
        grow = max(500 / image.width, 375 / image.height) * rng.uniform(1.0, 1.6)
        image = image.resize(
            (math.ceil(image.width * grow), math.ceil(image.height * grow)),
            Image.Resampling.BICUBIC,
        )
        left = int(rng.integers(0, image.width - 500 + 1))
        top = int(rng.integers(0, image.height - 375 + 1))
        folder = root / "train" / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image.crop((left, top, left + 500, top + 375)).save(folder / f"{i}.jpg", quality=90)
    for k in range(min(4, count)):  # a held-out split (the datamodule requires one)
        (root / "val" / f"c{k}").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "train" / f"c{k}" / f"{k}.jpg", root / "val" / f"c{k}" / "0.jpg")
    return root


def reference_dataset(root: Path) -> ImageFolder:
    """torchvision's ImageFolder with the MAE recipe's augmentation, uint8 output."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(
                SIZE, scale=SCALE, ratio=RATIO, interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    return ImageFolder(str(root / "train"), transform=transform)


def maskrank_dataset(root: Path) -> CroppedImageFiles:
    """maskrank's file-backed training dataset over the same files."""
    samples = ImageFolder(str(root / "train")).samples
    return CroppedImageFiles(samples, CropSpec(size=SIZE, train=True, scale=SCALE), 3, seed=0)


def batches_per_second(
    get_batch: Callable[[list[int]], object], order: list[int], batch: int, clock: str = "wall"
):
    """Images per second (of ``clock``, ``benchlib.CLOCKS``) of producing ``order`` in stacked
    batches of ``batch``."""
    now = benchlib.CLOCKS[clock]
    start = now()
    for first in range(0, len(order), batch):
        get_batch(order[first : first + batch])
    return len(order) / (now() - start)


def reference_batch(dataset: ImageFolder) -> Callable[[list[int]], object]:
    return lambda indices: torch.stack([dataset[i][0] for i in indices])


def maskrank_batch(dataset: CroppedImageFiles) -> Callable[[list[int]], object]:
    return lambda indices: dataset.__getitems__(indices)


def paired_rounds(
    arms: dict[str, Callable],
    count: int,
    rounds: int,
    batch: int = 32,
    seed: int = 0,
    clock: str = "wall",
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """``{arm: [img/s per round]}`` and the arm order of every round (shuffled with ``seed``);
    every round reads the files in its own shuffled order, the same for every arm."""
    results: dict[str, list[float]] = {name: [] for name in arms}
    orders = benchlib.round_orders(list(arms), rounds, seed)
    for r, names in enumerate(orders):
        files = np.random.default_rng(r).permutation(count).tolist()
        for name in names:
            results[name].append(batches_per_second(arms[name], files, batch, clock))
    return results, orders


def decoder_table(
    files: list[Path], rounds: int, seed: int = 0, clock: str = "wall"
) -> list[tuple[str, float]]:
    """Median ms per image to decode a whole 500 x 375 JPEG, or resample one box, per library.

    Every candidate runs once per round, in a shuffled order per round (so they meet the same
    machine load); median over rounds of each round's mean over ``files``.
    """
    blobs = [f.read_bytes() for f in files]
    calls: dict[str, Callable[[bytes], object]] = {
        "PIL (Image.open + convert RGB)": lambda b: Image.open(io.BytesIO(b)).convert("RGB"),
    }
    try:
        import simplejpeg

        calls["simplejpeg.decode_jpeg"] = simplejpeg.decode_jpeg
        calls["simplejpeg fastdct+fastupsample"] = lambda b: simplejpeg.decode_jpeg(
            b, fastdct=True, fastupsample=True
        )
    except ImportError:
        pass
    from torchvision.io import decode_jpeg

    calls["torchvision.io.decode_jpeg (CPU)"] = lambda b: decode_jpeg(
        torch.frombuffer(bytearray(b), dtype=torch.uint8)
    )
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()
        calls["PyTurboJPEG decode"] = lambda b: jpeg.decode(b, pixel_format=turbojpeg.TJPF_RGB)
    except Exception:  # not installed, or no system libturbojpeg
        pass
    # a 300 x 300 box (about the median training crop here) of each image, to 224 x 224
    box = (40, 20, 340, 320)
    decoded = [np.array(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    pil_images = {id(b): Image.fromarray(d) for b, d in zip(blobs, decoded, strict=True)}
    regions = {
        id(b): torch.from_numpy(np.ascontiguousarray(d[20:320, 40:340])).permute(2, 0, 1)[None]
        for b, d in zip(blobs, decoded, strict=True)
    }
    calls["resample 300->224: PIL crop + resize bicubic"] = lambda b: (
        pil_images[id(b)].crop(box).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    )
    calls["resample 300->224: torch uint8 bicubic AA"] = lambda b: F.interpolate(
        regions[id(b)], size=(SIZE, SIZE), mode="bicubic", antialias=True
    )
    times: dict[str, list[float]] = {name: [] for name in calls}
    now = benchlib.CLOCKS[clock]
    for names in benchlib.round_orders(list(calls), rounds, seed):
        for name in names:
            call = calls[name]
            start = now()
            for b in blobs:
                call(b)
            times[name].append(1000 * (now() - start) / len(blobs))
    return [(name, statistics.median(values)) for name, values in times.items()]


def box_statistics(draws: int = 4000) -> dict[str, tuple[float, ...]]:
    """Area fraction (mean, p10, p90), mean |log aspect|, share touching the left / right edge."""
    torch.manual_seed(0)
    ref = [
        transforms.RandomResizedCrop.get_params(torch.empty(1, 375, 500), list(SCALE), list(RATIO))
        for _ in range(draws)
    ]  # (top, left, height, width)
    ours = [random_resized_box(500, 375, SCALE, RATIO, crop_rng(0, 0, i)) for i in range(draws)]
    stats = {}
    for name, boxes in (
        ("torchvision", [(left, top, w, h) for top, left, h, w in ref]),
        ("maskrank", [(b.left, b.top, b.width, b.height) for b in ours]),
    ):
        arr = np.array(boxes, dtype=float)  # (N, 4): left, top, width, height
        area = arr[:, 2] * arr[:, 3] / (500 * 375)
        stats[name] = (
            area.mean(),
            np.quantile(area, 0.1),
            np.quantile(area, 0.9),
            np.abs(np.log(arr[:, 2] / arr[:, 3])).mean(),
            (arr[:, 0] == 0).mean(),
            (arr[:, 0] + arr[:, 2] == 500).mean(),
        )
    return stats


def loader_throughput(root: Path, num_workers: int, batches: int, batch_size: int = 64) -> float:
    """Images/s of maskrank's training DataLoader with ``num_workers`` workers (after warm-up)."""
    from maskrank.data import ImageFolderDataModule

    dm = ImageFolderDataModule(
        str(root),
        image_size=SIZE,
        in_memory=False,
        cache_dir=None,
        num_workers=num_workers,
        batch_size=batch_size,
        crop_scale=SCALE,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen, start = 0, None
    while seen < batches:
        for _batch in loader:
            if start is None:  # the first batch pays for the worker start-up
                start = time.perf_counter()
                continue
            seen += 1
            if seen >= batches:
                break
    return seen * batch_size / (time.perf_counter() - start)  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="48 files, 2 rounds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order per round")
    parser.add_argument(
        "--clock",
        choices=list(benchlib.CLOCKS),
        default="wall",
        help="wall or process CPU time (one thread: cpu is what a worker core spends)",
    )
    args = parser.parse_args()
    files, rounds = (48, 2) if args.quick else (args.files, args.rounds)
    torch.set_num_threads(1)  # one DataLoader worker's view
    print(f"before: {benchlib.load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp), files)
        reference, ours = reference_dataset(root), maskrank_dataset(root)

        def pil_only(indices: list[int]) -> object:
            saved, decode_module.HAS_SIMPLEJPEG = decode_module.HAS_SIMPLEJPEG, False
            try:
                return ours.__getitems__(indices)
            finally:
                decode_module.HAS_SIMPLEJPEG = saved

        arms = {
            "reference": reference_batch(reference),
            "maskrank": maskrank_batch(ours),
            "maskrank-PIL": pil_only,
        }
        results, orders = paired_rounds(arms, files, rounds, seed=args.seed, clock=args.clock)
        decoders = decoder_table(
            sorted(root.rglob("*.jpg"))[:24], 3 if args.quick else 7, args.seed, args.clock
        )
    print(f"after: {benchlib.load_average()}")
    print(
        f"{files} JPEGs 500x375 q90, {rounds} paired rounds, one thread, batches of 32, "
        f"{args.clock} clock; "
        f"{benchlib.orders_line(args.seed, orders)}\n"
    )
    rows = []
    for name, values in results.items():
        med, low, high = benchlib.spread(values)
        paired = [a / r for a, r in zip(values, results["reference"], strict=True)]
        rows.append(
            (
                name,
                f"{med:.1f} [{low:.1f}-{high:.1f}]",
                f"{FEED_TARGET / med:.1f}",
                benchlib.ratio_cell(paired),
            )
        )
    headers = (
        "arm",
        "img/s per process [IQR or range]",
        f"cores for {FEED_TARGET} img/s",
        "vs reference, paired (per round)",
    )
    print(benchlib.markdown_table(headers, rows))
    print("\nper-image cost (median ms), 500x375 q90:")
    for name, ms in decoders:
        print(f"  {name:<45} {ms:6.2f}")
    print("\ncrop boxes on 500x375 (4000 draws each):")
    print(
        f"  {'loader':<12} {'area mean':>9} {'p10':>6} {'p90':>6} {'|log ratio|':>11} "
        f"{'at left':>8} {'at right':>9}"
    )
    for name, s in box_statistics().items():
        print(
            f"  {name:<12} {s[0]:9.3f} {s[1]:6.3f} {s[2]:6.3f} {s[3]:11.3f} {s[4]:8.3f} {s[5]:9.3f}"
        )


if __name__ == "__main__":
    main()
