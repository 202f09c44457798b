"""GaLore as ``model.init_args.optimizer`` of both tasks, through the CLI: bad input is one line
naming the flag, the monitor logs what the projections capture, and a SIGKILLed GaLore fit resumes
to the weights of the uninterrupted run, bit for bit (SCIENCE.md §8)."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.cli import main
from testkit.events import event_tags
from testkit.resume import (
    max_abs_diff,
    read_steps,
    sigkill_and_resume,
    tiny_mae_model,
    write_config,
)
from testkit.tiny import TINY_VIT

FLAG = "--model.init_args.optimizer"
pytestmark = pytest.mark.usefixtures("single_thread")


def _galore_mae(**optimizer) -> dict:
    model = tiny_mae_model()
    model["init_args"]["optimizer"] = {"name": "galore_adamw", **optimizer}
    return model


def _classifier() -> dict:
    return {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}


BAD = {  # flags after `fit -c <config>`, task, what the one line must name
    "unknown optimizer name": (
        [f"{FLAG}.name", "sgd"],
        "mae",
        ["model.init_args.optimizer.name", "'sgd'", "adamw, galore_adamw"],
    ),
    "rank above a target's smaller side": (
        [FLAG, "{name: galore_adamw, rank: 65}"],
        "cls",
        ["model.init_args.optimizer.rank = 65", "blocks.0.attn.qkv.weight", "(192, 64)", "<= 64"],
    ),
    "update_proj_gap below 1": (
        [FLAG, "{name: galore_adamw, update_proj_gap: 0}"],
        "mae",
        ["model.init_args.optimizer.update_proj_gap = 0", ">= 1"],
    ),
    "scale not positive": (
        [FLAG, "{name: galore_adamw, scale: -0.5}"],
        "cls",
        ["model.init_args.optimizer.scale = -0.5", "> 0"],
    ),
    "targets matching no 2-D weight": (
        [FLAG, "{name: galore_adamw, targets: [norm1]}"],
        "mae",
        ["model.init_args.optimizer.targets = ['norm1']", "no trainable 2-D weight"],
    ),
}


@pytest.mark.parametrize("flags, task, expect", BAD.values(), ids=BAD.keys())
def test_bad_optimizer_input_is_one_clear_line(tmp_path, capsys, flags, task, expect):
    runs = tmp_path / "runs"
    model = tiny_mae_model() if task == "mae" else _classifier()
    cfg = write_config(tmp_path / "cfg.yaml", runs, model)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    for needle in expect:
        assert needle in err[0], (needle, err[0])
    assert not runs.exists() or not list(runs.rglob("*.ckpt"))


def _top_right_basis(grad: torch.Tensor, rank: int) -> torch.Tensor:
    """(n, rank): the top-``rank`` right singular vectors of ``grad`` (m, n)."""
    return torch.linalg.svd(grad, full_matrices=False)[2][:rank].T


def test_monitor_logs_captured_energy_and_projection_similarity(tmp_path):
    runs = tmp_path / "runs"
    # refresh every step: the captured energy is that of the gradient's own top-8 subspace
    cfg = write_config(
        tmp_path / "cfg.yaml", runs, _galore_mae(rank=8, update_proj_gap=1), max_epochs=1
    )
    grads_file = tmp_path / "grads.pt"
    main(
        [
            "fit", "-c", str(cfg),
            "--trainer.callbacks+=maskrank.callbacks.GaLoreMonitor",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.callbacks+=testkit.gradients.GradientRecorder",
            f"--trainer.callbacks.path={grads_file}",
            "--trainer.callbacks.parameter=mae.encoder.blocks.0.attn.qkv.weight",
        ]
    )  # fmt: skip
    tags = event_tags(runs / "exp" / "version_0")
    for module in ("enc.b00.qkv", "enc.b01.fc2", "dec.b00.proj"):
        assert f"galore/{module}/captured_energy" in tags
        assert f"galore/{module}/projection_similarity" in tags
    assert "galore/enc.patch_embed.proj/captured_energy" not in tags  # 4-D: plain AdamW
    acc = EventAccumulator(str(runs / "exp" / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    # the expectation from each step's recorded qkv gradient G (192, 64), 4 steps: std projects
    # the smaller side, so the basis is G's top-8 right singular vectors Q_t (64, 8)
    grads = torch.load(grads_file, weights_only=True)["grads"]  # (4, 192, 64)
    assert grads.shape == (4, 192, 64)
    sigma2 = torch.linalg.svdvals(grads) ** 2  # (4, 64)
    expected_energy = sigma2[:, :8].sum(1) / sigma2.sum(1)  # ‖G Q_t‖² / ‖G‖², Q_t from G itself
    energy = [e.value for e in acc.Scalars("galore/enc.b00.qkv/captured_energy")]
    assert energy == pytest.approx(expected_energy.tolist(), abs=1e-5)
    bases = [_top_right_basis(g, 8) for g in grads]
    # ‖Q_{t-1}ᵀ Q_t‖_F² / 8 at the refreshes of steps 1, 2, 3
    pairs = zip(bases[:-1], bases[1:], strict=True)
    expected_similarity = [float((a.T @ b).square().sum() / 8) for a, b in pairs]
    similarity = [e.value for e in acc.Scalars("galore/enc.b00.qkv/projection_similarity")]
    assert similarity == pytest.approx(expected_similarity, abs=1e-4)
    # the subspace moves between steps, so a stale projection would capture less than logged
    assert max(similarity) < 0.9


@pytest.mark.slow
def test_sigkilled_galore_fit_resumes_to_the_uninterrupted_weights(tmp_path):
    runs = tmp_path / "runs"
    # projections refreshed at steps 0, 4, 8: the resume from step 6 must restore the step-4 one
    model = _galore_mae(rank=4, update_proj_gap=4)
    every = {"every_n_train_steps": 3}
    cfg = write_config(tmp_path / "cfg.yaml", runs, model, checkpoint=every)
    ref_cfg = write_config(tmp_path / "ref.yaml", runs, model, "ref", every)
    sigkill_and_resume(tmp_path, cfg, ref_cfg, None)
    assert read_steps(tmp_path / "resumed.log") == ["start 6", *map(str, range(7, 13))]
    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    reference_final = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final, reference_final) == 0.0
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["optimizer_states"][0]["state"]
    assert any("projector" in s for s in state.values())  # it did train with GaLore


def test_classifier_fine_tune_with_galore_and_layer_decay(tmp_path):
    runs = tmp_path / "runs"
    model = _classifier()
    model["init_args"] |= {"layer_decay": 0.75, "optimizer": {"name": "galore_adamw", "rank": 8}}
    cfg = write_config(tmp_path / "cfg.yaml", runs, model, max_epochs=1)
    main(["fit", "-c", str(cfg)])
    ckpt = torch.load(runs / "exp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["optimizer"]["name"] == "galore_adamw"
    optimizer = ckpt["optimizer_states"][0]
    galore = [g for g in optimizer["param_groups"] if g["rank"] == 8]
    plain = [g for g in optimizer["param_groups"] if g["rank"] is None]
    # 2 blocks x 4 targets, each in its block's layer-decay group; the lr ratios survive the split
    assert sum(len(g["params"]) for g in galore) == 8
    assert len({g["initial_lr"] for g in galore}) == 2 and len(plain) > 2
    projected = [s for s in optimizer["state"].values() if "projector" in s]
    assert len(projected) == 8 and all(s["projector"].shape[1] == 8 for s in projected)
