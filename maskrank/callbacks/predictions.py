"""``maskrank predict`` writes what the task predicts to the run directory.

A task's ``predict_step`` returns a dict of batch-first tensors (``(B, ...)`` each); this callback
gathers them on the CPU and, at the end of the predict epoch, writes them concatenated as
``predictions.pt`` (a dict of tensors, plus ``class_names`` when the datamodule has classes)
under the run directory, atomically. A classifier's rows (``pred``, ``probs`` and, when the data
is labelled, ``label``) are also written as ``predictions.csv`` with the class names. Under DDP
each process writes its own share (``predictions.rank<R>.pt``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from maskrank.data.describe import class_names_of
from maskrank.errors import ConfigError
from maskrank.io.atomic import atomic_torch_save, atomic_write_text

__all__ = ["PredictionWriter", "prediction_csv"]


def prediction_csv(outputs: dict[str, Tensor], class_names: list[str]) -> str:
    """CSV text with one row per image: index, [label, label_name,] pred, pred_name, prob."""
    pred, probs = outputs["pred"], outputs["probs"]  # (N,), (N, K)
    label = outputs.get("label")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["index"] + (["label", "label_name"] if label is not None else [])
    writer.writerow([*head, "pred", "pred_name", "prob", *(f"prob_{n}" for n in class_names)])
    for i in range(pred.shape[0]):
        row: list[Any] = [i]
        if label is not None:
            row += [int(label[i]), class_names[int(label[i])]]
        p = int(pred[i])
        row += [p, class_names[p], f"{float(probs[i, p]):.6f}"]
        row += [f"{float(v):.6f}" for v in probs[i]]
        writer.writerow(row)
    return buffer.getvalue()


class PredictionWriter(pl.Callback):
    """Write the outputs of ``predict`` to ``<run dir>/predictions.pt`` (and ``.csv``).

    Args:
        reconstructions: an MAE task also returns its masked reconstructions (``recon``,
            ``mask``; ``C·H·W`` floats per image, so large sets need the memory for them).
    """

    def __init__(self, reconstructions: bool = False) -> None:
        self.reconstructions = reconstructions
        self._parts: list[dict[str, Tensor]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts = []
        if hasattr(pl_module, "predict_reconstructions"):
            pl_module.predict_reconstructions = self.reconstructions
        elif self.reconstructions:
            raise ConfigError(
                f"--predictions.reconstructions true: {type(pl_module).__name__} has no decoder "
                "to reconstruct images with (an MAEPretraining checkpoint has)"
            )

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict):
            raise TypeError(
                f"{type(pl_module).__name__}.predict_step must return a dict of tensors to be "
                f"written, got {type(outputs).__name__}"
            )
        self._parts.append({k: v.detach().cpu() for k, v in outputs.items()})

    def run_dir(self, trainer: pl.Trainer) -> Path:
        """The logger's run directory, else ``trainer.default_root_dir``."""
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parts, self._parts = self._parts, []
        if not parts:
            return
        outputs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        result: dict[str, Any] = dict(outputs)
        suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        run_dir = self.run_dir(trainer)
        written = [run_dir / f"predictions{suffix}.pt"]
        if "probs" in outputs:
            names = class_names_of(trainer.datamodule, outputs["probs"].shape[1])
            result["class_names"] = names
            written.append(run_dir / f"predictions{suffix}.csv")
            atomic_write_text(written[1], prediction_csv(outputs, names))
        atomic_torch_save(result, written[0])
        rows = next(iter(outputs.values())).shape[0]
        print(f"predictions: {', '.join(map(str, written))} ({rows} images; keys {sorted(result)})")
