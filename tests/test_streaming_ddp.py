"""optimize -> stream under 2 DDP processes (gloo, CPU): every training image exactly once per epoch
across the ranks, none on two ranks, in a new order each epoch, with random crops on; and a fit
resumed on both ranks from a mid-epoch checkpoint ends with the uninterrupted run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from maskrank.callbacks import RngStateCheckpoint
from maskrank.data import StreamingDataModule
from maskrank.data.stream.optimize import optimize_dataset
from maskrank.tasks import MAEPretraining
from resume_helpers import max_abs_diff, tiny_mae_model
from streaming_helpers import SeenIds, write_image_folder


def _fit(root: Path, tmp_path: Path, *callbacks: Callback, ckpt_path: str | None = None) -> dict:
    """A 2-process ddp_spawn fit of the tiny MAE (2 epochs x 4 steps); rank 0's final weights."""
    pl.seed_everything(0)
    data = StreamingDataModule(str(root), image_size=32, batch_size=8, num_workers=0)
    model = MAEPretraining(**tiny_mae_model()["init_args"], img_size=32, lr=3e-3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[RngStateCheckpoint(), *callbacks],
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}  # back from rank 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*IterableDataset.*", "ignore:.*sync_dist.*")
def test_two_processes_stream_every_image_once_per_epoch_and_resume_exactly(tmp_path):
    src = write_image_folder(tmp_path / "src", train=64, val=16)
    root = tmp_path / "out"
    optimize_dataset(str(src), str(root), workers=1, progress=False)
    seen = tmp_path / "seen"
    seen.mkdir()
    # the uninterrupted run also keeps its step-3 checkpoint: 3 batches into epoch 0 (of 4)
    every3 = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    reference = _fit(root, tmp_path, SeenIds(seen), every3)

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

    # a second run resumes from that mid-epoch checkpoint, as after a crash at step 4 or 5
    step3 = next((tmp_path / "ckpt").glob("*step=3.ckpt"))
    assert torch.load(step3, weights_only=True)["global_step"] == 3
    resumed = _fit(root, tmp_path, ckpt_path=str(step3))
    assert max_abs_diff(resumed, reference) == 0.0
    pl.seed_everything(0)
    initial = MAEPretraining(**tiny_mae_model()["init_args"], img_size=32, lr=3e-3).state_dict()
    assert max_abs_diff(reference, initial) > 1e-4  # the weights did come back from training
