"""Covariance spectrum, α-ReQ and participation ratio (SCIENCE.md §1)."""

from __future__ import annotations

import pytest
import torch

from maskrank.metrics import alpha_req, covariance_eigenvalues, participation_ratio

from . import _reference as ref


def _features_with_covariance(
    eig: torch.Tensor, n: int, gen: torch.Generator, mean: float = 0.0
) -> torch.Tensor:
    """(n, D) features whose centered covariance X_cᵀX_c/n has exactly the eigenvalues ``eig``."""
    d = eig.numel()
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = z - z.mean(dim=0)
    u, _ = torch.linalg.qr(z)  # (n, D) orthonormal columns, each orthogonal to the ones vector
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return n**0.5 * (u * eig.sqrt()) @ q.T + mean  # (n, D)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_exact_power_law(gen, alpha):
    eig = torch.arange(1, 65, dtype=torch.float64) ** -alpha
    x = _features_with_covariance(eig, 400, gen, mean=5.0)
    assert alpha_req(x) == pytest.approx(alpha, abs=1e-6)
    assert alpha_req(x.float()) == pytest.approx(alpha, abs=1e-3)


def test_alpha_req_recovers_power_law_from_gaussian_samples(gen):
    alpha, d = 1.2, 64
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** (-alpha / 2)  # variances i^-α
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    x = (torch.randn(20 * d, d, generator=gen, dtype=torch.float64) * scale) @ q.T
    # The tail of a sample spectrum is biased (Marchenko-Pastur); fit the leading half.
    assert alpha_req(x, max_rank=d // 2) == pytest.approx(alpha, abs=0.05)


def test_participation_ratio_of_isotropic_features_is_d(gen):
    d = 48
    x = _features_with_covariance(torch.ones(d, dtype=torch.float64), 300, gen)
    assert participation_ratio(x) == pytest.approx(d, rel=1e-9)
    sampled = torch.randn(100 * d, d, generator=gen)
    assert participation_ratio(sampled) == pytest.approx(d, rel=0.05)


@pytest.mark.parametrize("shape", [(500, 40), (12, 60), (60, 60)])
@pytest.mark.parametrize("center", [True, False])
def test_agree_with_numpy_reference(gen, shape, center):
    x = torch.randn(*shape, generator=gen) * torch.linspace(0.1, 2.0, shape[1]) + 1.0  # float32
    lam_ref = ref.cov_eig(x, center=center)
    for method in ("svd", "gram", "auto"):
        lam = covariance_eigenvalues(x, center=center, method=method)
        assert lam.shape == (shape[1],) and lam.dtype == torch.float64
        torch.testing.assert_close(
            lam, torch.from_numpy(lam_ref.copy()), rtol=1e-6, atol=1e-10 * lam_ref[0]
        )
        ref.assert_close(
            participation_ratio(x, center=center, method=method), ref.participation(lam_ref)
        )
        ref.assert_close(alpha_req(x, center=center, method=method), ref.alpha(lam_ref))
    ref.assert_close(alpha_req(x, center=center, max_rank=5), ref.alpha(lam_ref, max_rank=5))


def test_scale_invariance(gen):
    x = torch.randn(300, 20, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 1.0, 20)
    for factor in (1e-120, 1e-3, 1e4, 1e120):
        ref.assert_close(alpha_req(x * factor), alpha_req(x), rel=1e-9)
        ref.assert_close(participation_ratio(x * factor), participation_ratio(x), rel=1e-9)


def test_precomputed_eigenvalues(gen):
    x = torch.randn(100, 10, generator=gen)
    lam = covariance_eigenvalues(x)
    assert alpha_req(eigenvalues=lam) == alpha_req(x)
    assert participation_ratio(eigenvalues=lam.flip(0)) == pytest.approx(participation_ratio(x))
    assert participation_ratio(eigenvalues=torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2.0)


def test_n_smaller_than_d_uses_the_n_nonzero_eigenvalues(gen):
    x = torch.randn(10, 200, generator=gen, dtype=torch.float64)
    lam = covariance_eigenvalues(x)  # centered: rank <= N - 1 = 9
    assert lam.shape == (200,)
    assert int((lam > 1e-10 * lam[0]).sum()) == 9
    ref.assert_close(participation_ratio(x), ref.participation(ref.cov_eig(x)))
    ref.assert_close(alpha_req(x), ref.alpha(ref.cov_eig(x)))


def test_single_sample_and_identical_samples(gen):
    one = torch.randn(1, 16, generator=gen)
    same = one.repeat(5, 1)
    for x in (one, same):
        assert torch.equal(covariance_eigenvalues(x), torch.zeros(16, dtype=torch.float64))
        assert participation_ratio(x) == 0.0
        with pytest.raises(ValueError, match="zero covariance"):
            alpha_req(x)
    assert participation_ratio(one, center=False) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 eigenvalues"):
        alpha_req(one, center=False)  # rank 1: nothing to fit a slope to


def test_invalid_inputs_raise(gen):
    x = torch.randn(20, 5, generator=gen)
    x[0, 0] = float("nan")
    for fn in (covariance_eigenvalues, alpha_req, participation_ratio):
        with pytest.raises(ValueError, match="non-finite"):
            fn(x)
    with pytest.raises(ValueError, match="2-D"):
        covariance_eigenvalues(torch.randn(2, 3, 4, generator=gen))
    with pytest.raises(ValueError, match="max_rank"):
        alpha_req(torch.randn(20, 5, generator=gen), max_rank=1)
    with pytest.raises(ValueError, match="rel_tol"):
        alpha_req(torch.randn(20, 5, generator=gen), rel_tol=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        participation_ratio()
    with pytest.raises(ValueError, match=">= 0"):
        participation_ratio(eigenvalues=torch.tensor([1.0, -1.0]))
