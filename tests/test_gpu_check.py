"""scripts/gpu_check.sh: on a machine without a GPU it says so and exits 0 (nothing measured);
with ``--cpu-smoke`` it runs every piece at toy sizes on the CPU and prints the whole table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"

NUMBER = r"([\d,]+)"
# (what, figure, note) of every row --cpu-smoke promises (scripts/benchmarks/gpu_check.py's docstring), in
# order; the groups are the figures the table derives from one another
ROWS = [
    (
        "MAE vit_nano_32 32px step, eager, batch 8",
        rf"{NUMBER} img/s",
        r"no nominal peak known; \d+% of measured GEMM \(\d+ TFLOP/s\)",
    ),
    (
        "MAE vit_nano_32 32px step, compiled, batch 8",
        rf"{NUMBER} img/s",
        r"no nominal peak known; \d+% of measured GEMM \(\d+ TFLOP/s\)",
    ),
    (
        "LoRA r=8 all linears, vit_nano_32, batch 4: maskrank",
        rf"{NUMBER} img/s",
        r"maskrank / peft paired speed (\d+\.\d\d)x",
    ),
    ("LoRA r=8 all linears, vit_nano_32, batch 4: peft", rf"{NUMBER} img/s", r""),
    (
        "ImageFolder in_memory=false, 500x375 JPEGs -> 224, 1 workers",
        rf"{NUMBER} img/s",
        rf"{NUMBER} img/s per worker; 3000 img/s needs (\d+) such workers",
    ),
    (
        "rank callbacks, MAE vit_tiny_32 batch 16, per step",
        r"([+-]\d+\.\d)%",
        r"(\d+\.\d) ms/step without, (\d+\.\d) ms/step with",
    ),
]


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_gpu_check_without_a_gpu_says_no_gpu_and_exits_0():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("no GPU")


@pytest.mark.slow
def test_cpu_smoke_prints_every_row_of_the_table():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    titles = [i for i, line in enumerate(lines) if line.startswith("gpu_check on CPU (toy sizes)")]
    assert len(titles) == 1, done.stdout[-3000:]
    header, *rows = lines[titles[0] + 1 :]
    assert header.split() == ["what", "figure", "note"]
    assert len(rows) == len(ROWS), rows
    found = []
    for line, (what, figure, note) in zip(rows, ROWS, strict=True):
        pattern = rf"{re.escape(what)} +{figure}" + (f"  {note}" if note else "")
        match = re.fullmatch(pattern, line.rstrip())
        assert match, (line, what)
        found.append(match.groups())
    # one loader worker: the per-worker rate is the rate, and 3000 img/s needs 3000 / rate of them
    # (up to the printed figures' rounding: the rate to 0.5 img/s, the times to 0.05 ms)
    rate, per_worker, needed = (_number(g) for g in found[4])
    assert per_worker == rate
    assert needed == pytest.approx(3000 / rate, abs=0.5 + 3000 * 0.5 / rate**2)
    # the callbacks' overhead is the ratio of the two step times it prints
    overhead, without, with_callbacks = (float(g) for g in found[5])
    rounding = 0.05 + 100 * 0.05 * (1 / without + with_callbacks / without**2)
    assert overhead == pytest.approx(100 * (with_callbacks / without - 1), abs=rounding)
