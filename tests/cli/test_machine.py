"""How a run shares the machine: threads per process, the busy-machine and root-dir warnings."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from maskrank.cli import machine


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "config, local, expected",
    [
        ({}, None, 4),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, None, 2),
        ({"accelerator": "cpu", "devices": [0, 1, 2, 3]}, None, 1),
        ({"accelerator": "cpu", "devices": 2}, "4", 1),  # a launched DDP process knows its peers
    ],
)
def test_threads_are_the_cores_shared_by_the_processes_of_the_run(
    monkeypatch, config, local, expected
):
    monkeypatch.setattr(machine, "usable_cores", lambda: 4)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert machine.configure_threads(None, config) == expected
    assert torch.get_num_threads() == expected
    assert machine.configure_threads(3, config) == 3  # --threads wins


def test_a_busy_machine_is_said_once_at_start(monkeypatch):
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (5.5, 4.0, 3.0))
    with pytest.warns(UserWarning, match=r"busy \(load average 5\.5 on 2 cores\).*--threads"):
        machine.configure_threads(None, {})


def test_a_root_dir_the_logger_overrides_is_said(tmp_path):
    logger = TensorBoardLogger(tmp_path / "runs")
    with pytest.warns(UserWarning, match=r"default_root_dir .*elsewhere.* is not where.*save_dir"):
        machine.warn_ignored_root_dir(
            {"default_root_dir": str(tmp_path / "elsewhere"), "logger": logger}
        )
