"""Bad settings of the online evaluation (OnlineKNN, LiDAR, online probe, uniformity): each ends
``maskrank`` with exit status 2 and one ``maskrank: error:`` line naming the setting. Nothing
trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskrank.cli import main
from testkit.resume import tiny_mae_model, write_config


def _callback(name: str, **init_args) -> dict:
    return {"class_path": f"maskrank.callbacks.{name}", "init_args": init_args}


def _config(tmp_path: Path, callbacks: list[dict] | None = None, **model_args) -> Path:
    model = tiny_mae_model()
    model["init_args"].update(model_args)
    return write_config(tmp_path / "mae.yaml", tmp_path / "runs", model, callbacks=callbacks or [])


ROWS = {
    "OnlineKNN k < 1": (
        lambda p: ["fit", "-c", str(_config(p, [_callback("OnlineKNN", k=0)]))],
        ["OnlineKNN k", "init_args.k", ">= 1", "got 0"],
    ),
    "OnlineKNN k larger than the bank": (
        lambda p: ["fit", "-c", str(_config(p, [_callback("OnlineKNN", k=100)]))],
        ["OnlineKNN k", "= 100", "larger than the bank of 64"],
    ),
    "OnlineKNN on data without labels": (
        lambda p: [
            "fit",
            "-c",
            str(_config(p, [_callback("OnlineKNN")])),
            "--data.init_args.num_classes",
            "1",
        ],
        ["OnlineKNN needs", "class labels"],
    ),
    "LiDAR views < 2": (
        lambda p: [
            "fit",
            "-c",
            str(_config(p, [_callback("RepresentationRankMonitor", lidar={"views": 1})])),
        ],
        ["lidar.views", ">= 2", "got 1"],
    ),
    "negative uniformity_weight": (
        lambda p: ["fit", "-c", str(_config(p)), "--model.init_args.uniformity_weight", "-0.5"],
        ["model.init_args.uniformity_weight", ">= 0", "-0.5"],
    ),
    "online probe on data without labels": (
        lambda p: [
            "fit",
            "-c",
            str(_config(p, online_probe=True)),
            "--data.init_args.num_classes",
            "1",
        ],
        ["model.init_args.online_probe", "class labels", "num_classes=1"],
    ),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_bad_online_eval_setting_is_one_clear_line(row, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, needles = row
    with pytest.raises(SystemExit) as exit_:
        main(argv(tmp_path))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err[-20:]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing was trained
