"""Exact resume on streaming data: a fit on a StreamingDataModule that crashes (or is SIGKILLed)
mid-epoch and resumes with ``--ckpt_path last`` ends with the uninterrupted run's weights, bit for
bit, with random crops drawn in loader workers and random masks on the device."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from maskrank.cli.lightning import build_cli
from maskrank.data.optimize import optimize_dataset
from resume_helpers import (
    max_abs_diff,
    read_steps,
    recorded_flags,
    subprocess_env,
    tiny_mae_model,
    wait_for,
    write_config,
)
from streaming_helpers import stream_config, write_image_folder

STEPS = 12  # 3 epochs x 64 images / 16

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume_stream")
    src = write_image_folder(base / "src")
    optimize_dataset(str(src), str(base / "out"), workers=1, progress=False)
    return base / "out"


def _config(path: Path, runs: Path, root: Path, name: str = "exp", **checkpoint) -> Path:
    write_config(path, runs, tiny_mae_model(), name, checkpoint or None)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"] = stream_config(root, batch_size=16, num_workers=1, crop_scale=[0.3, 1.0])
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_crashed_streaming_fit_resumes_mid_epoch_exactly(tmp_path, stream_root):
    runs = tmp_path / "runs"
    ref = _config(tmp_path / "ref.yaml", runs, stream_root, "ref", every_n_train_steps=5)
    build_cli(["fit", "-c", str(ref), *recorded_flags(tmp_path / "ref.log", tmp_path / "ref.pt")])
    cfg = str(_config(tmp_path / "cfg.yaml", runs, stream_root, every_n_train_steps=5))
    crash = ["--trainer.callbacks+=resume_helpers.CrashAt", "--trainer.callbacks.step=7"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cli(["fit", "-c", cfg, *crash])
    log = tmp_path / "resumed.log"
    build_cli(["fit", "-c", cfg, "--ckpt_path", "last", *recorded_flags(log, tmp_path / "res.pt")])
    # step 5 is batch 1 of epoch 1: the loader starts inside an epoch
    assert read_steps(log) == ["start 5", *map(str, range(6, STEPS + 1))]
    final = torch.load(tmp_path / "res.pt", weights_only=True)
    reference = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final, reference) == 0.0


@pytest.mark.slow
def test_sigkilled_streaming_fit_resumes_to_the_uninterrupted_weights(tmp_path, stream_root):
    runs = tmp_path / "runs"
    cfg = _config(tmp_path / "cfg.yaml", runs, stream_root, every_n_train_steps=3)
    ref = _config(tmp_path / "ref.yaml", runs, stream_root, "ref", every_n_train_steps=3)
    started: list[subprocess.Popen] = []

    def start(cfg: Path, name: str, *extra: str, pause_at: int | None = None) -> subprocess.Popen:
        flags = [
            *extra,
            *recorded_flags(tmp_path / f"{name}.log", tmp_path / f"{name}.pt", pause_at),
        ]
        command = [sys.executable, "-m", "maskrank", "fit", "-c", str(cfg), *flags]
        with (tmp_path / f"{name}.err").open("w") as err:
            started.append(subprocess.Popen(command, env=subprocess_env(), stderr=err))
        return started[-1]

    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        reference = start(ref, "ref")
        killed = start(cfg, "killed", pause_at=7)
        wait_for(lambda: "paused" in read_steps(tmp_path / "killed.log"), killed, "step 7")
        assert last.is_file()  # step 6 (epoch 1, batch 2) checkpointed; step 7 trained, lost
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        resumed = start(cfg, "resumed", "--ckpt_path", "last")
        assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.err").read_text()[-2000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-2000:]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert read_steps(tmp_path / "resumed.log") == ["start 6", *map(str, range(7, STEPS + 1))]
    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert max_abs_diff(final, torch.load(tmp_path / "ref.pt", weights_only=True)) == 0.0
