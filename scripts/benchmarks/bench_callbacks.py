"""Training-throughput cost of the rank-monitoring callbacks (MAE ViT-Tiny/4, CIFAR scale).

    python scripts/benchmarks/bench_callbacks.py            # 3 interleaved rounds x 30 steps per arm, batch 128
    python scripts/benchmarks/bench_callbacks.py --quick    # a fast smoke run (batch 32, 2 rounds x 3 steps)

(``--quick`` uses batch 32, whose steps are ~4x shorter: the weight monitor's share, per 200 steps,
is then ~4x what it is at batch 128; the per-epoch monitors' shares do not change.)

Model: MAE pretraining of ``vit_tiny_32`` (192 wide, 12 blocks, 3 heads, 4-px patches, 32 px),
decoder 128 wide / 4 blocks / 4 heads, mask ratio 0.75, on ``SyntheticLowRank`` images (their
content does not change the speed). Everything runs through a real ``pl.Trainer.fit``.

1. Throughput: arms "baseline" (no callbacks) and "callbacks" (the default set:
   RepresentationRankMonitor, WeightSpectrumMonitor, DropoutPenaltyMonitor, default arguments)
   run in every round on fresh copies of one model, validation off, in a fresh random order per
   round (``--seed``, printed; ``benchlib``), so the arms see the same machine load. Per step wall
   time (first step of each fit dropped); median s/step per arm with its interquartile range, and
   the overhead over the baseline paired per round (the arm's median step over the baseline's in
   the same round; their median and every round's value).
   This shows the per-step cost of the hooks (and of a weight measurement if one falls in a round).
   Two more arms train ``MAEPretraining(online_probe=True)`` and
   ``MAEPretraining(uniformity_weight=0.01)``: their overhead is the probe's (or the uniformity
   term's) cost per step.
2. One-off cost of one invocation of each callback at its default arguments, once per round right
   after the arms (so it meets the same machine load), median over rounds: the validation-end
   pass of RepresentationRankMonitor and DropoutPenaltyMonitor (via
   ``trainer.validate``), and a measured step of WeightSpectrumMonitor (the time its hooks hold the
   training loop; in background mode, the thread's compute time is shown too). OnlineKNN is
   timed twice: after the representation monitor in the same validation (as configured: it
   reuses the monitor's probe pass and embeds only its bank) and alone; LiDAR is the extra time
   of ``RepresentationRankMonitor(lidar={views: 8, samples: 1000})`` over the plain monitor.
3. Amortized overhead at the default schedule, per round from that round's baseline s/step and
   pass times, median over rounds: one validation epoch every
   ``--epoch-steps`` training steps (default: CIFAR-10, 50 000 images / batch), each epoch-level
   monitor every ``every_n_epochs`` epochs, the weight monitor every ``every_n_steps`` steps.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from maskrank.callbacks import (
    DropoutPenaltyMonitor,
    LidarSpec,
    OnlineKNN,
    RepresentationRankMonitor,
    WeightSpectrumMonitor,
)
from maskrank.data import SyntheticLowRank
from maskrank.models.vit import ViTSpec
from maskrank.tasks import MAEPretraining

CIFAR10_TRAIN = 50_000


def time_method(obj: object, name: str, sink: list[float]) -> None:
    """Replace ``obj.name`` by a wrapper that appends each call's wall time to ``sink``."""
    inner: Callable = getattr(obj, name)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            sink.append(time.perf_counter() - start)

    setattr(obj, name, timed)


def default_callbacks() -> list[pl.Callback]:
    return [RepresentationRankMonitor(), WeightSpectrumMonitor(), DropoutPenaltyMonitor()]


def make_trainer(args, root: Path, callbacks: list[pl.Callback], **kw) -> pl.Trainer:
    options = dict(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        logger=TensorBoardLogger(root, name="bench"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    options.update(kw)
    return pl.Trainer(default_root_dir=root, callbacks=callbacks, **options)


def step_times(args, model, data, root: Path, callbacks: list[pl.Callback]) -> list[float]:
    """Seconds per training step of one fit (its first step, the warm-up, dropped)."""
    timer = benchlib.StepTimer()
    trainer = make_trainer(
        args, root, [timer, *callbacks], max_steps=args.steps + 1, limit_val_batches=0
    )
    trainer.fit(copy.deepcopy(model), datamodule=data)
    return timer.times[1:]


def one_off_costs(args, model, data, root: Path) -> dict[str, float]:
    """Seconds of one invocation of each callback at its default arguments."""
    costs: dict[str, list[float]] = defaultdict(list)
    rep, drop = RepresentationRankMonitor(), DropoutPenaltyMonitor()
    time_method(rep, "on_validation_epoch_end", costs["RepresentationRankMonitor"])
    time_method(drop, "on_validation_epoch_end", costs["DropoutPenaltyMonitor"])
    knn = OnlineKNN()
    time_method(knn, "on_validation_epoch_end", costs["OnlineKNN"])
    make_trainer(args, root, [rep, drop, knn], limit_val_batches=1).validate(
        model, datamodule=data, verbose=False
    )
    with_lidar = RepresentationRankMonitor(lidar=LidarSpec(views=8, samples=args.lidar_samples))
    time_method(with_lidar, "on_validation_epoch_end", costs["monitor with LiDAR"])
    second = [with_lidar]
    if args.knn_alone:
        alone = OnlineKNN()
        time_method(alone, "on_validation_epoch_end", costs["OnlineKNN alone"])
        second.insert(0, alone)
    make_trainer(args, root, second, limit_val_batches=1).validate(
        model, datamodule=data, verbose=False
    )
    costs[f"LiDAR (views 8, samples {args.lidar_samples})"] = [
        costs.pop("monitor with LiDAR")[0] - costs["RepresentationRankMonitor"][0]
    ]
    # The weight monitor at its defaults, measuring at step 2: its hooks' time at step 2 minus
    # at step 1 is what one measurement holds the training loop for.
    weights = WeightSpectrumMonitor(every_n_steps=2)
    hook_times: list[float] = []
    for hook in ("on_before_optimizer_step", "on_train_batch_end"):
        time_method(weights, hook, hook_times)
    time_method(weights, "_compute", costs["WeightSpectrumMonitor compute"])
    make_trainer(args, root, [weights], max_steps=2, limit_val_batches=0).fit(
        copy.deepcopy(model), datamodule=data
    )
    quiet, measured = hook_times[0] + hook_times[1], hook_times[2] + hook_times[3]
    costs["WeightSpectrumMonitor"] = [measured - quiet]
    return {name: values[0] for name, values in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 rounds x 3 steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and arm")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epoch-steps", type=int, default=None, help="default: 50000 // batch")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--lidar-samples", type=int, default=1000, help="LiDAR samples (8 views each)"
    )
    parser.add_argument("--knn-alone", action="store_true", help="also time OnlineKNN alone")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, else 32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order per round")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.batch = 2, 3, 32
    cuda = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    args.precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    epoch_steps = args.epoch_steps or CIFAR10_TRAIN // args.batch

    def build(**kw) -> MAEPretraining:
        torch.manual_seed(0)
        spec = ViTSpec(preset="vit_tiny_32")
        return MAEPretraining(
            vit=spec, img_size=32, decoder_dim=128, decoder_depth=4, decoder_heads=4, **kw
        )

    model = build()
    variants = {
        "online_probe": build(online_probe=True, num_classes=10),
        "uniformity": build(uniformity_weight=0.01),
    }
    rep_default, weight_default, drop_default = (
        RepresentationRankMonitor(),
        WeightSpectrumMonitor(),
        DropoutPenaltyMonitor(),
    )
    probe = rep_default._size(model)
    data = SyntheticLowRank(
        num_classes=10,
        class_rank=4,
        train_size=max(args.batch * (args.steps + 2), 2000),  # LiDAR and k-NN bank subsets
        val_size=probe,
        batch_size=args.batch,
    )
    device = "cuda" if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"MAE vit_tiny_32 + decoder 128/4/4, mask 0.75, batch {args.batch}, {device}, "
        f"precision {args.precision}; probe {probe} images"
    )
    every = {  # training steps between two invocations at the default schedule
        "RepresentationRankMonitor": rep_default.every_n_epochs * epoch_steps,
        "DropoutPenaltyMonitor": drop_default.every_n_epochs * epoch_steps,
        "WeightSpectrumMonitor": weight_default.every_n_steps,
        "OnlineKNN": OnlineKNN().every_n_epochs * epoch_steps,
        "OnlineKNN alone": OnlineKNN().every_n_epochs * epoch_steps,
        f"LiDAR (views 8, samples {args.lidar_samples})": rep_default.every_n_epochs * epoch_steps,
    }
    in_default_set = ("RepresentationRankMonitor", "DropoutPenaltyMonitor", "WeightSpectrumMonitor")
    costs: dict[str, list[float]] = defaultdict(list)
    shares: dict[str, list[float]] = defaultdict(list)  # amortized % per round
    print(f"before: {benchlib.load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arms = {
            "baseline": lambda: step_times(args, model, data, root, []),
            "callbacks": lambda: step_times(args, model, data, root, default_callbacks()),
            **{
                name: functools.partial(step_times, args, variant, data, root, [])
                for name, variant in variants.items()
            },
        }

        def after_round(r: int, medians: dict[str, float]) -> None:
            # then one invocation of each callback, right after the round's arms, so a cost is
            # compared with the step time measured under the same machine load
            round_costs = one_off_costs(args, model, data, root)
            for name, cost in round_costs.items():
                costs[name].append(cost)
                if name in every:
                    share = 100 * max(cost, 0.0) / (every[name] * medians["baseline"])
                    shares[name].append(share)
            benchlib.print_round(r, medians)
            print("    passes " + ", ".join(f"{n} {c:.3f} s" for n, c in round_costs.items()))

        timings = benchlib.run_rounds(arms, args.rounds, args.seed, after_round)
    print(f"after: {benchlib.load_average()}")
    print(benchlib.orders_line(args.seed, timings.orders) + "\n")
    rows = []
    for arm in timings.samples:
        values = timings.all(arm)
        med, low, high = benchlib.spread(values)
        rows.append(
            (
                arm,
                len(values),
                f"{med:.4f} [{low:.4f}-{high:.4f}]",
                f"{args.batch / med:.1f}",
                benchlib.overhead_cell(timings.paired(arm, "baseline")),
            )
        )
    headers = ("arm", "steps", "s/step [IQR]", "img/s", "overhead, paired (per round)")
    print(benchlib.markdown_table(headers, rows))
    print(
        f"\n{'one invocation (default args)':32s} {'median s':>9s} {'every':>12s} {'amortized':>10s}"
    )
    total = 0.0
    for name, values in costs.items():
        cost = statistics.median(values)
        if name not in every:  # the compute inside the weight pass (in the thread if background)
            print(f"  {name:30s} {cost:9.3f} {'(of the pass)':>12s}")
            continue
        share = statistics.median(shares[name])
        total += share if name in in_default_set else 0.0
        print(f"  {name:30s} {cost:9.3f} {every[name]:>6d} steps {share:9.2f}%")
    hooks = statistics.median(benchlib.overheads(timings.paired("callbacks", "baseline")))
    print(
        f"\nAmortized overhead of the default set ({', '.join(sorted(in_default_set))}) at the "
        f"default schedule: "
        f"{total:.2f}% (median over rounds of "
        f"pass time / (interval x baseline s/step), per callback, summed), assuming one "
        f"validation epoch per {epoch_steps} training steps (CIFAR-10: {CIFAR10_TRAIN} images / "
        f"batch {args.batch}). Per-step difference between the callbacks and baseline arms "
        f"(hooks only, between passes): {hooks:+.2f}%."
    )


if __name__ == "__main__":
    main()
