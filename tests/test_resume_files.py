"""Exact resume on a file-backed image folder: crops drawn in a loader worker from (seed, epoch,
index), so a fit SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` ends with the weights of
the uninterrupted run, bit for bit."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from resume_helpers import (
    fit_command,
    max_abs_diff,
    read_steps,
    recorded_flags,
    subprocess_env,
    tiny_mae_model,
    wait_for,
    write_config,
)

STEPS = 12  # 3 epochs x 4 batches of 8


def _folder(root: Path) -> Path:
    """32 training and 8 held-out JPEGs of 40 x 56 pixels (crops come from the whole image)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 4)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg", quality=90)
    return root


def _config(path: Path, runs: Path, root: Path, name: str) -> Path:
    cfg = write_config(path, runs, tiny_mae_model(), name, {"every_n_train_steps": 3})
    content = yaml.safe_load(cfg.read_text())
    init = dict(
        root=str(root), image_size=32, batch_size=8, num_workers=1, in_memory=False, cache_dir=None
    )
    content["data"] = {"class_path": "maskrank.data.ImageFolderDataModule", "init_args": init}
    cfg.write_text(yaml.safe_dump(content))
    return cfg


@pytest.mark.slow
def test_sigkilled_fit_on_image_files_resumes_to_the_uninterrupted_weights(tmp_path):
    runs, root = tmp_path / "runs", _folder(tmp_path / "imgs")
    cfg = _config(tmp_path / "cfg.yaml", runs, root, "exp")
    ref_cfg = _config(tmp_path / "ref.yaml", runs, root, "ref")
    started: list[subprocess.Popen] = []

    def start(cfg: Path, name: str, *extra: str, pause_at: int | None = None) -> subprocess.Popen:
        flags = [
            *extra,
            *recorded_flags(tmp_path / f"{name}.log", tmp_path / f"{name}.pt", pause_at),
        ]
        with (tmp_path / f"{name}.err").open("w") as err:
            started.append(
                subprocess.Popen(fit_command(cfg, *flags), env=subprocess_env(), stderr=err)
            )
        return started[-1]

    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        reference = start(ref_cfg, "ref")
        killed = start(cfg, "killed", pause_at=7)
        wait_for(lambda: "paused" in read_steps(tmp_path / "killed.log"), killed, "step 7")
        assert last.is_file()  # step 6, mid-epoch 1
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
    final_resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    final_reference = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final_resumed, final_reference) == 0.0
