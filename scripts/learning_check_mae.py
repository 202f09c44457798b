"""Learning check: does a short MAE pretraining on real images learn something useful?

    python scripts/learning_check_mae.py --root ../shared/data/cifar10 --minutes 10

On a subset of a CIFAR-10 ImageFolder (``root/train``, ``root/test``), pretrain the CIFAR ViT-Tiny/4
MAE for a fixed wall-clock budget, then report

1. the validation reconstruction loss (masked patches, fixed masks) before and after pretraining;
2. the accuracy of a linear probe (logistic regression on standardized frozen features, see
   ``maskrank.metrics.linear_probe_accuracy``) on the pretrained encoder's features and on the
   same architecture's random initialisation, for the CLS token and for mean-pooled patch tokens.

Everything is measured in this run; nothing is hard-coded.
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
from maskrank.tasks import MAEPretraining


@torch.no_grad()
def features(
    model: MAEPretraining, dm: ImageFolderDataModule, images: torch.Tensor, batch: int = 256
) -> dict[str, torch.Tensor]:
    """CLS and mean-patch features (N, D) of uint8 images, unmasked, model in eval mode."""
    model.eval()
    cls, mean = [], []
    for start in range(0, images.shape[0], batch):
        x = dm.normalize(images[start : start + batch])
        f = model.encode(x)
        cls.append(f.cls)
        mean.append(f.patch_mean)
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and test/")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--probe-test-images", type=int, default=2_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="pretraining time budget")
    parser.add_argument("--epochs", type=int, default=6, help="schedule length (capped by time)")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--val-batches", type=int, default=16)
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
    model = MAEPretraining(
        vit=ViTSpec(preset="vit_tiny_32"),
        img_size=32,
        in_chans=3,
        decoder_dim=128,
        decoder_depth=4,
        decoder_heads=4,
        mask_ratio=0.75,
        norm_pix_loss=True,
        lr=args.lr,
        warmup_fraction=0.05,
    )
    random_init = copy.deepcopy(model)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        max_time={"minutes": args.minutes},
        limit_val_batches=args.val_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    minutes = (time.perf_counter() - t0) / 60
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]

    train_x = dm.train_dataloader().dataset  # TensorPairs: uint8 images of the train subset
    train_images, train_labels = train_x.images, train_x.labels
    test_images, test_labels = dm.probe_batch(args.probe_test_images)
    accs = {}
    for name, m in (("pretrained", model), ("random init", random_init)):
        tr = features(m, dm, train_images)
        te = features(m, dm, test_images)
        for kind in ("cls", "mean"):
            accs[name, kind] = linear_probe_accuracy(tr[kind], train_labels, te[kind], test_labels)

    print(
        f"\nMAE ViT-Tiny/4, {args.train_images} train images of {args.root}, batch {args.batch}, "
        f"lr {args.lr}, {trainer.global_step} steps ({trainer.current_epoch} epochs) in "
        f"{minutes:.1f} min, {torch.get_num_threads()} CPU threads"
    )
    print(
        f"val reconstruction loss ({args.val_batches} batches, masked patches, norm_pix): "
        f"{before:.4f} before -> {after:.4f} after ({100 * (before - after) / before:.1f} % lower)"
    )
    print(f"linear probe ({len(train_labels)} train / {len(test_labels)} test images):")
    print(f"{'encoder':<12} {'CLS acc':>8} {'mean acc':>9}")
    for name in ("pretrained", "random init"):
        print(f"{name:<12} {accs[name, 'cls']:8.3f} {accs[name, 'mean']:9.3f}")


if __name__ == "__main__":
    main()
