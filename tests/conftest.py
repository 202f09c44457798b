"""Shared fixtures: the tiny ViT every test uses (img 32, patch 8, dim 64, depth 2)."""

from __future__ import annotations

import pytest
import torch

from maskrank.cli import machine
from maskrank.models.vit import ViTSpec
from testkit.sources import Sources, write_sources
from testkit.tiny import TINY_VIT


@pytest.fixture
def tiny_spec() -> ViTSpec:
    return ViTSpec(**TINY_VIT)


@pytest.fixture(autouse=True)
def _deterministic_threads(monkeypatch):
    # Keep tests independent of each other's RNG use, and of a seed_everything() an earlier
    # in-process fit exported (PL_GLOBAL_SEED seeds the training order and the file crops).
    torch.manual_seed(0)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    yield


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    # The CLI warns when the load average exceeds the cores; on a busy CI machine that warning
    # would land in every in-process test's stderr next to the one line a bad input must give.
    # tests/cli/test_machine.py sets its own load average to test the warning itself.
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture
def single_thread():
    """One intra-op thread: the models are tiny, and 2 threads on a busy 2-core box are slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> Sources:
    """The tiny dataset on every file-based source (testkit.sources), written once per session."""
    return write_sources(tmp_path_factory.mktemp("sources"))
