"""captured_energy (SCIENCE.md §8): the share of a gradient's energy inside a projection."""

from __future__ import annotations

import pytest
import torch

from maskrank.metrics import captured_energy


def test_top_singular_basis_captures_the_top_energy_share():
    torch.manual_seed(0)
    g = torch.randn(30, 12, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    share = float(s[:4].square().sum() / s.square().sum())
    assert captured_energy(g, u[:, :4], rows=True) == pytest.approx(share, rel=1e-12)
    assert captured_energy(g, vh[:4].T, rows=False) == pytest.approx(share, rel=1e-12)
    assert captured_energy(g, u[:, 4:], rows=True) == pytest.approx(1 - share, rel=1e-12)


def test_a_gradient_inside_the_subspace_is_fully_captured_and_outside_not_at_all():
    basis = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64))[0]  # (20, 3)
    inside = basis @ torch.randn(3, 7, dtype=torch.float64)
    noise = torch.randn(20, 7, dtype=torch.float64)
    outside = noise - basis @ (basis.T @ noise)  # the component orthogonal to the basis
    assert captured_energy(inside, basis, rows=True) == pytest.approx(1.0, abs=1e-12)
    assert captured_energy(outside, basis, rows=True) == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not fit"):
        captured_energy(torch.randn(5, 4), torch.randn(4, 2), rows=True)
    with pytest.raises(ValueError, match="all-zero"):
        captured_energy(torch.zeros(5, 4), torch.eye(5)[:, :2], rows=True)
