"""The deep-linear ground truth of scripts/experiments/low_rank_dynamics.py on a tiny instance (SCIENCE.md §8,
Yaras et al. 2023): from a small orthogonal init at most 2r singular values of each factor move,
the update keeps one 2r-dimensional subspace, and the width-2r network follows the same
trajectory; a Gaussian init (the control) moves far more than 2r."""

from __future__ import annotations

import pytest

from testkit.scripts import load_script


@pytest.fixture(scope="module")
def dynamics():
    return load_script("experiments/low_rank_dynamics.py")


def test_at_most_2r_singular_values_move_and_the_compressed_network_matches(dynamics):
    d, r, steps = 16, 2, 300
    problem = dynamics.make_problem(d, r, depth=3, eps=0.05, seed=0)
    rows = dynamics.run(problem, lr=0.3, steps=steps, report=[0, 50, steps])
    first, last = rows[0], rows[-1]
    assert last.loss_full < 1e-3 * first.loss_full  # it learned the target
    for row in rows[1:]:
        assert all(r <= moved <= 2 * r for moved in row.moved), row.moved
        assert max(row.angle) < 1e-3  # degrees: the same update subspace throughout
        assert row.loss_compressed == pytest.approx(row.loss_full, rel=1e-9)
        assert row.gap < 1e-12
    control = dynamics.make_problem(d, r, depth=3, eps=0.05, seed=0, orthogonal_init=False)
    assert min(dynamics.final_moved(control, lr=0.3, steps=steps)) > 2 * r
