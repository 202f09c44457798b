"""Learning check: does GaLore pretrain the CIFAR MAE as well as AdamW for the same steps?

    python scripts/learning/learning_check_galore.py --root ../shared/data/cifar10 --steps 100

On a subset of a CIFAR-10 ImageFolder (``root/train``, ``root/test``), pretrain the MAE of
``configs/pretrain/mae_vit_tiny_cifar10.yaml`` (read from the file, ``learnlib.recipe``) from the same
initial weights on the same batches for ``steps`` optimizer steps with each arm:
AdamW, and GaLore AdamW at each of ``ranks`` (SCIENCE.md §8; targets qkv/proj/fc1/fc2, the rest
AdamW). Then report, per arm and for the random initialisation: the validation reconstruction loss
(masked patches, fixed masks) and the accuracy of a linear probe (logistic regression on
standardized frozen features, ``maskrank.metrics.linear_probe_accuracy``) on CLS and on mean-pooled
patch tokens, with the wall-clock time of each arm. Everything is measured in this run.
"""

from __future__ import annotations

import argparse
import copy
import time

import learnlib  # scripts/learning/learnlib.py: a script's own folder is first on sys.path
import pytorch_lightning as pl
import torch

from maskrank.optim import OptimizerSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and test/")
    parser.add_argument("--train-images", type=int, default=5_000)
    parser.add_argument("--probe-test-images", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--update-proj-gap", type=int, default=200)
    parser.add_argument("--val-batches", type=int, default=8)
    args = parser.parse_args()

    pl.seed_everything(0)
    recipe = learnlib.recipe()
    dm = learnlib.cifar_subset(args.root, recipe.batch_size, args.train_images, recipe.crop_scale)
    arms = {"adamw": OptimizerSpec(name="adamw")}
    for rank in args.ranks:
        arms[f"galore r{rank}"] = OptimizerSpec(
            name="galore_adamw", rank=rank, update_proj_gap=args.update_proj_gap
        )
    init = None
    results = {}
    for name, spec in arms.items():
        pl.seed_everything(0)  # same batches, masks and augmentation in every arm
        model = recipe.build(optimizer=spec)
        if init is None:
            init = copy.deepcopy(model)
        model.load_state_dict(init.state_dict())
        trainer = learnlib.quiet_trainer(
            max_steps=args.steps, limit_val_batches=args.val_batches,
            check_val_every_n_epoch=10_000,
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        minutes = (time.perf_counter() - t0) / 60
        val = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
        results[name] = (model, val, minutes, trainer.global_step)
    trainer = learnlib.quiet_trainer(limit_val_batches=args.val_batches)
    init_val = trainer.validate(init, datamodule=dm, verbose=False)[0]["val/loss"]
    results["random init"] = (init, init_val, 0.0, 0)

    print(
        f"\nMAE ViT-Tiny/4 ({learnlib.PRETRAIN_CONFIG.name}), {args.train_images} train images of "
        f"{args.root}, batch {recipe.batch_size}, base_lr {recipe.model['base_lr']}, {args.steps} "
        f"steps per arm, GaLore update_proj_gap {args.update_proj_gap}, "
        f"{torch.get_num_threads()} CPU threads; linear probe on {args.train_images} train / "
        f"{args.probe_test_images} test images"
    )
    print()
    print("| arm | steps | minutes | val loss | probe acc CLS | probe acc mean |")
    print("|---|---|---|---|---|---|")
    for name, (model, val, minutes, steps) in results.items():
        acc = learnlib.probe_accuracies(model, dm, args.probe_test_images)
        print(
            f"| {name} | {steps} | {minutes:.1f} | {val:.4f} | {acc['cls']:.3f} | "
            f"{acc['mean']:.3f} |"
        )


if __name__ == "__main__":
    main()
