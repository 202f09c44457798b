"""Patch masking for masked image modelling: pure functions (SCIENCE.md §5).

Every strategy produces a score per patch and keeps the ``num_keep`` lowest-scoring patches (MAE's
rule: ascending argsort, the first ``num_keep`` stay visible), so all samples of a batch keep
exactly the same number of tokens (the encoder then runs on a dense (B, K, D) tensor). The result
is a :class:`Masking`:

- ``ids_keep`` (B, K): indices of the visible patches, in the order the encoder sees them;
- ``mask`` (B, L): 1.0 for a masked patch, 0.0 for a visible one, in the original patch order;
- ``ids_restore`` (B, L): the inverse permutation, so ``gather(cat(visible, masked), ids_restore)``
  puts tokens back in image order;
- ``ids_masked`` (B, L - K): indices of the masked patches, the rest of the shuffle.

Strategies: ``random`` (MAE: argsort of uniform noise, the smallest noise kept), ``block``
(BEiT-style rectangles, filled in order until the masked count is reached), ``grid`` (keep one
patch of every s x s cell, random offset per sample). The mask ratio itself can be fixed, drawn
per batch from a range, or scheduled linearly over training: :func:`mask_ratio_at`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from maskrank.errors import ConfigError, check_interval

Strategy = Literal["random", "block", "grid"]


@dataclass(frozen=True)
class Masking:
    """Kept indices (B, K), binary mask (B, L) with 1 = masked, restore indices (B, L), and the
    masked indices (B, L - K) in the order they follow the visible ones."""

    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    ids_masked: torch.Tensor


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches for a ratio in [0, 1): MAE's ``int(L * (1 - r))``, at least 1.

    The same truncating expression as official MAE (16 patches at 0.7 keep 4, not round()'s 5).
    Where MAE would keep none (``L * (1 - r) < 1``) one patch stays visible, so that the encoder
    always sees an image token.
    """
    check_interval(mask_ratio, "mask_ratio", 0.0, 1.0)
    return max(1, int(num_patches * (1 - mask_ratio)))


@dataclass(frozen=True)
class MaskingSpec:
    """How patches are masked over a run: the ratio (fixed, drawn per batch, or scheduled) and the
    strategy, checked once; errors name the task's arguments (``mask_ratio``, ...).

    Attributes:
        ratio: fraction of patches masked (the start value when ``end`` is set), in [0, 1).
        range: if set, a ratio drawn uniformly from [low, high) for every training batch.
        end: if set, the training ratio moves linearly from ``ratio`` to this over training.
        strategy: ``random`` (MAE), ``block`` (BEiT-style rectangles) or ``grid``.
    """

    ratio: float = 0.75
    range: tuple[float, float] | None = None
    end: float | None = None
    strategy: Strategy = "random"

    def __post_init__(self) -> None:
        check_interval(self.ratio, "mask_ratio", 0.0, 1.0)
        if self.end is not None:
            check_interval(self.end, "mask_ratio_end", 0.0, 1.0)
        if self.range is not None:
            low, high = self.range
            check_interval(low, "mask_ratio_range", 0.0, 1.0)
            check_interval(high, "mask_ratio_range", 0.0, 1.0)
            if low > high:
                raise ConfigError(f"{{field}} = [{low}, {high}] is high-to-low", "mask_ratio_range")
            object.__setattr__(self, "range", (float(low), float(high)))
        if self.strategy not in get_args(Strategy):
            raise ConfigError(
                f"unknown masking {self.strategy!r} ({{field}}): expected random, block or grid",
                "masking",
            )

    def check_patches(self, num_patches: int) -> None:
        """Refuse a setting that leaves the reconstruction loss empty for ``num_patches`` patches.

        Every ratio the run uses (the fixed or starting ratio, the ends of the range and of the
        schedule, the evaluation ratio) must mask at least one patch after truncation
        (:func:`num_kept`), which only a ratio of (about) 0 fails; masking keeps one patch visible
        whatever the ratio. A grid needs one fixed square ratio (``1 / (1 - r)`` a square): a
        drawn or scheduled ratio is not one.
        """
        used = [("mask_ratio", f"{self.ratio!r}", self.ratio)]
        if self.range is not None:  # fewest masked patches at the low end
            low, high = self.range
            used.append(("mask_ratio_range", f"[{low!r}, {high!r}] (its low end)", low))
        if self.end is not None:
            used.append(("mask_ratio_end", f"{self.end!r}", self.end))
        for field, shown, ratio in used:
            kept = num_kept(num_patches, ratio)
            if kept == num_patches:
                raise ConfigError(
                    f"{{field}} = {shown} masks none of the model's {num_patches} patches "
                    f"(int({num_patches} x (1 - {ratio!r})) = {kept} stay visible), so there "
                    "is nothing to reconstruct; expected a ratio above 0",
                    field,
                )
        if self.strategy == "grid":
            varying = "mask_ratio_range" if self.range is not None else "mask_ratio_end"
            if self.varies:
                raise ConfigError(
                    "{field} is set but masking is grid, which needs one fixed ratio with "
                    "1 / (1 - mask_ratio) a square (0.75, 0.8889, 0.9375); unset it or use "
                    "masking: random or block",
                    varying,
                )
            grid_stride(self.ratio)

    @property
    def varies(self) -> bool:
        """True if the training ratio changes from batch to batch (drawn or scheduled)."""
        return self.range is not None or self.end is not None

    @property
    def eval_ratio(self) -> float:
        """The one ratio every evaluation uses (validation loss, monitors, reconstructions): the
        ratio training ends at with a schedule (``end``, 0.0 included), else ``ratio``."""
        return self.ratio if self.end is None else self.end

    def ratio_at(self, progress: float, rng: random.Random | None = None) -> float:
        """The training ratio for one batch at ``progress`` (fraction of training done)."""
        return mask_ratio_at(progress, self.ratio, self.range, self.end, rng)


def masking_from_scores(scores: torch.Tensor, num_keep: int) -> Masking:
    """Keep the ``num_keep`` lowest-scoring patches of each row of ``scores`` (B, L)."""
    batch, length = scores.shape
    # Ascending argsort, as MAE: the first num_keep indices are the visible patches.
    ids_shuffle = torch.argsort(scores, dim=1)  # (B, L)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L) inverse permutation
    ids_keep, ids_masked = ids_shuffle[:, :num_keep], ids_shuffle[:, num_keep:]  # (B, K), (B, L-K)
    mask = torch.ones(batch, length, device=scores.device)
    mask[:, :num_keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)  # back to image order
    return Masking(ids_keep, mask, ids_restore, ids_masked)


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Masking:
    """Per-sample uniform random masking (MAE): keep the patches with the smallest noise."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return masking_from_scores(noise, num_kept(num_patches, mask_ratio))


def block_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> Masking:
    """Mask random rectangles of patches (BEiT-style), exactly ``L - K`` per sample.

    Candidate blocks (area >= ``min_block`` patches, log-uniform aspect in ``aspect``) are drawn in
    parallel; a patch covered by block ``j`` scores ``n_blocks - j``, uncovered patches score 0,
    plus a tie-breaking uniform noise in [0, 1). The lowest scores stay visible, so earlier blocks
    are masked whole, later ones partly, and uncovered patches only if the blocks fall short.
    """
    gh, gw = grid
    length = gh * gw
    n_mask = length - num_kept(length, mask_ratio)
    n_blocks = max(1, math.ceil(n_mask / max(1, min_block)))  # (B, M) blocks, enough to cover
    shape = (batch, n_blocks)
    area = torch.empty(shape, device=device).uniform_(
        min_block, max(min_block, n_mask), generator=generator
    )
    log_ar = torch.empty(shape, device=device).uniform_(
        math.log(aspect[0]), math.log(aspect[1]), generator=generator
    )
    h = (area * log_ar.exp()).sqrt().round().clamp(1, gh)  # (B, M) block height in patches
    w = (area / log_ar.exp()).sqrt().round().clamp(1, gw)  # (B, M) block width
    top = (torch.rand(shape, device=device, generator=generator) * (gh - h + 1)).floor()
    left = (torch.rand(shape, device=device, generator=generator) * (gw - w + 1)).floor()
    rows = torch.arange(gh, device=device).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, 1, gw)
    covered = (
        (rows >= top[..., None, None])
        & (rows < (top + h)[..., None, None])
        & (cols >= left[..., None, None])
        & (cols < (left + w)[..., None, None])
    )  # (B, M, gh, gw)
    rank = torch.arange(n_blocks, 0, -1, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    mask_score = (covered * rank).amax(dim=1).flatten(1)  # (B, L): n_blocks - first block index
    noise = torch.rand(batch, length, device=device, generator=generator)
    return masking_from_scores(mask_score + noise, length - n_mask)  # lowest mask-score visible


def grid_stride(mask_ratio: float) -> int:
    """The cell side ``s = sqrt(1 / (1 - r))`` of grid masking; a ConfigError unless an integer."""
    stride = math.sqrt(1.0 / (1.0 - mask_ratio))
    if abs(stride - round(stride)) > 1e-3:
        raise ConfigError(
            "grid masking needs 1 / (1 - mask_ratio) to be a square (0.75, 0.8889, 0.9375); "
            f"got {{field}} = {mask_ratio}",
            "mask_ratio",
        )
    return int(round(stride))


def grid_masking(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Masking:
    """Keep one patch in every ``s x s`` cell (``s = sqrt(1 / (1 - r))``), random offset per sample.

    The ratio must make ``s`` an integer (0.75 -> 2, 0.8889 -> 3); patches on the lattice are kept
    first, so when the grid does not divide evenly the kept count is still exactly ``K``.
    """
    s = grid_stride(mask_ratio)
    gh, gw = grid
    off = torch.randint(0, s, (batch, 2), device=device, generator=generator)  # (B, 2)
    rows = torch.arange(gh, device=device).view(1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, gw)
    on_lattice = ((rows - off[:, :1, None]) % s == 0) & ((cols - off[:, 1:, None]) % s == 0)
    noise = torch.rand(batch, gh * gw, device=device, generator=generator)
    # negated: lattice patches (+1) score lowest, so they are kept first, then by largest noise
    keep_score = on_lattice.flatten(1).float() + noise
    return masking_from_scores(-keep_score, num_kept(gh * gw, mask_ratio))


def make_masking(
    strategy: Strategy,
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Masking:
    """Dispatch to :func:`random_masking`, :func:`block_masking` or :func:`grid_masking`."""
    if strategy == "random":
        return random_masking(batch, grid[0] * grid[1], mask_ratio, device, generator)
    if strategy == "block":
        return block_masking(batch, grid, mask_ratio, device, generator)
    if strategy == "grid":
        return grid_masking(batch, grid, mask_ratio, device, generator)
    raise ConfigError(
        f"unknown masking {strategy!r} ({{field}}): expected random, block or grid", "masking"
    )


def mask_ratio_at(
    progress: float,
    ratio: float,
    ratio_range: tuple[float, float] | None = None,
    ratio_end: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """The mask ratio for one batch.

    Args:
        progress: fraction of training done, in [0, 1].
        ratio: the fixed ratio (or the schedule's start).
        ratio_range: if given, a ratio drawn uniformly from this range for every batch.
        ratio_end: if given, the ratio goes linearly from ``ratio`` to ``ratio_end`` over training.
        rng: the random source for ``ratio_range`` (a ``random.Random``; module RNG if None).
    """
    if ratio_range is not None:
        low, high = ratio_range
        return (rng or random).uniform(low, high)
    if ratio_end is not None:
        progress = min(1.0, max(0.0, progress))
        return ratio + (ratio_end - ratio) * progress
    return ratio


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, L, D) gathered along L by ``ids`` (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
