"""optimize -> stream under 2 DDP processes (gloo, CPU): every training image exactly once per epoch
across the ranks, none on two ranks, in a new order each epoch, with random crops on."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from maskrank.data import StreamingDataModule
from maskrank.data.optimize import optimize_dataset
from maskrank.tasks import ImageClassifier
from streaming_helpers import write_image_folder
from tests_helpers import TINY_VIT


class SeenIds(Callback):
    """Each rank appends the image ids of its training batches to ``<folder>/rank<r>_epoch<e>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        images = batch[0]  # normalized float (B, 3, 32, 32) of flat images
        red = images[:, 0, 16, 16] * dm.std[0] + dm.mean[0]  # (B,) on the 0..1 scale
        ids = ((red * 255).round().long() - 1) // 3
        name = self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}"
        with name.open("a") as handle:
            handle.write("".join(f"{int(i)}\n" for i in ids))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*IterableDataset.*", "ignore:.*sync_dist.*")
def test_two_processes_stream_every_image_once_per_epoch(tmp_path):
    src = write_image_folder(tmp_path / "src", train=64, val=16)
    optimize_dataset(str(src), str(tmp_path / "out"), workers=1, progress=False)
    seen = tmp_path / "seen"
    seen.mkdir()
    pl.seed_everything(0)
    data = StreamingDataModule(str(tmp_path / "out"), image_size=32, batch_size=8, num_workers=0)
    model = ImageClassifier(vit=TINY_VIT, num_classes=4, img_size=32)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[SeenIds(seen)],
    )
    trainer.fit(model, datamodule=data)

    orders = []
    for epoch in (0, 1):
        ranks = [
            [int(v) for v in (seen / f"rank{r}_epoch{epoch}").read_text().split()] for r in (0, 1)
        ]
        assert len(ranks[0]) == len(ranks[1]) == 32  # 4 batches of 8 on each rank
        assert not set(ranks[0]) & set(ranks[1])
        assert sorted(ranks[0] + ranks[1]) == list(range(64))
        orders.append(ranks[0] + ranks[1])
    assert orders[0] != orders[1]
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))
