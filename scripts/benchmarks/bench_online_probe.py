"""Which features should MAE's online linear probe read? Cost of three designs, and tracking.

    python scripts/benchmarks/bench_online_probe.py                 # cost: 5 arms, 2 interleaved rounds, parts
    python scripts/benchmarks/bench_online_probe.py --track         # does the online probe track offline?
    python scripts/benchmarks/bench_online_probe.py --track --data-root DIR   # DIR/train, DIR/test class folders

1. Cost (``MAEPretraining``, ViT-Tiny/4 MAE of configs/pretrain/mae_vit_tiny_cifar10.yaml, batch
   128, SyntheticLowRank images): every arm runs once per round on a copy of one model, validation
   off, in a fresh random order per round (``--seed``, printed; ``benchlib``); median seconds per
   training step with its interquartile range (first step of each fit dropped), and the overhead
   over the baseline paired per round (median and every round's value):

   * ``baseline``: no probe;
   * ``visible``: the default design (``probe_input: visible``), the probe reads the CLS token of
     the training step's own masked pass (the visible tokens), detached;
   * ``unmasked/1``: ``probe_input: unmasked``, an extra gradient-free eval-mode encoder pass over
     every token on every step feeds the probe;
   * ``unmasked/10``: the same pass every 10th step (``probe_every_n_steps: 10``);
   * ``uniformity``: no probe, ``uniformity_weight=0.01`` (the cost of the uniformity term).

   Then the parts, timed alone: the probe's own forward, backward and AdamW step, and one
   unmasked pass, each as a share of the baseline step (resolving what the paired arms cannot).

2. Tracking (``--track``): the quickstart MAE (vit_nano_32) pretrains with the online probe
   (``--probe-input``, ``--probe-every``, ``--probe-lr``); after
   every epoch the script prints the online accuracy (``eval/online_linear_acc``), the accuracy of
   an offline logistic-regression probe (``maskrank.metrics.linear_probe_accuracy``) fitted on the
   unmasked CLS features of ``--bank`` fixed training images and tested on ``--bank`` held-out
   images, and the k-NN accuracy of OnlineKNN; then Spearman's rho between online and offline.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from maskrank.callbacks import OnlineKNN
from maskrank.callbacks._common import eval_mode
from maskrank.data import ImageFolderDataModule, SyntheticLowRank
from maskrank.metrics import linear_probe_accuracy
from maskrank.models.vit import ViTSpec
from maskrank.sweep.results import spearman
from maskrank.tasks import MAEPretraining
from maskrank.tasks.online_probe import unmasked_feature


def _trainer(root: Path, callbacks, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kw,
    )


def cost(args) -> None:
    common = dict(vit=ViTSpec(preset="vit_tiny_32"), img_size=32, decoder_dim=128)
    common.update(decoder_depth=4, decoder_heads=4, num_classes=10)

    def build(**kw):
        torch.manual_seed(0)
        return MAEPretraining(**common, **kw)

    arms = {
        "baseline": build(),
        "visible": build(online_probe=True),
        "unmasked/1": build(online_probe=True, probe_input="unmasked"),
        "unmasked/10": build(online_probe=True, probe_input="unmasked", probe_every_n_steps=10),
        "uniformity": build(uniformity_weight=0.01),
    }
    steps = args.steps
    data = SyntheticLowRank(
        num_classes=10, class_rank=4, train_size=128 * (steps + 2), val_size=64, batch_size=128
    )
    print(f"MAE vit_tiny_32, batch 128, cpu ({torch.get_num_threads()} threads)")
    print(f"before: {benchlib.load_average()}")
    with tempfile.TemporaryDirectory() as tmp:

        def fit(model: MAEPretraining) -> list[float]:
            timer = benchlib.StepTimer()
            trainer = _trainer(Path(tmp), [timer], max_steps=steps + 1, limit_val_batches=0)
            trainer.fit(copy.deepcopy(model), datamodule=data)
            return timer.times[1:]

        runs = {arm: functools.partial(fit, model) for arm, model in arms.items()}
        timings = benchlib.run_rounds(runs, args.rounds, args.seed, benchlib.print_round)
    print(f"after: {benchlib.load_average()}")
    print(benchlib.orders_line(args.seed, timings.orders) + "\n")
    rows = []
    for arm in arms:
        values = timings.all(arm)
        step, low, high = benchlib.spread(values)
        rows.append(
            (
                arm,
                len(values),
                f"{step:.4f} [{low:.3f}-{high:.3f}]",
                benchlib.overhead_cell(timings.paired(arm, "baseline")),
            )
        )
    headers = ("arm", "steps", "median s/step [IQR]", "overhead, paired (per round)")
    print(benchlib.markdown_table(headers, rows))
    base = statistics.median(timings.all("baseline"))
    parts(arms["visible"], base)


def parts(model: MAEPretraining, step_s: float, batch: int = 128, repeats: int = 30) -> None:
    """The probe's own work per step, and the unmasked pass, timed alone (median of ``repeats``).

    The paired arms above cannot resolve effects much smaller than their noise; these parts can:
    the visible design adds the probe's forward, backward and AdamW step on (B, D) features; the
    unmasked design adds, on every N-th step, one gradient-free eval-mode encoder pass over every
    token. Both are divided by the baseline's median step from the arms.
    """
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    probe = copy.deepcopy(model.online_probe).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        features = model.mae.encode(images).cls  # (B, D)

    def probe_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(probe(features), labels).backward()
        optimizer.step()

    def unmasked_pass() -> None:
        unmasked_feature(model.mae.encode, model.mae, images, "cls")

    print(f"\nparts, timed alone (median of {repeats}), against the baseline step {step_s:.4f} s:")
    for name, fn in (
        ("probe forward+backward+AdamW", probe_step),
        ("unmasked pass", unmasked_pass),
    ):
        fn()  # warm
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"  {name:30s} {1000 * t:9.3f} ms = {100 * t / step_s:7.3f} % of a step")
        if name == "unmasked pass":
            for every in (1, 4, 10, 50):
                print(
                    f"    every {every:2d} steps: {100 * t / every / step_s:6.2f} % of training time"
                )


class OfflineProbe(pl.Callback):
    """After every validation: offline linear-probe accuracy of unmasked CLS features."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[dict[str, float]] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        feats = {}
        for split in ("train", "heldout"):
            raw, labels = dm.probe_batch(self.n, split)
            images = dm.normalize(raw)
            with eval_mode(pl_module):
                cls = torch.cat([pl_module.encode(c).cls for c in images.split(256)])
            feats[split] = (cls, labels)
        offline = linear_probe_accuracy(*feats["train"], *feats["heldout"])
        self.rows.append({"epoch": trainer.current_epoch, "offline": offline})


def track(args) -> None:
    if args.data_root:
        data = ImageFolderDataModule(
            root=args.data_root, train_subset=args.train_size, batch_size=128, crop_scale=(0.2, 1)
        )
    else:
        data = SyntheticLowRank(
            num_classes=10, class_rank=4, train_size=args.train_size, val_size=1000, batch_size=128
        )
    pl.seed_everything(0)
    model = MAEPretraining(
        vit=ViTSpec(preset="vit_nano_32"),
        img_size=32,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=2,
        lr=2e-3,
        warmup_fraction=0.1,
        online_probe=True,
        num_classes=data.num_classes,
        probe_lr=args.probe_lr,
        probe_input=args.probe_input,
        probe_every_n_steps=args.probe_every,
    )
    offline, knn = OfflineProbe(args.bank), OnlineKNN(every_n_epochs=1, bank_size=args.bank)
    online: list[float] = []
    knn_rows: list[float] = []
    measure = knn.measure

    def recording(*a):
        out = measure(*a)
        knn_rows.append(out["eval/knn_acc/final_cls"])
        return out

    knn.measure = recording  # type: ignore[method-assign]

    class Online(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                online.append(float(trainer.callback_metrics["eval/online_linear_acc"]))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(
            Path(tmp),
            [offline, knn, Online()],
            max_epochs=args.epochs,
            # an image folder's held-out split is sorted by class: a prefix of it is one class
            limit_val_batches=None if args.data_root else args.bank // 128 + 1,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        print(f"fit: {time.perf_counter() - start:.0f} s")
    design = (
        f"{args.probe_input}/{args.probe_every}" if args.probe_input == "unmasked" else "visible"
    )
    print(f"\n| epoch | online ({design}, lr {args.probe_lr:g}) | offline linear | k-NN |")
    print("| ---: | ---: | ---: | ---: |")
    for row, acc, k in zip(offline.rows, online, knn_rows, strict=False):
        print(f"| {row['epoch']} | {acc:.3f} | {row['offline']:.3f} | {k:.3f} |")
    offs = [r["offline"] for r in offline.rows]
    print(f"\nSpearman rho online vs offline over epochs: {spearman(online, offs)}")
    print(f"Spearman rho k-NN vs offline over epochs: {spearman(knn_rows, offs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--bank", type=int, default=1000)
    parser.add_argument("--probe-lr", type=float, default=1e-2)
    parser.add_argument("--probe-input", choices=["unmasked", "visible"], default="visible")
    parser.add_argument("--probe-every", type=int, default=1, help="unmasked: every N-th batch")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order per round")
    args = parser.parse_args()
    if args.track:
        track(args)
    else:
        cost(args)


if __name__ == "__main__":
    sys.exit(main())
