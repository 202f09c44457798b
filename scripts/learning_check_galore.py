"""Learning check: does GaLore pretrain the CIFAR MAE as well as AdamW for the same steps?

    python scripts/learning_check_galore.py --root ../shared/data/cifar10 --steps 100

On a subset of a CIFAR-10 ImageFolder (``root/train``, ``root/test``), pretrain the CIFAR ViT-Tiny/4
MAE from the same initial weights on the same batches for ``steps`` optimizer steps with each arm:
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

import pytorch_lightning as pl
import torch

from maskrank.data import ImageFolderDataModule
from maskrank.metrics import linear_probe_accuracy
from maskrank.models.vit import ViTSpec
from maskrank.optim import OptimizerSpec
from maskrank.tasks import MAEPretraining


@torch.no_grad()
def features(
    model: MAEPretraining, dm: ImageFolderDataModule, images: torch.Tensor, batch: int = 256
) -> dict[str, torch.Tensor]:
    """CLS and mean-patch features (N, D) of uint8 images, unmasked, model in eval mode."""
    model.eval()
    cls, mean = [], []
    for start in range(0, images.shape[0], batch):
        f = model.encode(dm.normalize(images[start : start + batch]))
        cls.append(f.cls)
        mean.append(f.patch_mean)
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and test/")
    parser.add_argument("--train-images", type=int, default=5_000)
    parser.add_argument("--probe-test-images", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--update-proj-gap", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--val-batches", type=int, default=8)
    args = parser.parse_args()

    pl.seed_everything(0)
    dm = ImageFolderDataModule(
        root=args.root,
        image_size=32,
        batch_size=args.batch,
        train_subset=args.train_images,
        crop_scale=(0.2, 1.0),
    )
    dm.prepare_data()
    dm.setup("fit")
    arms = {"adamw": OptimizerSpec(name="adamw")}
    for rank in args.ranks:
        arms[f"galore r{rank}"] = OptimizerSpec(
            name="galore_adamw", rank=rank, update_proj_gap=args.update_proj_gap
        )
    init = None
    results = {}
    for name, spec in arms.items():
        pl.seed_everything(0)  # same batches, masks and augmentation in every arm
        model = MAEPretraining(
            vit=ViTSpec(preset="vit_tiny_32"),
            decoder_dim=128,
            decoder_depth=4,
            decoder_heads=4,
            mask_ratio=0.75,
            norm_pix_loss=True,
            lr=args.lr,
            betas=(0.9, 0.95),
            warmup_fraction=0.05,
            optimizer=spec,
        )
        if init is None:
            init = copy.deepcopy(model)
        model.load_state_dict(init.state_dict())
        trainer = pl.Trainer(
            max_steps=args.steps,
            limit_val_batches=args.val_batches,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=10_000,
        )
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        minutes = (time.perf_counter() - t0) / 60
        val = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
        results[name] = (model, val, minutes, trainer.global_step)
    trainer = pl.Trainer(
        logger=False, limit_val_batches=args.val_batches, enable_progress_bar=False
    )
    init_val = trainer.validate(init, datamodule=dm, verbose=False)[0]["val/loss"]
    results["random init"] = (init, init_val, 0.0, 0)

    train_x = dm.train_dataloader().dataset  # TensorPairs: uint8 images of the train subset
    train_images, train_labels = train_x.images, train_x.labels
    test_images, test_labels = dm.probe_batch(args.probe_test_images)
    print(
        f"\nMAE ViT-Tiny/4, {args.train_images} train images of {args.root}, batch {args.batch}, "
        f"lr {args.lr}, {args.steps} steps per arm, GaLore update_proj_gap "
        f"{args.update_proj_gap}, {torch.get_num_threads()} CPU threads; linear probe on "
        f"{len(train_labels)} train / {len(test_labels)} test images"
    )
    print()
    print("| arm | steps | minutes | val loss | probe acc CLS | probe acc mean |")
    print("|---|---|---|---|---|---|")
    for name, (model, val, minutes, steps) in results.items():
        tr = features(model, dm, train_images)
        te = features(model, dm, test_images)
        acc = {
            k: linear_probe_accuracy(tr[k], train_labels, te[k], test_labels)
            for k in ("cls", "mean")
        }
        print(
            f"| {name} | {steps} | {minutes:.1f} | {val:.4f} | {acc['cls']:.3f} | "
            f"{acc['mean']:.3f} |"
        )


if __name__ == "__main__":
    main()
