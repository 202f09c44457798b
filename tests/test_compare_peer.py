"""scripts/learning/compare_peer.py on its maskrank-only path (no lightly, no ../shared): a tiny generated
ImageFolder, the tiny ViT preset, a smoke budget, one CPU thread."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from testkit.scripts import load_script
from testkit.sources import textured_image

CLASSES = 4
TINY = [
    "--preset",
    "vit_nano_32",
    "--decoder-dim",
    "32",
    "--decoder-depth",
    "1",
    "--decoder-heads",
    "2",
    "--threads",
    "1",
    "--cache-dir",
    "",
]


@pytest.fixture(scope="module")
def peer():
    threads = torch.get_num_threads()
    yield load_script("learning/compare_peer.py")
    torch.set_num_threads(threads)  # the script sets it for the whole process


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """64 training and 32 test 32-px PNGs of 4 classes."""
    root = tmp_path_factory.mktemp("peer")
    for split, ids in (("train", range(64)), ("test", range(64, 96))):
        for i in ids:
            path = root / split / f"class{i % CLASSES}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            textured_image(i, 32, 32).save(path)
    return root


def _run(peer, folder: Path, out: Path, *extra: str) -> dict:
    argv = ["--root", str(folder), "--smoke", "--out", str(out), *TINY, *extra]
    assert peer.main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_maskrank_and_random_rows_finite_and_independent_of_other_arms(peer, folder, tmp_path):
    both = _run(
        peer, folder, tmp_path / "both", "--arms", "maskrank", "random", "--seeds", "0", "1"
    )
    runs = {(r["arm"], r["seed"]): r for r in both["runs"]}
    assert set(runs) == {(a, s) for a in ("maskrank", "random") for s in (0, 1)}
    for (arm, _), row in runs.items():
        for key in peer.METRICS:
            assert 0.0 <= row[key] <= 1.0, (arm, key, row[key])
        trained = arm == "maskrank"
        assert ("final_loss" in row) == trained  # only the trained arm has a pretraining loss
        if trained:
            assert math.isfinite(row["final_loss"]) and row["final_loss"] > 0
            # predicting 0 for standardized patches of 48 values scores (48 - 1) / 48
            assert row["zero_loss"] == pytest.approx(47 / 48, abs=1e-3)
    assert set(both["summary"]) == {"maskrank", "random"}
    table = (tmp_path / "both" / "table.md").read_text()
    for arm in ("maskrank", "random"):
        assert f"| **{arm}** | mean ± std |" in table
    # an arm's numbers depend on its seed only, not on which arms ran before it
    alone = _run(peer, folder, tmp_path / "alone", "--arms", "maskrank", "--seeds", "1")
    same = (*peer.METRICS, "final_loss", "zero_loss", "losses")
    assert {k: alone["runs"][0][k] for k in same} == {k: runs["maskrank", 1][k] for k in same}

    # one process per seed, merged, gives the two-seed run's summary
    zero = _run(peer, folder, tmp_path / "zero", "--arms", "maskrank", "--seeds", "0")
    argv = ["--merge", str(tmp_path / "zero"), str(tmp_path / "alone")]
    assert peer.main([*argv, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["config"]["seeds"] == [0, 1]
    for metric in (*peer.METRICS, "final_loss"):
        assert merged["summary"]["maskrank"][metric]["mean"] == pytest.approx(
            both["summary"]["maskrank"][metric]["mean"], rel=1e-12
        ), metric
    assert zero["runs"][0]["final_loss"] == runs["maskrank", 0]["final_loss"]


def test_missing_lightly_and_bad_flags_are_one_line_before_training(
    peer, folder, tmp_path, monkeypatch, capsys
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightly" else real(name, *a)
    )
    assert peer.main(["--root", str(folder), "--smoke", "--arms", "lightly", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps lightly" in err
    assert peer.main(["--root", str(folder), "--smoke", "--batch", "999", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch 999" in err
    assert peer.main(["--merge", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no results.json" in err


def test_merge_refuses_runs_of_different_protocols(peer, tmp_path, capsys):
    for name, steps in (("a", 4), ("b", 5)):
        (tmp_path / name).mkdir()
        config = {"seeds": [0 if name == "a" else 1], "arms": ["random"], "threads": 1,
                  "probe_check_max_delta": 0.0, "total_steps": steps}  # fmt: skip
        result = {"config": config, "runs": [{"arm": "random", "seed": config["seeds"][0]}]}
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    assert peer.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "total_steps is 5" in err
