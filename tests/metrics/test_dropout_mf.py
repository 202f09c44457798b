"""Dropout matrix factorization (SCIENCE.md §4, Cavazza et al., AISTATS 2018)."""

from __future__ import annotations

import itertools

import pytest
import torch

from maskrank.metrics import (
    dropout_lambda,
    dropout_mf_optimum,
    equalize_factorization,
    factorization_penalty,
    factorization_penalty_term,
    min_factorization_penalty,
    numerical_rank,
    singular_values,
)

F64 = torch.float64


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_expected_dropout_loss_is_loss_plus_penalty(gen, p):
    """E_b‖X - U diag(b/θ)Vᵀ‖² = ‖X - UVᵀ‖² + λΣ‖u_i‖²‖v_i‖², by Monte Carlo over masks."""
    theta, masks = 1 - p, 20_000
    u, v = torch.randn(8, 5, generator=gen, dtype=F64), torch.randn(10, 5, generator=gen, dtype=F64)
    x = torch.randn(8, 10, generator=gen, dtype=F64)
    b = (torch.rand(masks, 5, generator=gen, dtype=F64) < theta).to(F64) / theta  # (M, d)
    losses = ((x - torch.einsum("id,md,jd->mij", u, b, v)) ** 2).sum((1, 2))  # (M,)
    mean, stderr = float(losses.mean()), float(losses.std()) / masks**0.5
    penalty = factorization_penalty(u, v, p)
    expected = float(((x - u @ v.T) ** 2).sum()) + penalty
    assert abs(mean - expected) < 4 * stderr
    assert abs(mean - expected) < 0.03 * penalty


def test_penalty_values_and_gradients(gen):
    u = torch.randn(6, 3, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    term = factorization_penalty_term(u, v, 0.5)
    expected = float((u.detach().norm(dim=0) ** 2 * v.detach().norm(dim=0) ** 2).sum())
    assert term.item() == pytest.approx(expected) == factorization_penalty(u, v, 0.5)
    assert torch.autograd.gradcheck(lambda a, b: factorization_penalty_term(a, b, 0.3), (u, v))
    assert factorization_penalty(u, v, 0.0) == 0.0
    with pytest.raises(ValueError, match="same d"):
        factorization_penalty(torch.ones(3, 2), torch.ones(3, 4), 0.5)
    with pytest.raises(ValueError, match="p"):
        factorization_penalty(torch.ones(3, 2), torch.ones(3, 2), 1.5)


@pytest.mark.parametrize(("m", "n", "d"), [(10, 12, 4), (7, 9, 6), (4, 5, 6)])
def test_equalization_reaches_the_minimal_penalty(gen, m, n, d):
    u, v = torch.randn(m, d, generator=gen, dtype=F64), torch.randn(n, d, generator=gen, dtype=F64)
    product, p = u @ v.T, 0.4
    u_eq, v_eq = equalize_factorization(u, v)
    torch.testing.assert_close(u_eq @ v_eq.T, product, rtol=1e-10, atol=1e-10)
    nuclear = float(singular_values(product).sum())
    per_column = u_eq.norm(dim=0) * v_eq.norm(dim=0)  # (d,)
    torch.testing.assert_close(per_column, torch.full((d,), nuclear / d, dtype=F64))
    minimum = min_factorization_penalty(product, d, p)
    assert minimum == pytest.approx(dropout_lambda(p) / d * nuclear**2, rel=1e-12)
    assert factorization_penalty(u_eq, v_eq, p) == pytest.approx(minimum, rel=1e-9)
    for _ in range(20):  # any other factorization of the same product pays at least as much
        r = torch.randn(d, d, generator=gen, dtype=F64) + 3 * torch.eye(d, dtype=F64)
        assert factorization_penalty(u @ r, v @ torch.linalg.inv(r).T, p) >= minimum * (1 - 1e-9)
    assert factorization_penalty(u, v, p) >= minimum


def test_equalization_keeps_dtype_and_handles_zero(gen):
    u, v = torch.randn(5, 3, generator=gen), torch.randn(4, 3, generator=gen)
    u_eq, v_eq = equalize_factorization(u, v)
    assert u_eq.dtype == torch.float32 and u_eq.shape == (5, 3) and v_eq.shape == (4, 3)
    z_u, z_v = equalize_factorization(torch.zeros(5, 3), v)
    assert not z_u.any() and not z_v.any()
    assert min_factorization_penalty(torch.zeros(5, 4), 2, 0.5) == 0.0


def test_min_penalty_rejects_a_product_of_too_high_rank(gen):
    with pytest.raises(ValueError, match="rank > d"):
        min_factorization_penalty(torch.randn(6, 6, generator=gen), 3, 0.5)
    with pytest.raises(ValueError, match="d"):
        min_factorization_penalty(torch.randn(6, 6, generator=gen), 0, 0.5)


def _objective(s: torch.Tensor, a: torch.Tensor, mu: float) -> float:
    return float(((s - a) ** 2).sum()) + mu * float(a.sum()) ** 2


@pytest.mark.parametrize("p", [0.3, 0.7])
@pytest.mark.parametrize("d", [1, 2, 3, 6])
def test_closed_form_beats_every_support_by_brute_force(gen, p, d):
    """Among all supports T (|T| ≤ d) with a_i = s_i - μ S_T > 0, none has a lower objective."""
    x = torch.randn(6, 7, generator=gen, dtype=F64)
    opt = dropout_mf_optimum(x, d, p)
    s, mu = singular_values(x, method="svd"), dropout_lambda(p) / d
    best = _objective(s, torch.zeros_like(s), mu)
    for size in range(1, d + 1):
        for support in itertools.combinations(range(s.numel()), size):
            idx = list(support)
            total = float(s[idx].sum()) / (1 + mu * size)
            a = torch.zeros_like(s)
            a[idx] = s[idx] - mu * total
            if bool((a[idx] > 0).all()):
                best = min(best, _objective(s, a, mu))
    assert opt.loss == pytest.approx(best, rel=1e-10)
    assert opt.rank <= d
    torch.testing.assert_close(singular_values(opt.product, method="svd"), opt.singular_values)


def test_closed_form_edge_cases(gen):
    x = torch.randn(9, 5, generator=gen, dtype=F64)
    truncated = dropout_mf_optimum(x, 2, 0.0)  # p = 0: best rank-2 approximation
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    torch.testing.assert_close(truncated.product, (u[:, :2] * s[:2]) @ vh[:2])
    assert truncated.rank == 2 and truncated.shrinkage == 0.0
    zero = dropout_mf_optimum(torch.zeros(4, 3), 2, 0.5)
    assert zero.rank == 0 and not zero.product.any() and zero.loss == 0.0
    row = dropout_mf_optimum(torch.randn(1, 6, generator=gen), 3, 0.5)  # a single row: k <= 1
    assert row.rank == 1 and row.product.shape == (1, 6)
    with pytest.raises(ValueError, match="non-finite"):
        dropout_mf_optimum(torch.full((3, 3), float("nan")), 2, 0.5)


def _low_rank_plus_noise(gen: torch.Generator, m: int = 20) -> torch.Tensor:
    left, _ = torch.linalg.qr(torch.randn(m, 4, generator=gen, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(m, 4, generator=gen, dtype=F64))
    signal = (left * torch.tensor([10.0, 8.0, 6.0, 4.0], dtype=F64)) @ right.T
    return signal + 0.01 * torch.randn(m, m, generator=gen, dtype=F64)  # rank 4 + noise


def _fit(x: torch.Tensor, d: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Minimize ‖X - UVᵀ‖² + λΣ‖u_i‖²‖v_i‖² from a small random init (L-BFGS); return UVᵀ."""
    u = (0.1 * torch.randn(x.shape[0], d, generator=gen, dtype=F64)).requires_grad_()
    v = (0.1 * torch.randn(x.shape[1], d, generator=gen, dtype=F64)).requires_grad_()
    opt = torch.optim.LBFGS(
        [u, v],
        max_iter=3000,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((x - u @ v.T) ** 2).sum() + factorization_penalty_term(u, v, p, validate=False)
        loss.backward()
        return loss

    opt.step(closure)
    return (u @ v.T).detach()


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_closed_form_matches_trained_factorization(gen, p):
    x, d = _low_rank_plus_noise(gen), 8
    opt = dropout_mf_optimum(x, d, p)
    assert opt.rank == 4  # the noise directions are thresholded away
    trained = _fit(x, d, p, gen)
    assert numerical_rank(trained, tau=1e-2) == opt.rank
    assert float((trained - opt.product).norm() / opt.product.norm()) < 1e-2


def test_closed_form_caps_the_rank_at_d(gen):
    """With a flat spectrum k* > d; the trained d-column factorization agrees with k = d."""
    x, d, p = torch.randn(12, 12, generator=gen, dtype=F64), 3, 0.2
    s, mu = singular_values(x, method="svd"), dropout_lambda(p) / d
    ks = torch.arange(1, 13, dtype=F64)
    k_star = int((s > mu * torch.cumsum(s, 0) / (1 + mu * ks)).sum())
    assert k_star > d
    opt = dropout_mf_optimum(x, d, p)
    assert opt.rank == d
    trained = _fit(x, d, p, gen)
    assert float((trained - opt.product).norm() / opt.product.norm()) < 1e-2


def test_closed_form_matches_stochastic_dropout_training(gen):
    """Actual Bernoulli dropout SGD (loose tolerance): same rank, product within a few %."""
    x, d, p = _low_rank_plus_noise(gen), 8, 0.5
    theta, steps, batch = 1 - p, 2500, 8
    u = (0.1 * torch.randn(20, d, generator=gen, dtype=F64)).requires_grad_()
    v = (0.1 * torch.randn(20, d, generator=gen, dtype=F64)).requires_grad_()
    opt = torch.optim.SGD([u, v], lr=0.01)
    average = torch.zeros(20, 20, dtype=F64)
    for step in range(steps):
        for group in opt.param_groups:  # constant, then quadratic decay to ~0
            group["lr"] = 0.01 * min(1.0, (2 * (steps - step) / steps) ** 2 + 1e-3)
        b = (torch.rand(batch, d, generator=gen, dtype=F64) < theta).to(F64) / theta  # (B, d)
        loss = ((x - torch.einsum("id,bd,jd->bij", u, b, v)) ** 2).sum((1, 2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps - 300:
            average += (u @ v.T).detach() / 300
    closed = dropout_mf_optimum(x, d, p)
    assert numerical_rank(average, tau=5e-2) == closed.rank
    assert float((average - closed.product).norm() / closed.product.norm()) < 0.05
