"""Unmasked encoder features of fixed image sets for the evaluation callbacks (SCIENCE.md §2, §9).

Every evaluation callback embeds images the same way: eval mode, no masking, through
``pl_module.encode``, in chunks; under DDP every rank embeds one contiguous shard and the features
are gathered, so every rank holds the features of the whole set, in order, and no number depends
on the device count.

Features of a *named* set (e.g. the held-out probe set of ``n`` images) are cached for the rest of
the current validation epoch, so that RepresentationRankMonitor and OnlineKNN, run at the same
epoch, share one forward pass: the cache is keyed by the trainer (weakly), the set's name and
``global_step``, and every validation epoch starts with an empty cache
(:func:`clear_feature_cache`, called by each callback's ``on_validation_epoch_start``), so a
later evaluation never sees features of earlier weights.
"""

from __future__ import annotations

from collections.abc import Hashable
from weakref import WeakKeyDictionary

import pytorch_lightning as pl
import torch
from torch import Tensor

from maskrank.callbacks._common import eval_mode

__all__ = [
    "clear_feature_cache",
    "embed",
    "embed_cached",
    "merge_shards",
    "shard_bounds",
]

# trainer -> {(name, global_step): {feature name: (N, D) or (N, L, D)}}
_CACHE: WeakKeyDictionary[pl.Trainer, dict[Hashable, dict[str, Tensor]]] = WeakKeyDictionary()


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` shards of ``range(n)`` for ``world`` ranks (sizes differ <= 1)."""
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return [(s, s + size) for s, size in zip(starts, sizes, strict=True)]


def merge_shards(gathered: Tensor, sizes: list[int]) -> Tensor:
    """Undo the sharding: ``gathered`` (world, n_pad, ...) -> (sum(sizes), ...) in probe order."""
    return torch.cat([gathered[r, :size] for r, size in enumerate(sizes)])


@torch.no_grad()
def _local_features(
    pl_module: pl.LightningModule, images: Tensor, batch_size: int, per_block: bool, tokens: bool
) -> dict[str, Tensor]:
    """Unmasked features of ``images`` (n, C, H, W), float32: name -> (n, D) or (n, L, D)."""
    parts: dict[str, list[Tensor]] = {}
    with eval_mode(pl_module):
        for chunk in images.split(batch_size):  # (b, C, H, W)
            f = pl_module.encode(chunk)
            out = {"final_cls": f.cls, "final_mean": f.patch_mean}  # (b, D) each
            if per_block:
                for i, (cls, mean) in enumerate(zip(f.block_cls, f.block_mean, strict=True)):
                    out[f"block{i:02d}_cls"] = cls  # (b, D)
                    out[f"block{i:02d}_mean"] = mean  # (b, D)
            if tokens:
                out["tokens"] = f.tokens  # (b, L, D)
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float())
    return {key: torch.cat(chunks) for key, chunks in parts.items()}


def embed(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    images: Tensor,
    batch_size: int,
    per_block: bool = False,
    tokens: bool = False,
) -> dict[str, Tensor]:
    """Features of all ``images`` (N, C, H, W) on every rank; each rank embeds one shard.

    Keys: ``final_cls``, ``final_mean`` (N, D); with ``per_block`` also ``blockXX_cls`` and
    ``blockXX_mean`` per block; with ``tokens`` also ``tokens`` (N, L, D). Call on every rank.
    """
    world = trainer.world_size
    if world == 1:
        return _local_features(pl_module, images, batch_size, per_block, tokens)
    bounds = shard_bounds(images.shape[0], world)
    sizes = [stop - start for start, stop in bounds]
    start, stop = bounds[trainer.global_rank]
    shard = images[start:stop]  # (n_r, C, H, W)
    pad = max(sizes) - shard.shape[0]  # all_gather needs equal shapes
    if pad:
        shard = torch.cat([shard, images[:1].expand(pad, *images.shape[1:])])
    local = _local_features(pl_module, shard, batch_size, per_block, tokens)
    gathered = pl_module.all_gather(local)  # (world, n_pad, ...)
    return {key: merge_shards(value, sizes) for key, value in gathered.items()}


def embed_cached(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    name: Hashable,
    images: Tensor,
    batch_size: int,
    tokens: bool = False,
) -> dict[str, Tensor]:
    """:func:`embed` with per-block features, reused within one validation epoch.

    ``name`` identifies the image set (e.g. ``("heldout", 640)``): a caller that passes the same
    name at the same ``global_step`` gets the stored features, unless it wants ``tokens`` and the
    stored entry has none. Every rank takes the same branch, so DDP collectives stay in step.
    """
    entries = _CACHE.setdefault(trainer, {})
    key = (name, trainer.global_step)
    hit = entries.get(key)
    if hit is not None and (not tokens or "tokens" in hit):
        return hit
    features = embed(trainer, pl_module, images, batch_size, per_block=True, tokens=tokens)
    entries[key] = features
    return features


def clear_feature_cache(trainer: pl.Trainer) -> None:
    """Forget every cached feature of ``trainer`` (at the start of every validation epoch)."""
    _CACHE.pop(trainer, None)
