"""Exact resume on a file-backed image folder: crops drawn in a loader worker from (seed, epoch,
index), so a fit SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` ends with the weights of
the uninterrupted run, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from testkit.resume import (
    max_abs_diff,
    read_steps,
    sigkill_and_resume,
    tiny_mae_model,
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
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    sigkill_and_resume(tmp_path, cfg, ref_cfg, last)

    assert read_steps(tmp_path / "resumed.log") == ["start 6", *map(str, range(7, STEPS + 1))]
    final_resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    final_reference = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final_resumed, final_reference) == 0.0
