"""Spectrum metrics (SCIENCE.md §1): invariants, NumPy reference, fast Gram path, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from maskrank.metrics import (
    RANKME_EPS,
    effective_rank,
    energy_rank,
    energy_rank_key,
    frobenius_norm,
    normalized_nuclear_norm,
    nuclear_norm,
    numerical_rank,
    numerical_rank_key,
    resolve_method,
    singular_values,
    spectral_norm,
    spectrum_metrics,
    stable_rank,
)

from . import _reference as ref

SCALE_INVARIANT = (
    "effective_rank",
    "stable_rank",
    "numerical_rank_1e-3",
    "energy_rank_0.9",
    "energy_rank_0.99",
    "normalized_nuclear_norm",
)


def _test_matrices(gen: torch.Generator, with_spectrum) -> dict[str, torch.Tensor]:
    """Tall, wide, square, power-law, noisy low-rank and exactly low-rank matrices."""
    power = torch.arange(1, 65, dtype=torch.float64) ** -1.5
    low = torch.randn(300, 6, generator=gen) @ torch.randn(6, 40, generator=gen)
    return {
        "tall": torch.randn(1024, 48, generator=gen),
        "wide": torch.randn(16, 200, generator=gen),
        "square": torch.randn(40, 40, generator=gen),
        "power_law": with_spectrum(500, 64, power),
        "noisy_low_rank": low + 1e-3 * torch.randn(300, 40, generator=gen),
        "exact_low_rank": low.double(),
        "one_sample": torch.randn(1, 30, generator=gen),
    }


@pytest.mark.parametrize("method", ["svd", "gram", "auto"])
def test_all_metrics_match_numpy_reference(gen, with_spectrum, method):
    for name, a in _test_matrices(gen, with_spectrum).items():
        expected = ref.all_metrics(a)
        got = spectrum_metrics(a, method=method)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            ref.assert_close(got[key], value, rel=1e-4, what=f"{name}/{key}/{method}")


def test_float32_and_half_inputs_match_reference_of_their_values(gen):
    a64 = torch.randn(600, 32, generator=gen, dtype=torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = a64.to(dtype)
        expected = ref.all_metrics(a)  # reference of the rounded values the metric sees
        for method in ("svd", "gram"):
            got = spectrum_metrics(a, method=method)
            for key, value in expected.items():
                ref.assert_close(got[key], value, rel=1e-4, what=f"{dtype}/{key}/{method}")


def test_gram_path_agrees_with_svd_path_on_callback_sized_features(gen):
    a = torch.randn(4096, 192, generator=gen) * torch.linspace(0.01, 3.0, 192)  # float32
    fast, exact = spectrum_metrics(a, method="gram"), spectrum_metrics(a, method="svd")
    for key in exact:
        ref.assert_close(fast[key], exact[key], rel=1e-4, what=key)
    assert resolve_method(a.shape) == "gram"
    assert resolve_method((40, 40)) == "svd"
    sv_fast, sv_exact = singular_values(a, method="gram"), singular_values(a, method="svd")
    torch.testing.assert_close(sv_fast, sv_exact, rtol=1e-8, atol=0.0)


def test_singular_values_are_descending_float64_of_min_dim(gen):
    for shape in ((50, 7), (7, 50), (1, 5), (5, 1)):
        a = torch.randn(*shape, generator=gen)
        for method in ("svd", "gram"):
            s = singular_values(a, method=method)
            assert s.dtype == torch.float64 and s.shape == (min(shape),)
            assert bool((s[:-1] >= s[1:]).all())
            torch.testing.assert_close(s, torch.from_numpy(ref.sv(a).copy()), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_rank_one_matrix(gen, method):
    m, n = 12, 9
    a = torch.randn(m, 1, generator=gen) @ torch.randn(1, n, generator=gen)
    eps = RANKME_EPS
    k = min(m, n)
    # Exactly what the formula gives with one nonzero σ and k - 1 zeros.
    expected = math.exp(-(1 + eps) * math.log(1 + eps) - (k - 1) * eps * math.log(eps))
    er = effective_rank(a, method=method)
    assert abs(er - expected) < 1e-6
    assert abs(er - 1.0) < 2e-5
    assert stable_rank(a, method=method) == pytest.approx(1.0, rel=1e-6)
    assert numerical_rank(a, method=method) == 1
    assert energy_rank(a, q=0.99, method=method) == 1
    assert normalized_nuclear_norm(a, method=method) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("n", [1, 8, 32])
def test_orthogonal_matrix_is_full_rank_everywhere(orthonormal, n):
    for q in (torch.eye(n), orthonormal(n, n)):
        assert effective_rank(q) == pytest.approx(n, rel=1e-4)
        assert stable_rank(q) == pytest.approx(n, rel=1e-9)
        assert numerical_rank(q) == n
        assert energy_rank(q, q=0.9) == math.ceil(0.9 * n - 1e-9)
        assert normalized_nuclear_norm(q) == pytest.approx(math.sqrt(n), rel=1e-9)
        assert nuclear_norm(q) == pytest.approx(n, rel=1e-9)
        assert spectral_norm(q) == pytest.approx(1.0, rel=1e-9)
        assert frobenius_norm(q) == pytest.approx(math.sqrt(n), rel=1e-9)


@pytest.mark.parametrize("factor", [1e-150, 2.0**-40, 3.7, 2.0**40, 1e150])
def test_scale_invariance_and_no_overflow(gen, with_spectrum, factor):
    a = with_spectrum(80, 20, torch.arange(1, 21, dtype=torch.float64) ** -1.0)
    for method in ("svd", "gram"):
        base, scaled = (
            spectrum_metrics(a, method=method),
            spectrum_metrics(a * factor, method=method),
        )
        for key in SCALE_INVARIANT:
            ref.assert_close(scaled[key], base[key], rel=1e-9, what=key)
        for key in ("nuclear_norm", "spectral_norm", "frobenius_norm"):
            ref.assert_close(scaled[key], base[key] * factor, rel=1e-9, what=key)


def test_n_smaller_than_d(gen):
    a = torch.randn(8, 100, generator=gen)
    got = spectrum_metrics(a)
    assert got["numerical_rank_1e-3"] == 8.0
    assert 1.0 <= got["effective_rank"] <= 8.0
    for key, value in ref.all_metrics(a).items():
        ref.assert_close(got[key], value, what=key)


def test_single_sample_is_rank_one(gen):
    a = torch.randn(1, 64, generator=gen)
    got = spectrum_metrics(a)
    assert got["effective_rank"] == pytest.approx(1.0, abs=1e-6)  # exp(-(1+ε)log(1+ε))
    for key in ("stable_rank", "numerical_rank_1e-3", "energy_rank_0.9", "normalized_nuclear_norm"):
        assert got[key] == pytest.approx(1.0)
    assert got["spectral_norm"] == pytest.approx(float(a.double().norm()))


@pytest.mark.parametrize("shape", [(5, 3), (1, 4), (64, 64)])
def test_all_zero_matrix_has_rank_zero(shape):
    for method in ("svd", "gram"):
        got = spectrum_metrics(torch.zeros(shape), method=method)
        assert got == {key: 0.0 for key in got}
        assert all(math.isfinite(v) for v in got.values())
    assert torch.equal(
        singular_values(torch.zeros(shape)), torch.zeros(min(shape), dtype=torch.float64)
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(gen, bad):
    a = torch.randn(10, 4, generator=gen)
    a[3, 2] = bad
    for fn in (singular_values, effective_rank, stable_rank, spectrum_metrics):
        with pytest.raises(ValueError, match="non-finite"):
            fn(a)
    with pytest.raises(ValueError, match="non-finite"):
        effective_rank(sv=torch.tensor([1.0, bad]))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        effective_rank(torch.ones(0, 3))
    with pytest.raises(ValueError, match="dtype"):
        effective_rank(torch.ones(3, 3, dtype=torch.complex64))
    with pytest.raises(TypeError):
        effective_rank([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        effective_rank()
    with pytest.raises(ValueError, match="exactly one"):
        effective_rank(torch.ones(2, 2), sv=torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        stable_rank(sv=torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="tau"):
        numerical_rank(torch.eye(3), tau=0.0)
    with pytest.raises(ValueError, match="q"):
        energy_rank(torch.eye(3), q=1.5)
    with pytest.raises(ValueError, match="method"):
        singular_values(torch.eye(3), method="qr")  # type: ignore[arg-type]


def test_precomputed_singular_values_give_the_same_metrics(gen):
    a = torch.randn(200, 30, generator=gen)
    s = singular_values(a)
    assert spectrum_metrics(sv=s) == spectrum_metrics(a, method="auto")
    assert effective_rank(sv=s.flip(0).float()) == pytest.approx(effective_rank(a), rel=1e-6)
    assert numerical_rank(sv=torch.tensor([1.0, 0.5, 1e-4]), tau=1e-3) == 2
    assert energy_rank(sv=torch.tensor([3.0, 1.0, 1.0]), q=0.9) == 2  # 9/11 < 0.9 <= 10/11


def test_metric_keys_name_their_thresholds(gen):
    got = spectrum_metrics(torch.randn(30, 10, generator=gen), taus=(1e-2, 2.5e-4), energies=(0.5,))
    assert numerical_rank_key(1e-3) == "numerical_rank_1e-3"
    assert energy_rank_key(0.99) == "energy_rank_0.99"
    assert {"numerical_rank_0.01", "numerical_rank_2.5e-4", "energy_rank_0.5"} <= got.keys()


def test_integer_input_and_gradients_are_accepted(gen):
    a = torch.randint(0, 255, (40, 12), generator=gen, dtype=torch.uint8)
    ref.assert_close(effective_rank(a), ref.erank(ref.sv(a)))
    w = torch.randn(10, 5, generator=gen, requires_grad=True)
    assert isinstance(stable_rank(w), float)  # detached inside, no autograd graph needed
