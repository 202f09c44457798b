"""Plumbing shared by the rank-monitoring callbacks (no metric math here: that is maskrank.metrics).

* the datamodule as the data contract (:class:`maskrank.data.ImageData`), and its fixed probe
  set, normalized on the module's device;
* a context that puts a module in eval mode and restores every submodule's own mode afterwards;
* logging: scalars computed on rank zero reach every logger (and ``trainer.callback_metrics``)
  through ``pl_module.log`` after a broadcast, so all ranks log the same values;
* readable short names for ViT weights (``enc.b03.qkv``, ``dec.b01.fc2``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from maskrank.data import ImageData, is_image_data
from maskrank.metrics import NonFiniteInputError
from maskrank.models.observed import Encodes, ObservedTask

T = TypeVar("T")

__all__ = [
    "block_index_name",
    "due_after_validation",
    "eval_mode",
    "image_data",
    "log_from_rank_zero",
    "module_type_name",
    "probe_images",
    "sharded_skip",
    "short_module_name",
    "tensorboard",
]

# ``blocks.3.attn.qkv`` / ``decoder_blocks.1.mlp.fc2`` anywhere in a parameter or module name.
_BLOCK_RE = re.compile(r"(?:^|\.)(decoder_blocks|blocks)\.(\d+)\.(.+?)(?:\.weight)?$")


def block_index_name(index: int) -> str:
    """``3 -> 'b03'``: zero-padded block index used in every tag (0-based, as in timm)."""
    return f"b{index:02d}"


def short_module_name(name: str) -> str:
    """A short readable name for a parameter or module of a timm ViT or an MAE.

    ``mae.encoder.blocks.3.attn.qkv.weight`` and ``model.blocks.3.attn.qkv`` -> ``enc.b03.qkv``;
    ``mae.decoder_blocks.1.mlp.fc2.weight`` -> ``dec.b01.fc2``; ``...blocks.2.mlp`` -> ``enc.b02.mlp``.
    Anything else keeps its path without ``.weight`` and the ``mae.``/``model.`` prefix, with
    ``encoder.`` shortened to ``enc.`` (e.g. ``enc.patch_embed.proj``).
    """
    match = _BLOCK_RE.search(name)
    if match is not None:
        where = "dec" if match.group(1) == "decoder_blocks" else "enc"
        leaf = match.group(3).split(".")[-1]  # attn.qkv -> qkv, mlp.fc2 -> fc2, mlp -> mlp
        return f"{where}.{block_index_name(int(match.group(2)))}.{leaf}"
    short = name.removesuffix(".weight")
    for prefix in ("mae.", "model."):
        short = short.removeprefix(prefix)
    return re.sub(r"^encoder\.", "enc.", short)


def module_type_name(short: str) -> str:
    """``enc.b03.qkv -> enc.qkv``: the per-type key that block summaries average over."""
    parts = short.split(".")
    if len(parts) == 3 and re.fullmatch(r"b\d+", parts[1]):
        return f"{parts[0]}.{parts[2]}"
    return short


def tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoardLogger (histograms and images need one), or None."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def due_after_validation(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True at the end of a real validation epoch (not the sanity check) every ``every_n_epochs``.

    A stand-alone ``trainer.validate`` (``maskrank validate``) always measures.
    """
    if trainer.sanity_checking:
        return False
    if trainer.state.fn != TrainerFn.FITTING:
        return True
    return (trainer.current_epoch + 1) % every_n_epochs == 0


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; afterwards every submodule gets its own previous mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def observed(
    pl_module: pl.LightningModule,
    owner: str,
    warned: set[str],
    surface: type[Encodes] = ObservedTask,
) -> Any | None:
    """``pl_module`` as the task surface a callback reads (a Protocol of
    :mod:`maskrank.models.observed`), or None, with one warning per callback, for a module that
    does not offer it."""
    if isinstance(pl_module, surface):
        return pl_module
    if "task" not in warned:
        warned.add("task")
        rank_zero_warn(f"{owner} needs a module with {surface.__name__}'s methods; skipped.")
    return None


def skip_nonfinite(
    trainer: pl.Trainer, owner: str, measure: Callable[[], T]
) -> T | dict[str, float]:
    """``measure()``, or, when its input holds NaN/inf (a step ``NonFiniteGuard`` with
    ``action: skip`` let pass), a warning and ``{"monitor/<owner>/skipped_nonfinite": 1}``: the
    measurement is skipped and logged, the fit goes on."""
    try:
        return measure()
    except NonFiniteInputError as err:
        rank_zero_warn(
            f"{owner}: step {trainer.global_step}: {err}; this measurement is skipped "
            "(the fit goes on)"
        )
        return {f"monitor/{owner}/skipped_nonfinite": 1.0}


def image_data(trainer: pl.Trainer, owner: str, warned: set[str]) -> ImageData | None:
    """The trainer's datamodule as the data contract, or None with one warning per ``owner``
    (tracked in ``warned``) when it is not a maskrank datamodule. Every rank takes the same
    decision, so a None never desynchronizes DDP collectives."""
    datamodule = trainer.datamodule
    if is_image_data(datamodule):
        return datamodule
    if owner not in warned:
        warned.add(owner)
        rank_zero_warn(
            f"{owner} needs a maskrank datamodule (maskrank.data.ImageData: probe_batch, "
            f"augmented_views, normalize); {type(datamodule).__name__} is not one; skipped."
        )
    return None


def probe_images(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    n: int,
    owner: str,
    warned: set[str],
    split: str = "heldout",
    with_labels: bool = False,
) -> Any:
    """The datamodule's fixed probe set of ``n`` images, normalized, on ``pl_module``'s device.

    ``split="train"`` takes the fixed subset from the training split instead (unaugmented);
    ``with_labels`` returns ``(images, labels int64 (N,) on the CPU)``.

    Returns float images (N, C, H, W) in the dtype of the module's floating parameters (so a
    ``bf16-true`` run gets bf16 input), or None (see :func:`image_data`).
    """
    dm = image_data(trainer, owner, warned)
    if dm is None:
        return None
    raw, labels = dm.probe_batch(n, split)  # the same images every call, every epoch
    images = dm.normalize(raw.to(pl_module.device))  # (N, C, H, W) float32
    dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), images.dtype)
    return (images.to(dtype), labels) if with_labels else images.to(dtype)


def sharded_skip(trainer: pl.Trainer, owner: str, warned: set[str]) -> bool:
    """True (after one warning per ``owner``) when the strategy shards the parameters (FSDP).

    Under FSDP each rank holds a shard of every weight, outside ``forward`` the full matrices do
    not exist, and a forward pass is a collective every rank must join; the monitors that read
    whole weights, or run the model on rank zero only, skip instead of measuring a shard or
    waiting forever. Every rank takes the same decision.
    """
    if not isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        return False
    if owner not in warned:
        warned.add(owner)
        rank_zero_warn(
            f"{owner}: parameters are sharded ({trainer.strategy.strategy_name}); skipped."
        )
    return True


def log_from_rank_zero(
    trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: Mapping[str, float] | None
) -> dict[str, float]:
    """Log scalars computed on rank zero (``metrics`` is ignored on the other ranks).

    Under DDP the dict is broadcast, so every rank logs the same keys and values through
    ``pl_module.log``; Lightning writes them once to every logger at the end of the current
    epoch-level hook and puts them in ``trainer.callback_metrics`` on all ranks (they can be
    monitored). ``sync_dist=True`` with ``reduce_fx="max"`` reduces identical values, so it is
    exact; it only keeps Lightning from warning about unsynced epoch-level values. Call from an
    epoch-end hook, on every rank. Returns the logged dict.
    """
    values = dict(metrics or {})
    distributed = trainer.world_size > 1
    if distributed:
        values = trainer.strategy.broadcast(values, src=0)
    for key, value in values.items():
        pl_module.log(key, float(value), sync_dist=distributed, reduce_fx="max")
    return values
