"""Exact resume on streaming data: a fit on a StreamingDataModule that crashes (or is SIGKILLed)
mid-epoch and resumes with ``--ckpt_path last`` ends with the uninterrupted run's weights, bit for
bit, with random crops drawn in loader workers and random masks on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from maskrank.cli.lightning import build_cli
from maskrank.data.stream.optimize import optimize_dataset
from testkit.resume import (
    max_abs_diff,
    read_steps,
    recorded_flags,
    sigkill_and_resume,
    tiny_mae_model,
    write_config,
)
from testkit.streaming import stream_config, write_image_folder

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
    crash = ["--trainer.callbacks+=testkit.resume.CrashAt", "--trainer.callbacks.step=7"]
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
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    sigkill_and_resume(tmp_path, cfg, ref, last)

    assert read_steps(tmp_path / "resumed.log") == ["start 6", *map(str, range(7, STEPS + 1))]
    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert max_abs_diff(final, torch.load(tmp_path / "ref.pt", weights_only=True)) == 0.0
