"""maskrank's MAE side by side with lightly's MAE modules, at equal budget (SCIENCE.md §5).

    python scripts/learning/compare_peer.py --root ../shared/data/cifar10 --train-subset 10000 \
        --test-subset 2000 --epochs 20 --batch 256 --seeds 0 1 2 --threads 2 --out runs/peer

Arms:

* ``maskrank``: :class:`maskrank.tasks.MAEPretraining`'s MAE (:class:`MaskedAutoencoder`);
* ``lightly``: lightly's ``MaskedVisionTransformerTIMM`` around the same timm ViT plus its
  ``MAEDecoderTIMM``, wired as lightly's MAE example does;
* ``random``, ``random-lightly``: the untrained encoder as each implementation initialises it.

Everything but the model code is shared: the timm ViT (built by :func:`maskrank.models.vit.build_vit`
from the same preset), the decoder size, the data (PNGs decoded once into uint8 tensors), the
augmentation (maskrank's batched random resized crop + flip, drawn from a generator seeded per seed,
so both arms see the same batches and crops), the optimiser (AdamW, betas (0.9, 0.95), weight
decay on every tensor but biases and 1-D tensors: :func:`maskrank.optim.adamw`), the schedule
(linear warmup then cosine to 0, ``lr = blr * batch / 256``), the mask ratio, the per-patch
normalized pixel target, the number of steps and the seeds. The loop is one plain PyTorch loop.

Judging: frozen unmasked features (eval mode) of the whole training subset and of a fixed test
subset, read from each timm encoder by :func:`maskrank.models.features.encoder_features` (checked
on one batch against each implementation's own unmasked encode), then a logistic-regression probe
(:func:`maskrank.metrics.linear_probe_accuracy`) and a weighted kNN
(:func:`maskrank.metrics.knn_accuracy`, k=20, T=0.07), for the CLS token and the patch-token mean.
Every probe is refitted with ``--probe-check-factor`` times the iterations; the largest change in
accuracy is reported, so an unconverged probe shows. Arms run in a seeded shuffled order per seed.

lightly is not a maskrank dependency: it is imported only when a lightly arm runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from maskrank.data import ImageFolderDataModule, random_hflip, random_resized_crop
from maskrank.errors import ConfigError, MaskRankError
from maskrank.metrics import knn_accuracy, linear_probe_accuracy
from maskrank.models.features import encoder_features
from maskrank.models.mae import normalize_patches, patchify
from maskrank.models.vit import ViTSpec, build_vit
from maskrank.optim import adamw, warmup_cosine
from maskrank.tasks import MAEPretraining

ARMS = ("maskrank", "lightly", "random", "random-lightly")
TRAINED = {"maskrank": "maskrank", "lightly": "lightly"}  # arm -> implementation
INIT_ONLY = {"random": "maskrank", "random-lightly": "lightly"}
METRICS = ("probe_cls", "probe_mean", "knn_cls", "knn_mean")
HEADERS = {
    "probe_cls": "probe CLS",
    "probe_mean": "probe mean",
    "knn_cls": "kNN CLS",
    "knn_mean": "kNN mean",
}
LIGHTLY_INSTALL = "pip install --no-deps lightly"
SMOKE = dict(train_subset=64, test_subset=32, steps=3, batch=16, probe_iters=20)
SEEDS = [0, 1, 2]  # --smoke runs seed 0 only unless --seeds says otherwise
FEATURE_BATCH = 500


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    """uint8 images (N, C, S, S) with labels, and the shared normalisation / augmentation."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    image_size: int
    crop_scale: tuple[float, float]

    def augment(self, images_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Normalized, randomly resized-cropped and flipped float32 (B, C, S, S)."""
        x = self.normalize(images_uint8)
        x = random_resized_crop(x, self.image_size, self.crop_scale, generator=generator)
        return random_hflip(x, generator=generator)


def load_data(args: argparse.Namespace) -> Data:
    """Decode (or load from the cache) the ImageFolder once; the train subset and a fixed
    seeded test subset as uint8 tensors in memory."""
    dm = ImageFolderDataModule(
        root=args.root,
        image_size=32,
        batch_size=args.batch,
        train_subset=args.train_subset,
        crop_scale=(args.crop_min, 1.0),
        cache_dir=args.cache_dir,
        seed=args.data_seed,
    )
    dm.setup("fit")  # checks the batch against the train subset, in one line
    train, train_labels = dm.probe_batch(args.train_subset, "train")  # the whole subset
    test, test_labels = dm.probe_batch(args.test_subset, "heldout")
    if len(train_labels) < args.knn_k:
        raise ConfigError(
            f"--train-subset gives {len(train_labels)} training images, fewer than the kNN's "
            f"k = {args.knn_k}; raise --train-subset"
        )
    return Data(train, train_labels, test, test_labels, dm.normalize, 32, dm.crop_scale)


# ----------------------------------------------------------------------------- arms
class MaskrankArm:
    """maskrank's MAE exactly as :class:`MAEPretraining` builds it (encoder, decoder, init)."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Args:
        args: the command line (preset, decoder size, mask ratio)."""
        task = MAEPretraining(
            vit=ViTSpec(preset=args.preset),
            img_size=32,
            in_chans=3,
            decoder_dim=args.decoder_dim,
            decoder_depth=args.decoder_depth,
            decoder_heads=args.decoder_heads,
            mask_ratio=args.mask_ratio,
            norm_pix_loss=True,
        )
        self.model: nn.Module = task.mae  # what MAEPretraining's optimizer trains
        self.encoder: VisionTransformer = task.mae.encoder
        self.patch_size: int = task.mae.patch
        self.mask_ratio = args.mask_ratio

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(images, self.mask_ratio)

    def own_cls(self, images: torch.Tensor) -> torch.Tensor:
        """The implementation's own unmasked CLS feature (B, D)."""
        return self.model.encode(images).cls


class LightlyArm:
    """lightly's MAE modules around a timm ViT, wired as lightly's MAE example does, with the
    per-patch normalized target (lightly's ``normalize_mean_var``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Args:
        args: the command line (preset, decoder size, mask ratio)."""
        from lightly.models import utils  # optional: only this arm needs lightly
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        vit = build_vit(args.preset, img_size=32, in_chans=3, num_classes=0)
        self.utils = utils
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.decoder = MAEDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            patch_size=vit.patch_embed.patch_size[0],
            in_chans=3,
            embed_dim=vit.embed_dim,
            decoder_embed_dim=args.decoder_dim,
            decoder_depth=args.decoder_depth,
            decoder_num_heads=args.decoder_heads,
            mlp_ratio=4.0,
        )
        self.model = nn.ModuleDict({"backbone": self.backbone, "decoder": self.decoder})
        self.encoder = vit
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.mask_ratio = args.mask_ratio

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        u, b = self.utils, images.shape[0]
        seq = self.backbone.sequence_length  # 1 + L: CLS is never masked
        idx_keep, idx_mask = u.random_token_mask((b, seq), self.mask_ratio, device=images.device)
        latent = self.backbone.encode(images, idx_keep=idx_keep)  # (B, 1 + K, D)
        tokens = u.repeat_token(self.decoder.mask_token, (b, seq))  # (B, 1 + L, E)
        tokens = u.set_at_index(tokens, idx_keep, self.decoder.embed(latent).type_as(tokens))
        decoded = self.decoder.decode(tokens)  # (B, 1 + L, E)
        pred = self.decoder.predict(u.get_at_index(decoded, idx_mask))  # (B, L - K, P)
        # idx_mask counts CLS as token 0; patches start at 0
        target = u.get_at_index(u.patchify(images, self.patch_size), idx_mask - 1)
        return F.mse_loss(pred, u.normalize_mean_var(target))

    def own_cls(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(images)[:, 0]


def build_arm(implementation: str, args: argparse.Namespace, seed: int):
    """The arm's MAE with its weights drawn after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    return MaskrankArm(args) if implementation == "maskrank" else LightlyArm(args)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    final_loss: float  # mean training loss over the last window of steps
    zero_loss: float  # the loss of predicting 0 for every pixel, same batches
    seconds: float
    seconds_per_epoch: float  # wall clock
    cpu_seconds_per_epoch: float  # this process's CPU time: what other load does not inflate
    losses: list[float] = field(default_factory=list)  # per epoch


def train(arm, data: Data, args: argparse.Namespace, seed: int, label: str) -> TrainResult:
    """One plain loop for every arm: same batch order, crops and flips for a seed."""
    steps, per_epoch = args.total_steps, args.steps_per_epoch
    warmup = int(round(args.warmup_fraction * steps))
    optimizer = adamw(arm.model, args.lr, args.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup, steps, 0.0)
    )
    order = torch.Generator().manual_seed(seed)  # batch order and augmentation
    torch.manual_seed(seed + 1)  # masks (and anything else drawing globally) start here
    arm.model.train()
    window = max(1, min(steps, per_epoch))
    losses, zeros, epoch_losses, epoch_times, epoch_cpu = [], [], [], [], []
    n = data.train.shape[0]
    start = time.perf_counter()
    tick, cpu_tick = start, time.process_time()
    perm = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        pos = (step % per_epoch) * args.batch
        if pos == 0:
            perm = torch.randperm(n, generator=order)
        images = data.augment(data.train[perm[pos : pos + args.batch]], order)
        loss = arm.loss(images)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step >= steps - window:
            with torch.no_grad():  # (B, L, P) standardized patches: the zero predictor's loss
                zeros.append(normalize_patches(patchify(images, arm.patch_size)).pow(2).mean())
        if (step + 1) % per_epoch == 0 or step + 1 == steps:
            now = time.perf_counter()
            done = (step % per_epoch) + 1
            epoch_times.append((now - tick) * per_epoch / done)
            epoch_cpu.append((time.process_time() - cpu_tick) * per_epoch / done)
            epoch_losses.append(statistics.fmean(losses[-done:]))
            tick, cpu_tick = now, time.process_time()
            print(
                f"  [{label}] step {step + 1}/{steps} epoch-loss {epoch_losses[-1]:.4f} "
                f"lr {schedule.get_last_lr()[0]:.2e} {now - start:.0f}s",
                flush=True,
            )
    return TrainResult(
        final_loss=statistics.fmean(losses[-window:]),
        zero_loss=float(torch.stack(zeros).mean()),
        seconds=time.perf_counter() - start,
        seconds_per_epoch=statistics.fmean(epoch_times),
        cpu_seconds_per_epoch=statistics.fmean(epoch_cpu),
        losses=epoch_losses,
    )


# ----------------------------------------------------------------------------- judging
@torch.no_grad()
def features(encoder: VisionTransformer, data: Data, images: torch.Tensor) -> dict[str, Any]:
    """CLS and patch-mean features (N, D) of uint8 images, unmasked, encoder in eval mode."""
    encoder.eval()
    cls, mean = [], []
    for start in range(0, images.shape[0], FEATURE_BATCH):
        f = encoder_features(encoder, data.normalize(images[start : start + FEATURE_BATCH]))
        cls.append(f.cls)
        mean.append(f.patch_mean)
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


@torch.no_grad()
def check_own_features(arm, data: Data, label: str) -> None:
    """The shared feature function reads what the implementation's own encode gives."""
    arm.model.eval()
    x = data.normalize(data.test[:8])
    ours, theirs = encoder_features(arm.encoder, x).cls, arm.own_cls(x)
    if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
        gap = (ours - theirs).abs().max().item()
        raise RuntimeError(f"{label}: shared features differ from its own encode by {gap:.2e}")


def judge(arm, data: Data, args: argparse.Namespace, label: str) -> dict[str, float]:
    check_own_features(arm, data, label)
    t0, cpu0 = time.perf_counter(), time.process_time()
    tr = features(arm.encoder, data, data.train)
    te = features(arm.encoder, data, data.test)
    t1, cpu1 = time.perf_counter(), time.process_time()
    print(f"  [{label}] features in {t1 - t0:.0f}s (CPU {cpu1 - cpu0:.0f}s)", flush=True)
    out: dict[str, float] = {"feature_seconds": t1 - t0, "feature_cpu_seconds": cpu1 - cpu0}
    check = 0.0
    for kind in ("cls", "mean"):
        args_ = (tr[kind], data.train_labels, te[kind], data.test_labels)
        out[f"probe_{kind}"] = linear_probe_accuracy(*args_, max_iter=args.probe_iters)
        longer = linear_probe_accuracy(*args_, max_iter=args.probe_iters * args.probe_check_factor)
        check = max(check, abs(longer - out[f"probe_{kind}"]))
        out[f"knn_{kind}"] = knn_accuracy(*args_, k=args.knn_k, temperature=args.knn_t)
    out["probe_check_delta"] = check
    out["probe_seconds"] = time.perf_counter() - t1
    out["probe_cpu_seconds"] = time.process_time() - cpu1
    return out


# ----------------------------------------------------------------------------- table
def summarize(runs: list[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per arm and metric: mean, sample std (0 for one seed), min and max over seeds."""
    summary: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        summary[arm] = {}
        for key in (
            *METRICS,
            "final_loss",
            "zero_loss",
            "seconds_per_epoch",
            "cpu_seconds_per_epoch",
            "feature_seconds",
            "probe_seconds",
        ):
            values = [r[key] for r in rows if r.get(key) is not None]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[arm][key] = dict(
                mean=statistics.fmean(values), std=std, min=min(values), max=max(values)
            )
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(runs: list[dict[str, Any]], summary: dict[str, Any], config: dict[str, Any]) -> str:
    cols = [HEADERS[m] for m in METRICS] + ["final loss", "zero-pred loss", "s/epoch"]
    lines = [
        f"MAE {config['preset']}, {config['train_images']} train / {config['test_images']} "
        f"test images, batch {config['batch']}, {config['total_steps']} steps "
        f"({config['epochs_equiv']:.1f} epochs), lr {config['lr']:.2e}, "
        f"{config['threads']} threads. Accuracies in [0, 1]; summary rows: mean ± std over "
        f"seeds (sample std). Probe refit with {config['probe_check_factor']}x iterations "
        f"changed accuracy by at most {config['probe_check_max_delta']:.4f}.",
        "",
        "| arm | seed | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for r in runs:
        cells = [_fmt(r.get(m)) for m in METRICS]
        cells += [_fmt(r.get("final_loss"), 4), _fmt(r.get("zero_loss"), 4)]
        cells += [_fmt(r.get("seconds_per_epoch"), 1)]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + " |")
    for arm, stats in summary.items():
        cells = []
        for key, digits in [
            *((m, 3) for m in METRICS),
            ("final_loss", 4),
            ("zero_loss", 4),
            ("seconds_per_epoch", 1),
        ]:
            s = stats.get(key)
            cells.append("—" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
        lines.append(f"| **{arm}** | mean ± std | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="../shared/data/cifar10", help="ImageFolder: train/, test/")
    p.add_argument("--train-subset", type=int, default=10_000)
    p.add_argument("--test-subset", type=int, default=2_000)
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the train subset")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--blr", type=float, default=1.5e-4, help="lr = blr * batch / 256 (MAE)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--crop-min", type=float, default=0.2, help="random resized crop area min")
    p.add_argument("--preset", default="vit_tiny_32", help="maskrank ViT preset (both arms)")
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=4)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {SEEDS}")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--probe-iters", type=int, default=200, help="L-BFGS iterations of a probe")
    p.add_argument("--probe-check-factor", type=int, default=4)
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-t", type=float, default=0.07)
    p.add_argument("--data-seed", type=int, default=0, help="train/test subset choice")
    p.add_argument("--cache-dir", default="data/cache", help="decoded-image cache; '' for none")
    p.add_argument("--out", default=None, help="folder for table.md and results.json")
    p.add_argument("--smoke", action="store_true", help="tiny budget, seconds: a plumbing check")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="train nothing: one table from the results.json of runs that differ only in their "
        "seeds (e.g. one process per seed)",
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="time and train the trained arms, judge nothing (for sizing a budget)",
    )
    args = p.parse_args(argv)
    if args.smoke:  # the smoke budget replaces the defaults; flags given still win
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.smoke else SEEDS
    args.cache_dir = args.cache_dir or None
    args.arms = list(dict.fromkeys(args.arms))
    return args


def check_args(args: argparse.Namespace) -> None:
    """One line per bad flag, before any data is read."""
    positive = {
        "--train-subset": args.train_subset,
        "--test-subset": args.test_subset,
        "--batch": args.batch,
        "--probe-iters": args.probe_iters,
        "--probe-check-factor": args.probe_check_factor,
        "--knn-k": args.knn_k,
    }
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.steps is None and not args.epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {args.epochs}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.batch > args.train_subset:
        raise ConfigError(f"--batch {args.batch} is larger than --train-subset {args.train_subset}")
    if not 0.0 < args.crop_min <= 1.0:
        raise ConfigError(f"--crop-min must lie in (0, 1], got {args.crop_min}")
    if not 0.0 < args.mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must lie in (0, 1), got {args.mask_ratio}")
    if not (args.blr > 0 and math.isfinite(args.blr)):
        raise ConfigError(f"--blr must be a finite number > 0, got {args.blr}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    uses_lightly = any(a in ("lightly", "random-lightly") for a in args.arms)
    if uses_lightly and importlib.util.find_spec("lightly") is None:
        raise ConfigError(
            f"--arms {' '.join(args.arms)} needs the lightly package, which is not installed: "
            f"{LIGHTLY_INSTALL} (or drop the lightly arms)"
        )


def run_arm(
    arm_name: str, position: int, seed: int, data: Data, args: argparse.Namespace
) -> dict[str, Any]:
    """Build one arm for ``seed``, train it (trained arms) and judge its encoder: one table row."""
    implementation = TRAINED.get(arm_name) or INIT_ONLY[arm_name]
    label = f"seed {seed} {arm_name}"
    arm = build_arm(implementation, args, seed)
    row: dict[str, Any] = {"seed": seed, "arm": arm_name, "order": position}
    if arm_name in TRAINED:
        row.update(asdict(train(arm, data, args, seed, label)))
    if args.train_only:
        return row
    t0 = time.perf_counter()
    row.update(judge(arm, data, args, label))
    row["judge_seconds"] = time.perf_counter() - t0
    loss = (
        f" final loss {row['final_loss']:.4f} (zero {row['zero_loss']:.4f})"
        if "final_loss" in row
        else ""
    )
    scores = " ".join(f"{HEADERS[m]} {row[m]:.3f}" for m in METRICS)
    print(f"  [{label}] {scores}{loss} judged in {row['judge_seconds']:.0f}s", flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.train_only:
        args.arms = [a for a in args.arms if a in TRAINED]
    data = load_data(args)
    n = data.train.shape[0]
    args.steps_per_epoch = n // args.batch
    args.total_steps = args.steps or max(1, int(round(args.epochs * args.steps_per_epoch)))
    args.lr = args.blr * args.batch / 256
    print(
        f"{n} train / {data.test.shape[0]} test images, {args.total_steps} steps of "
        f"{args.batch} ({args.total_steps / args.steps_per_epoch:.2f} epochs), lr {args.lr:.2e}, "
        f"{torch.get_num_threads()} threads, arms {args.arms}, seeds {args.seeds}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        order = random.Random(seed).sample(args.arms, len(args.arms))
        print(f"seed {seed}: arm order {order}", flush=True)
        for position, arm_name in enumerate(order):
            runs.append(run_arm(arm_name, position, seed, data, args))
    summary = summarize(runs, args.arms)
    lightly_version = None
    if importlib.util.find_spec("lightly") is not None and any("lightly" in a for a in args.arms):
        lightly_version = importlib.metadata.version("lightly")
    config = dict(
        preset=args.preset,
        train_images=n,
        test_images=int(data.test.shape[0]),
        batch=args.batch,
        total_steps=args.total_steps,
        epochs_equiv=args.total_steps / args.steps_per_epoch,
        lr=args.lr,
        blr=args.blr,
        warmup_steps=int(round(args.warmup_fraction * args.total_steps)),
        weight_decay=args.weight_decay,
        betas=[0.9, 0.95],
        mask_ratio=args.mask_ratio,
        crop_scale=[args.crop_min, 1.0],
        decoder=dict(dim=args.decoder_dim, depth=args.decoder_depth, heads=args.decoder_heads),
        seeds=args.seeds,
        arms=args.arms,
        threads=torch.get_num_threads(),
        probe_iters=args.probe_iters,
        probe_check_factor=args.probe_check_factor,
        probe_check_max_delta=max((r.get("probe_check_delta", 0.0) for r in runs), default=0.0),
        knn=dict(k=args.knn_k, temperature=args.knn_t),
        versions=dict(torch=torch.__version__, timm=timm.__version__, lightly=lightly_version),
        smoke=args.smoke,
    )
    return {"config": config, "runs": runs, "summary": summary}


# Config entries that may differ between runs merged into one table: the seeds themselves, the
# threads a process had, the worst probe-refit change (maximised) and the installed versions of an
# arm not in that run.
_MERGE_FREE = ("seeds", "threads", "probe_check_max_delta", "versions", "arms")


def merge(dirs: Sequence[str]) -> dict[str, Any]:
    """One result from runs of the same protocol with disjoint seeds, or a ConfigError that names
    the first directory whose protocol differs and the setting that differs."""
    loaded = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ConfigError(f"--merge {d}: no results.json there (run with --out {d} first)")
        loaded.append((d, json.loads(path.read_text())))
    first_dir, first = loaded[0]
    config = dict(first["config"])
    runs = list(first["runs"])
    arms = list(config["arms"])
    for d, other in loaded[1:]:
        for key, value in other["config"].items():
            if key not in _MERGE_FREE and config.get(key) != value:
                raise ConfigError(
                    f"--merge {d}: {key} is {value!r} there but {config.get(key)!r} in "
                    f"{first_dir}; only runs that differ in their seeds merge"
                )
        seen = {(r["arm"], r["seed"]) for r in runs}
        clash = [key for key in ((r["arm"], r["seed"]) for r in other["runs"]) if key in seen]
        if clash:
            raise ConfigError(f"--merge {d}: arm {clash[0][0]} seed {clash[0][1]} is in two runs")
        runs += other["runs"]
        arms += [a for a in other["config"]["arms"] if a not in arms]
        config["seeds"] = sorted({*config["seeds"], *other["config"]["seeds"]})
        config["probe_check_max_delta"] = max(
            config["probe_check_max_delta"], other["config"]["probe_check_max_delta"]
        )
        config["threads"] = max(config["threads"], other["config"]["threads"])
    config["arms"] = arms
    return {"config": config, "runs": runs, "summary": summarize(runs, arms)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = merge(args.merge) if args.merge else run(args)
    except MaskRankError as err:
        print(f"compare_peer.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    table = markdown(results["runs"], results["summary"], results["config"])
    print("\n" + table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out / 'table.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
