"""Exact resume: a fit killed (SIGKILL) or crashed mid-run and resumed with ``--ckpt_path last``
ends with the weights of the uninterrupted run, bit for bit, in the same run directory."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.cli import main
from maskrank.cli.lightning import build_cli
from testkit.resume import (
    max_abs_diff,
    read_steps,
    recorded_flags,
    sigkill_and_resume,
    tiny_mae_model,
    write_config,
)

STEPS = 12  # 3 epochs x 4 batches


# one intra-op thread for the in-process fits (the subprocesses get OMP_NUM_THREADS=1)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
def test_sigkilled_fit_resumes_to_the_uninterrupted_weights(tmp_path):
    runs = tmp_path / "runs"
    # a checkpoint every 3 steps: the one the resume starts from (step 6) is mid-epoch
    cfg = write_config(
        tmp_path / "cfg.yaml", runs, tiny_mae_model(), checkpoint={"every_n_train_steps": 3}
    )
    ref_cfg = write_config(
        tmp_path / "ref.yaml", runs, tiny_mae_model(), "ref", {"every_n_train_steps": 3}
    )
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    sigkill_and_resume(tmp_path, cfg, ref_cfg, last)

    # it resumed from the step-6 checkpoint (a fresh start would also reproduce the weights)
    assert read_steps(tmp_path / "resumed.log") == ["start 6", *map(str, range(7, STEPS + 1))]
    assert read_steps(tmp_path / "ref.log") == ["start 0", *map(str, range(1, STEPS + 1))]
    final_resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    final_reference = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final_resumed, final_reference) == 0.0
    # ... in the same run directory, whose config.yaml is kept
    assert sorted(p.name for p in (runs / "exp").iterdir()) == ["version_0"]
    assert (runs / "exp" / "version_0" / "config.resume-1.yaml").is_file()
    # TensorBoard shows each step once: the killed run's step after the checkpoint is purged
    events = EventAccumulator(str(runs / "exp" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(STEPS))


@pytest.mark.parametrize(
    "checkpoint, crash_after, resumes_at",
    [
        (None, 6, 4),  # default: last.ckpt at the end of each epoch (after validation)
        ({"every_n_train_steps": 5}, 7, 5),  # mid-epoch: step 5 is batch 1 of epoch 1
    ],
    ids=["epoch-end", "mid-epoch"],
)
def test_crashed_fit_resumes_exactly_in_process(tmp_path, checkpoint, crash_after, resumes_at):
    runs = tmp_path / "runs"
    ref = write_config(tmp_path / "ref.yaml", runs, tiny_mae_model(), "ref", checkpoint)
    build_cli(["fit", "-c", str(ref), *recorded_flags(tmp_path / "ref.log", tmp_path / "ref.pt")])
    cfg = str(write_config(tmp_path / "cfg.yaml", runs, tiny_mae_model(), checkpoint=checkpoint))
    crash = [
        "--trainer.callbacks+=testkit.resume.CrashAt",
        f"--trainer.callbacks.step={crash_after}",
    ]
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cli(["fit", "-c", cfg, *crash])
    log = tmp_path / "resumed.log"
    build_cli(["fit", "-c", cfg, "--ckpt_path", "last", *recorded_flags(log, tmp_path / "res.pt")])
    assert read_steps(log)[0] == f"start {resumes_at}"
    final = torch.load(tmp_path / "res.pt", weights_only=True)
    assert max_abs_diff(final, torch.load(tmp_path / "ref.pt", weights_only=True)) == 0.0


def test_ckpt_path_last_without_a_previous_run_is_one_clear_line(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "runs", tiny_mae_model())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--ckpt_path", "last"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error: --ckpt_path last")
    assert str(tmp_path / "runs" / "exp" / "version_*" / "checkpoints" / "last.ckpt") in err[0]
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_ckpt_path_last_picks_the_newest_run_with_a_checkpoint(tmp_path):
    from jsonargparse import Namespace

    from maskrank.io.resume import find_last_checkpoint

    experiment = tmp_path / "runs" / "exp"
    for version in (0, 2, 10):
        (experiment / f"version_{version}" / "checkpoints").mkdir(parents=True)
        (experiment / f"version_{version}" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (experiment / "version_11").mkdir()  # killed before its first checkpoint
    logger = Namespace(
        class_path="pytorch_lightning.loggers.TensorBoardLogger",
        init_args=Namespace(save_dir=str(tmp_path / "runs"), name="exp", version=None),
    )
    config = Namespace(trainer=Namespace(logger=logger), checkpoint=Namespace(dirpath=None))
    found = find_last_checkpoint(config)
    assert found.version == 10  # numerically newest, not "version_2" > "version_10" as strings
    assert found.path == experiment / "version_10" / "checkpoints" / "last.ckpt"
