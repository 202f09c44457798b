from __future__ import annotations

import random

import pytest
import torch

from maskrank.errors import ConfigError
from maskrank.models.masking import (
    gather_tokens,
    make_masking,
    mask_ratio_at,
    num_kept,
)

STRATEGIES = ["random", "block", "grid"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_exact_number_kept_and_consistent_outputs(strategy, ratio):
    grid = (8, 8)
    m = make_masking(strategy, 16, grid, ratio, generator=torch.Generator().manual_seed(0))
    keep = num_kept(64, ratio)
    assert m.ids_keep.shape == (16, keep)
    assert (m.mask.sum(dim=1) == 64 - keep).all()
    # kept indices are exactly the visible (mask == 0) positions, without repeats
    for b in range(16):
        assert sorted(m.ids_keep[b].tolist()) == torch.nonzero(m.mask[b] == 0).flatten().tolist()
        # ... and the masked indices exactly the masked positions
        assert sorted(m.ids_masked[b].tolist()) == torch.nonzero(m.mask[b]).flatten().tolist()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_restore_inverts_the_shuffle(strategy):
    b, grid = 4, (4, 4)
    m = make_masking(strategy, b, grid, 0.75, generator=torch.Generator().manual_seed(1))
    tokens = torch.arange(16, dtype=torch.float32).view(1, 16, 1).expand(b, 16, 3)
    visible = gather_tokens(tokens, m.ids_keep)
    # Put visible tokens first and placeholders after, then restore: visible land where they were
    placeholder = torch.full((b, 16 - m.ids_keep.shape[1], 3), -1.0)
    restored = gather_tokens(torch.cat([visible, placeholder], 1), m.ids_restore)
    expected = torch.where(m.mask.bool()[..., None], torch.tensor(-1.0), tokens)
    assert torch.equal(restored, expected)


def test_random_masking_is_uniform_over_positions():
    m = make_masking("random", 4000, (4, 4), 0.75, generator=torch.Generator().manual_seed(0))
    freq = m.mask.mean(dim=0)
    assert torch.allclose(freq, torch.full_like(freq, 0.75), atol=0.03)


def test_block_masking_masks_contiguous_regions():
    g = torch.Generator().manual_seed(0)
    m = make_masking("block", 64, (8, 8), 0.5, generator=g).mask.view(64, 8, 8)
    # Fraction of masked patches whose right neighbour is also masked: ~0.5 for random masking,
    # much higher for blocks.
    same = (m[:, :, :-1] * m[:, :, 1:]).sum() / m[:, :, :-1].sum()
    rnd = make_masking("random", 64, (8, 8), 0.5, generator=g).mask.view(64, 8, 8)
    same_rnd = (rnd[:, :, :-1] * rnd[:, :, 1:]).sum() / rnd[:, :, :-1].sum()
    assert same > same_rnd + 0.2


def test_grid_masking_keeps_a_lattice():
    m = make_masking("grid", 8, (8, 8), 0.75, generator=torch.Generator().manual_seed(0))
    visible = (1 - m.mask).view(8, 8, 8)
    for v in visible:
        rows, cols = torch.nonzero(v, as_tuple=True)
        assert len(set((rows % 2).tolist())) == 1 and len(set((cols % 2).tolist())) == 1


def test_grid_masking_rejects_non_square_ratio():
    with pytest.raises(ConfigError, match="grid masking"):
        make_masking("grid", 2, (8, 8), 0.6)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_mask_ratio_out_of_range_names_the_flag(ratio):
    with pytest.raises(ConfigError, match="mask_ratio"):
        make_masking("random", 2, (4, 4), ratio)


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="random, block or grid"):
        make_masking("checkerboard", 2, (4, 4), 0.5)


def test_mask_ratio_fixed_range_and_schedule():
    assert mask_ratio_at(0.3, 0.75) == 0.75
    assert mask_ratio_at(0.0, 0.5, ratio_end=0.9) == pytest.approx(0.5)
    assert mask_ratio_at(0.5, 0.5, ratio_end=0.9) == pytest.approx(0.7)
    assert mask_ratio_at(2.0, 0.5, ratio_end=0.9) == pytest.approx(0.9)
    rng = random.Random(0)
    draws = [mask_ratio_at(0.0, 0.75, ratio_range=(0.6, 0.8), rng=rng) for _ in range(500)]
    assert 0.6 <= min(draws) and max(draws) <= 0.8 and max(draws) - min(draws) > 0.15
