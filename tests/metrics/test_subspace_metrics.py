"""Subspace similarity, update spectrum and moved singular values (SCIENCE.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrank.metrics import (
    moved_singular_values,
    subspace_similarity,
    top_singular_vectors,
    update_spectrum,
)

from . import _reference as ref


def test_identical_subspace_is_one_and_rotation_invariant(gen, orthonormal):
    a = torch.randn(30, 20, generator=gen)
    u = top_singular_vectors(a, 5)
    assert u.shape == (30, 5) and u.dtype == torch.float64
    assert subspace_similarity(u, u) == pytest.approx(1.0, abs=1e-12)
    rotation = orthonormal(5, 5)
    assert subspace_similarity(u, u @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(u.float(), (u @ rotation).float()) == pytest.approx(1.0, abs=1e-5)
    # Same subspace as an independent NumPy SVD, whatever the signs of the vectors.
    u_np = np.linalg.svd(ref.to_numpy(a))[0][:, :5]
    assert subspace_similarity(u, torch.from_numpy(u_np.copy())) == pytest.approx(1.0, abs=1e-10)


def test_orthogonal_and_partially_overlapping_subspaces(orthonormal):
    q = orthonormal(40, 12)
    assert subspace_similarity(q[:, :4], q[:, 4:8]) == pytest.approx(0.0, abs=1e-12)
    assert subspace_similarity(q[:, :4], q[:, 2:6]) == pytest.approx(0.5, abs=1e-12)
    # Different k: normalized by min(k_U, k_V); a subspace inside another scores 1.
    assert subspace_similarity(q[:, :2], q[:, :7]) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(q[:, :7], q[:, 5:9]) == pytest.approx(2 / 4, abs=1e-12)


def test_random_subspaces_score_k_over_m(gen, orthonormal):
    m, k = 50, 5
    scores = [subspace_similarity(orthonormal(m, k), orthonormal(m, k)) for _ in range(200)]
    assert np.mean(scores) == pytest.approx(k / m, abs=0.01)  # std of the mean ≈ 0.002
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_top_singular_vectors_follow_the_largest_singular_values(with_spectrum, orthonormal):
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    left = orthonormal(25, 5)
    a = (left * s) @ orthonormal(15, 5).T  # (25, 15), singular vectors known
    assert subspace_similarity(top_singular_vectors(a, 2), left[:, :2]) == pytest.approx(1.0)
    assert subspace_similarity(top_singular_vectors(a, 2), left[:, 2:]) == pytest.approx(
        0.0, abs=1e-12
    )
    one_row = top_singular_vectors(torch.tensor([[3.0, -4.0]]), 1)  # (1, 1) = ±1
    assert one_row.shape == (1, 1) and abs(float(one_row)) == pytest.approx(1.0)


def test_subspace_inputs_are_validated(gen, orthonormal):
    with pytest.raises(ValueError, match="orthonormal"):
        subspace_similarity(torch.randn(10, 3, generator=gen), orthonormal(10, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        subspace_similarity(orthonormal(10, 3), orthonormal(11, 3))
    with pytest.raises(ValueError, match="exceeds"):
        top_singular_vectors(torch.randn(10, 4, generator=gen), 5)
    with pytest.raises(ValueError, match="all-zero"):
        top_singular_vectors(torch.zeros(6, 6), 2)
    with pytest.raises(ValueError, match="k"):
        top_singular_vectors(torch.randn(6, 6, generator=gen), 0)
    bad = orthonormal(10, 3).clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        subspace_similarity(bad, orthonormal(10, 3))


def _with_values(left: torch.Tensor, right: torch.Tensor, s: list[float]) -> torch.Tensor:
    return (left * torch.tensor(s, dtype=torch.float64)) @ right.T


def test_moved_singular_values_counts_relative_changes(orthonormal):
    left, right = orthonormal(12, 8), orthonormal(10, 8)
    s0 = [10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    s1 = [v * 1.001 for v in s0]  # 0.1 % drift everywhere: below rtol
    s1[1], s1[4], s1[6] = 8.0 * 1.05, 2.0 * 0.9, 0.5 * 1.02  # 5 %, 10 %, 2 % moves
    w0, w = _with_values(left, right, s0), _with_values(left, right, s1)
    assert moved_singular_values(w, w0) == 3  # rtol = 1 %
    assert moved_singular_values(w, w0, rtol=0.03) == 2
    assert moved_singular_values(w, w0, rtol=0.2) == 0
    assert moved_singular_values(w0, w0) == 0
    assert moved_singular_values(w.float(), w0.float()) == 3
    # Values are compared in sorted order, not by direction: a rotation of W0 moves nothing.
    assert moved_singular_values(_with_values(orthonormal(12, 8), right, s0), w0) == 0
    # W0 = 0: every nonzero singular value of W has moved; both zero: nothing did.
    assert moved_singular_values(_with_values(left, right, [1, 1, 1, 0, 0, 0, 0, 0]), 0 * w0) == 3
    assert moved_singular_values(0 * w0, 0 * w0) == 0
    with pytest.raises(ValueError, match="same shape"):
        moved_singular_values(w, w0[:, :5])


def test_update_spectrum_of_a_low_rank_update(gen):
    w0 = torch.randn(64, 48, generator=gen)
    delta = 1e-2 * torch.randn(64, 2, generator=gen) @ torch.randn(2, 48, generator=gen)
    w = w0 + delta  # float32: the update is recovered in float64 up to float32 rounding
    got = update_spectrum(w, w0)
    assert set(got) == {
        "effective_rank",
        "energy_rank_0.9",
        "energy_rank_0.99",
        "frobenius_norm",
        "moved_singular_values",
    }
    assert 1.0 <= got["effective_rank"] < 2.5
    assert got["energy_rank_0.99"] <= 2.0
    ref.assert_close(got["frobenius_norm"], float(delta.double().norm()), rel=1e-3)
    assert got["moved_singular_values"] >= 1.0
    assert update_spectrum(w0, w0) == dict.fromkeys(got, 0.0)  # first step: ΔW = 0


def test_update_spectrum_matches_reference_and_validates(gen):
    w0 = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    w = w0 + torch.randn(30, 20, generator=gen, dtype=torch.float64)
    s = ref.sv(w - w0)
    got = update_spectrum(w, w0, energies=(0.5,))
    ref.assert_close(got["effective_rank"], ref.erank(s))
    assert got["energy_rank_0.5"] == ref.energy(s, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        update_spectrum(w, w0.T)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        update_spectrum(w, w0)
