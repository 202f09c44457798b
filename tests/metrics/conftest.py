"""Fixtures for the metric tests: seeded generators and matrices with a known spectrum."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Run the metric tests on one intra-op thread.

    Their matrices are small, so threading buys nothing; on a busy 2-core machine (other test
    processes running) the OpenMP barriers of 2 threads make tiny ops 10-20x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed (tests must not depend on each other's RNG use)."""
    return torch.Generator().manual_seed(1234)


def _orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q  # (n, k)


@pytest.fixture
def orthonormal(gen: torch.Generator) -> Callable[[int, int], torch.Tensor]:
    """``orthonormal(n, k)``: a Haar-random (n, k) float64 matrix with orthonormal columns."""
    return lambda n, k: _orthonormal(n, k, gen)


@pytest.fixture
def with_spectrum(gen: torch.Generator) -> Callable[..., torch.Tensor]:
    """``with_spectrum(m, n, s)``: a float64 (m, n) matrix whose singular values are ``s``."""

    def make(m: int, n: int, s: torch.Tensor) -> torch.Tensor:
        k = s.numel()
        return (_orthonormal(m, k, gen) * s.to(torch.float64)) @ _orthonormal(n, k, gen).T

    return make
