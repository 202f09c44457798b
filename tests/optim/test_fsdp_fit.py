"""The tiny MAE trains under FSDP on CPU: 2 processes, gloo, Lightning's FSDP strategies.

``fsdp1``: FSDPStrategy (flat 1-D shards, ``use_orig_params=True``; see
``testkit.fsdp.CpuFSDPStrategy`` for what it takes on CPU); ``fsdp2``: ModelParallelStrategy
(``fully_shard``, DTensors) with 2-way data parallelism. Each rank holds a part of the weights
(together exactly the model), the loss falls, and each rank's optimizer has the groups of a
single-process run, name for name.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.fsdp import configure, named_groups
from testkit.tiny import tiny_mae

SCRIPT = Path(__file__).parents[1] / "testkit" / "fsdp_fit.py"
# the script imports the test helpers (testkit), as tests do
HELPERS = os.pathsep.join(filter(None, [str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")]))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp1", "fsdp2"])
def test_fsdp_fit_on_cpu_trains_with_the_single_process_groups(tmp_path, strategy):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), strategy, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": HELPERS},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = tiny_mae(lr=3e-3)
    expected = named_groups(reference, configure(reference, strategy=None))
    full = sum(p.numel() for p in reference.parameters())
    for result in ranks:
        assert result["world_size"] == 2
        assert result["groups"] == expected
        assert 0 < result["local_numel"] < full
        losses = result["losses"]
        assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    assert sum(r["local_numel"] for r in ranks) == full
