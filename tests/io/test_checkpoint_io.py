"""Atomic checkpoint writes: a crash or SIGKILL during a write never truncates last.ckpt."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from maskrank.cli.lightning import build_cli
from maskrank.io.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from testkit.resume import tiny_mae_model, write_config


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(1.0), last)
    real_save = torch.save

    def half_then_crash(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(handle.tell() // 2)  # half a checkpoint is on disk ...
        raise KeyboardInterrupt("killed mid-write")  # ... when the process is interrupted

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(2.0), last)
    monkeypatch.undo()
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no partial file left
    assert torch.load(last, weights_only=True)["global_step"] == 1  # the previous one, whole


def test_a_write_replaces_the_file_in_one_rename(tmp_path, monkeypatch):
    # the new bytes go to a sibling temp file and reach the final name only by os.replace
    last = tmp_path / "last.ckpt"
    atomic_torch_save(_checkpoint(1.0), last)
    renames = []
    real_replace = __import__("os").replace

    def spy(src, dst):
        renames.append((src, dst))
        assert torch.load(last, weights_only=True)["global_step"] == 1  # untouched until now
        real_replace(src, dst)

    monkeypatch.setattr("maskrank.io.atomic.os.replace", spy)
    atomic_torch_save(_checkpoint(2.0), last)
    [(src, dst)] = renames
    assert src.parent == last.parent and src.name.startswith(".last.ckpt.") and dst == last
    assert torch.load(last, weights_only=True)["global_step"] == 2


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from maskrank.io.checkpoint_io import atomic_torch_save

    class Slow:  # serializing it takes a minute: the parent kills us meanwhile
        def __reduce__(self):
            time.sleep(60)
            return (int, (0,))

    path = sys.argv[1]
    atomic_torch_save({"global_step": 1, "w": torch.ones(1000)}, path)
    atomic_torch_save({"global_step": 2, "w": torch.zeros(1000), "slow": Slow()}, path)
    """
)


@pytest.mark.slow
def test_sigkill_during_a_write_leaves_the_previous_checkpoint_intact(tmp_path):
    last = tmp_path / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(last)])
    try:
        deadline = time.monotonic() + 60
        # once last.ckpt exists the first write is renamed, so a temp file is the second one's
        while not (last.exists() and list(tmp_path.glob(".last.ckpt.*.tmp"))):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert torch.load(last, weights_only=True)["global_step"] == 1
    [stale] = tmp_path.glob(".last.ckpt.*.tmp")  # the killed writer's temp file, never renamed
    atomic_torch_save({"global_step": 3}, last)  # the next write cleans it up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_the_cli_writes_checkpoints_atomically(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "runs", tiny_mae_model())
    cli = build_cli(["-c", str(cfg)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
