"""A 2-process FSDP fit of the tiny MAE on CPU (gloo), as a script: Lightning's FSDP strategies
start the second process by running this file again
(``PYTHONPATH=tests python tests/testkit/fsdp_fit.py STRATEGY OUT``).

``STRATEGY`` is ``fsdp1`` (:class:`testkit.fsdp.CpuFSDPStrategy`) or ``fsdp2``
(``ModelParallelStrategy`` with 2-way data parallelism, the task's own ``configure_model``). Each
rank writes ``OUT/rank<R>.json``: its training losses and its optimizer's groups by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from maskrank.data import SyntheticLowRank
from testkit.fsdp import CpuFSDPStrategy, named_groups
from testkit.tiny import tiny_mae

STEPS = 8


class Record(pl.Callback):
    """Each rank's loss per step and, at the start, its optimizer groups by name and the number
    of parameter entries it holds (its shards)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.groups: list = []
        self.local_numel = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.groups = named_groups(pl_module, trainer.optimizers[0])
        self.local_numel = sum(
            (p.to_local() if isinstance(p, DTensor) else p).numel() for p in pl_module.parameters()
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def main(which: str, out: Path) -> None:
    torch.set_num_threads(1)  # two processes on a small CPU
    pl.seed_everything(0)
    if which == "fsdp1":
        strategy = CpuFSDPStrategy(process_group_backend="gloo")
    else:
        strategy = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo"
        )
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[record],
    )
    # 4 batches of 8 per rank and epoch: 2 epochs
    data = SyntheticLowRank(num_classes=4, class_rank=2, train_size=64, val_size=16, batch_size=8)
    trainer.fit(tiny_mae(lr=3e-3), datamodule=data)
    result = {
        "losses": record.losses,
        "groups": record.groups,
        "local_numel": record.local_numel,
        "world_size": trainer.world_size,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
