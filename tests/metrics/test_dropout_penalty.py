"""Dropout on a last linear layer as an explicit penalty (SCIENCE.md §4, Mianjy et al. 2018)."""

from __future__ import annotations

import pytest
import torch

from maskrank.metrics import (
    dropout_lambda,
    dropout_penalty,
    dropout_penalty_term,
    equalization_score,
)


def test_dropout_lambda():
    assert dropout_lambda(0.0) == 0.0
    assert dropout_lambda(0.5) == pytest.approx(1.0)
    assert dropout_lambda(0.75) == pytest.approx(3.0)
    for bad in (1.0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError):
            dropout_lambda(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_penalty_equals_monte_carlo_extra_loss_of_dropout(gen, p):
    """E‖y - U diag(b/θ) a‖² - ‖y - U a‖², averaged over masks and a batch, is R_drop."""
    theta, out, width, n, masks = 1 - p, 6, 12, 16, 20_000
    f64 = torch.float64
    weight = torch.randn(out, width, generator=gen, dtype=f64)  # (out, in), like fc2.weight
    a = torch.randn(n, width, generator=gen, dtype=f64).relu() + 0.1  # (N, in)
    y = torch.randn(n, out, generator=gen, dtype=f64)  # (N, out)
    clean = ((y - a @ weight.T) ** 2).sum(-1).mean()
    b = (torch.rand(masks, n, width, generator=gen, dtype=f64) < theta).to(f64) / theta
    extra = ((y - (b * a) @ weight.T) ** 2).sum(-1).mean(-1) - clean  # (masks,)
    mean, stderr = float(extra.mean()), float(extra.std()) / masks**0.5
    penalty = dropout_penalty(weight, a, p)
    assert abs(mean - penalty) < 4 * stderr
    assert abs(mean - penalty) < 0.03 * penalty


def test_penalty_flattens_token_dimensions_and_any_dtype(gen):
    weight = torch.randn(5, 8, generator=gen)
    tokens = torch.randn(3, 7, 8, generator=gen)  # (B, L, in)
    flat = dropout_penalty(weight, tokens.reshape(21, 8), 0.2)
    assert dropout_penalty(weight, tokens, 0.2) == pytest.approx(flat, rel=1e-12)
    assert dropout_penalty(weight.half(), tokens.bfloat16(), 0.2) == pytest.approx(flat, rel=2e-2)
    expected = 0.25 * float(
        (weight.double() ** 2).sum(0) @ (tokens.double().reshape(21, 8) ** 2).mean(0)
    )
    assert flat == pytest.approx(expected, rel=1e-12)
    assert dropout_penalty(weight, torch.zeros(4, 8), 0.2) == 0.0
    assert dropout_penalty(weight, tokens, 0.0) == 0.0
    assert dropout_penalty(weight, tokens[0, 0], 0.2) > 0.0  # a single 1-D sample (in,)


def test_penalty_term_is_differentiable_and_matches(gen):
    weight = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.randn(10, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    term = dropout_penalty_term(weight, a, 0.3)
    assert term.ndim == 0 and term.requires_grad
    assert term.item() == pytest.approx(dropout_penalty(weight, a, 0.3), rel=1e-12)
    term.backward()
    lam = 0.3 / 0.7
    expected = 2 * lam * weight.detach() * (a.detach() ** 2).mean(0)  # ∂/∂u_j = 2λ mean(a_j²) u_j
    torch.testing.assert_close(weight.grad, expected)
    assert torch.autograd.gradcheck(
        lambda w, x: dropout_penalty_term(w, x, 0.3),
        (weight.detach().requires_grad_(), a.detach().requires_grad_()),
    )
    assert dropout_penalty_term(weight, a, 0.3, validate=False).item() == pytest.approx(term.item())


def test_penalty_inputs_are_validated(gen):
    weight = torch.randn(4, 6, generator=gen)
    with pytest.raises(ValueError, match="shape"):
        dropout_penalty(weight, torch.randn(10, 5, generator=gen), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        dropout_penalty(weight[0], torch.randn(10, 6, generator=gen), 0.5)
    with pytest.raises(ValueError, match="p"):
        dropout_penalty(weight, torch.randn(10, 6, generator=gen), 1.0)
    bad = torch.randn(10, 6, generator=gen)
    bad[2, 2] = float("inf")
    for fn in (dropout_penalty, dropout_penalty_term):
        with pytest.raises(ValueError, match="non-finite"):
            fn(weight, bad, 0.5)
    with pytest.raises(ValueError, match="empty"):
        dropout_penalty(weight, torch.randn(0, 6), 0.5)


def test_equalization_score(gen):
    # Column norms 1 and 3 with unit-rms activations: c = (1, 3), std/mean = 1/2.
    weight = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    ones = torch.ones(5, 2)
    assert equalization_score(weight, ones) == pytest.approx(0.5)
    # Equalized layer: ‖u_j‖·rms(a_j) constant although both factors vary.
    norms = torch.tensor([1.0, 2.0, 4.0])
    acts = torch.ones(7, 3) / norms
    assert equalization_score(torch.diag(norms), acts) == pytest.approx(0.0, abs=1e-12)
    w, a = torch.randn(5, 9, generator=gen), torch.randn(4, 3, 9, generator=gen)
    score = equalization_score(w, a)
    assert score > 0.0
    assert equalization_score(2.0**10 * w, 2.0**-7 * a) == pytest.approx(score, rel=1e-9)
    assert equalization_score(torch.ones(3, 1), torch.ones(4, 1)) == 0.0  # a single unit
    with pytest.raises(ValueError, match="undefined"):
        equalization_score(w, torch.zeros(4, 9))
