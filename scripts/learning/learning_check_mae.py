"""Learning check: does the shipped MAE recipe learn something useful from real images?

    python scripts/learning/learning_check_mae.py --root ../shared/data/cifar10 --steps 200

On a subset of a CIFAR-10 ImageFolder (``root/train``, ``root/test``), pretrain the MAE of
``configs/pretrain/mae_vit_tiny_cifar10.yaml`` (read from the file: model, optimiser, schedule,
batch size and crop; see ``learnlib.recipe``) for ``--steps`` optimizer steps, with the cosine
schedule ending at the last step, then report

1. the validation reconstruction loss (masked patches, fixed masks) before and after, next to the
   loss of predicting zeros (about 1.0 with ``norm_pix_loss``);
2. the accuracy of a linear probe (logistic regression on standardized frozen features, see
   ``maskrank.metrics.linear_probe_accuracy``) fit on the whole training subset, for the
   pretrained encoder and for the same weights before training (MAE's initialisation), on the CLS
   token and on mean-pooled patch tokens.

Everything is measured in this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import copy
import time

import learnlib  # scripts/learning/learnlib.py: a script's own folder is first on sys.path
import pytorch_lightning as pl
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and test/")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--probe-test-images", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (schedule length)")
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps: expected a positive number of optimizer steps, found {args.steps}")

    pl.seed_everything(args.seed)
    recipe = learnlib.recipe()
    dm = learnlib.cifar_subset(args.root, recipe.batch_size, args.train_images, recipe.crop_scale)
    model = recipe.build()
    random_init = copy.deepcopy(model)
    trainer = learnlib.quiet_trainer(
        max_steps=args.steps, max_epochs=-1, limit_val_batches=args.val_batches,
        check_val_every_n_epoch=100_000,
    )  # fmt: skip
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    minutes = (time.perf_counter() - t0) / 60
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]

    accs = {
        name: learnlib.probe_accuracies(m, dm, args.probe_test_images)
        for name, m in (("MAE-pretrained", model), ("random initialisation", random_init))
    }
    drop = 100 * (before["val/loss"] - after["val/loss"]) / before["val/loss"]
    print(
        f"\nMAE ViT-Tiny/4 ({learnlib.PRETRAIN_CONFIG.name}), {args.train_images} train images of "
        f"{args.root}, batch {recipe.batch_size}, base_lr {recipe.model['base_lr']}, seed "
        f"{args.seed}: {trainer.global_step} steps in {minutes:.1f} min, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"val reconstruction loss ({args.val_batches} batches, masked patches, norm_pix): "
        f"{before['val/loss']:.4f} before -> {after['val/loss']:.4f} after ({drop:.1f} % lower); "
        f"predicting zeros: {after['val/loss_trivial']:.4f}"
    )
    print(f"linear probe, {args.train_images} train / {args.probe_test_images} test images:\n")
    print("| encoder | CLS token | mean patch token |")
    print("| --- | --- | --- |")
    for name, acc in accs.items():
        print(f"| {name} | {100 * acc['cls']:.1f} % | {100 * acc['mean']:.1f} % |")


if __name__ == "__main__":
    main()
