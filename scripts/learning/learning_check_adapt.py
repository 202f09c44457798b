"""Learning check for stage 2: linear probe, full fine-tune and LoRA after a short MAE pretraining.

    python scripts/learning/learning_check_adapt.py --root ../shared/data/cifar10
    python scripts/learning/learning_check_adapt.py --root ../shared/data/cifar10 --mae-ckpt runs/.../last.ckpt

Runs the shipped configs through the CLI machinery (``maskrank.cli.lightning.build_cli``), on a subset of a
CIFAR-10 ImageFolder (``root/train``, ``root/test``):

1. stage 1: ``configs/pretrain/mae_vit_tiny_cifar10.yaml`` for ``--pretrain-steps`` optimizer
   steps (skipped with ``--mae-ckpt``);
2. stage 2: ``configs/adapt/{linear_probe,finetune,lora}_cifar10.yaml`` from that checkpoint, each
   for the same ``--adapt-steps`` optimizer steps with the same batch size and schedule length.

3. with ``--random-baseline`` (default on): each stage-2 mode again from a randomly initialised
   encoder (``encoder_ckpt: null``), same steps and seed, so every row stands next to what the
   pretraining added.

Reported per stage-2 mode and encoder: validation accuracy on all test images (measured once, after
the last step; stage 2 skips in-fit validation to save time), trainable parameters and wall time;
and LoRA's accuracy as a fraction of the full fine-tune's. For the linear probe, the accuracy of a
converged offline probe on the same frozen features (``learnlib.probe_accuracies``: logistic
regression by L-BFGS on the CLS token the config's head reads, fit on the whole training subset,
scored on all test images) stands next to it, so the row shows how far the config's probe is from
convergence at this budget. Nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import learnlib  # scripts/learning/learnlib.py: a script's own folder is first on sys.path

from maskrank.cli.lightning import build_cli
from maskrank.tasks.adaptation import trainable_parameters

MODES = ("linear_probe", "finetune", "lora")


def _run(config: str, out: Path, name: str, steps: int, common: list[str], extra: list[str]):
    """Fit ``config`` for ``steps`` steps, then validate; returns (cli, val metrics, seconds)."""
    args = [
        "-c", config,
        *common,
        "--trainer.max_steps", str(steps),
        "--trainer.max_epochs", "-1",
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name,
        *extra,
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return cli, metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and test/")
    parser.add_argument("--out", default="runs/learning_check_adapt")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--pretrain-steps", type=int, default=250)
    parser.add_argument("--adapt-steps", type=int, default=150)
    parser.add_argument("--mae-val-batches", type=int, default=16, help="stage 1 val batches")
    parser.add_argument("--mae-ckpt", help="skip stage 1 and adapt this MAE checkpoint")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--random-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run every mode from a randomly initialised encoder",
    )
    parser.add_argument(
        "--adapt-override",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a config value for every stage-2 fit, e.g. --adapt-override model.init_args.lr 0.1",
    )
    args = parser.parse_args()

    out = Path(args.out)
    overrides = [(key.lstrip("-"), value) for key, value in args.adapt_override]
    common = [
        "--data", "maskrank.data.ImageFolderDataModule",
        "--data.root", args.root,
        "--data.train_subset", str(args.train_images),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    mae_ckpt = args.mae_ckpt
    if mae_ckpt is None:
        cli, metrics, seconds = _run(
            "configs/pretrain/mae_vit_tiny_cifar10.yaml", out, "mae", args.pretrain_steps, common,
            ["--trainer.limit_val_batches", str(args.mae_val_batches)],
        )  # fmt: skip
        mae_ckpt = str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
        print(
            f"stage 1: MAE {args.pretrain_steps} steps in {seconds / 60:.1f} min, "
            f"val/loss {metrics['val/loss']:.4f} -> {mae_ckpt}",
            flush=True,
        )

    encoders = {"MAE": mae_ckpt, **({"random": None} if args.random_baseline else {})}
    rows = {}
    for mode in args.modes:
        for encoder, ckpt in encoders.items():
            cli, metrics, seconds = _run(
                f"configs/adapt/{mode}_cifar10.yaml", out, f"{mode}_{encoder}", args.adapt_steps,
                common,
                ["--model.init_args.encoder_ckpt", "null" if ckpt is None else ckpt,
                 "--trainer.check_val_every_n_epoch", "100000",
                 "--trainer.num_sanity_val_steps", "0",
                 *(part for key, value in overrides for part in (f"--{key}", value))],
            )  # fmt: skip
            trainable, total = trainable_parameters(cli.model)
            offline = None
            if mode == "linear_probe":  # every test image: probe_batch clamps to the split
                offline = learnlib.probe_accuracies(cli.model, cli.datamodule, 10**9)["cls"]
            rows[mode, encoder] = (
                metrics["val/acc"], metrics["val/loss"], trainable, seconds, offline
            )  # fmt: skip
            print(
                f"stage 2: {mode} from {encoder} encoder: val/acc {metrics['val/acc']:.4f} "
                f"({seconds / 60:.1f} min)",
                flush=True,
            )

    print(
        f"\nstage 2 from {mae_ckpt}: {args.adapt_steps} steps each, batch 128, "
        f"{args.train_images} training images, val on all test images"
        f"{''.join(f', {key} {value}' for key, value in overrides)}\n"
    )
    print(
        "| mode | encoder | val/acc | offline probe, converged | val/loss | trainable | minutes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (mode, encoder), (acc, loss, trainable, seconds, offline) in rows.items():
        converged = "-" if offline is None else f"{100 * offline:.1f} %"
        print(
            f"| {mode} | {encoder} | {100 * acc:.1f} % | {converged} | {loss:.4f} | "
            f"{trainable:,} | {seconds / 60:.1f} |"
        )
    if ("lora", "MAE") in rows and ("finetune", "MAE") in rows:
        ratio = rows["lora", "MAE"][0] / rows["finetune", "MAE"][0]
        print(f"\nLoRA / full fine-tune accuracy (MAE encoder): {ratio:.3f}")


if __name__ == "__main__":
    main()
