"""LoRA options inside real fits: gradient init at fit start, Deep LoRA compression, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskrank.cli.adapt import load_classifier
from maskrank.cli.lightning import build_cli
from testkit.resume import max_abs_diff, read_steps, write_config
from testkit.tiny import TINY_VIT

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIONS = {
    "pissa": {"r": 4, "init": "pissa"},
    "gradient": {"r": 4, "init": "gradient", "init_batches": 2},
    "deep": {"r": 4, "depth": 3, "init_scale": 0.01, "compress_after": 3, "r_c": 2},
    "peft-dora": {"r": 4, "engine": "peft", "use_dora": True, "use_rslora": True},
}


def _lora_model(lora: dict) -> dict:
    return {
        "class_path": "maskrank.tasks.ImageClassifier",
        "init_args": {"vit": TINY_VIT, "adaptation": "lora", "lora": lora, "lr": 0.003},
    }


def _recorded(log: Path, final: Path) -> list[str]:
    return [
        "--trainer.callbacks+=testkit.resume.StepRecorder",
        f"--trainer.callbacks.log={log}",
        f"--trainer.callbacks.final={final}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("lora", OPTIONS.values(), ids=OPTIONS.keys())
def test_crashed_lora_fit_resumes_exactly(tmp_path, lora):
    runs, checkpoint = tmp_path / "runs", {"every_n_train_steps": 5}
    model = _lora_model(lora)
    ref = write_config(tmp_path / "ref.yaml", runs, model, "ref", checkpoint)
    build_cli(["fit", "-c", str(ref), *_recorded(tmp_path / "ref.log", tmp_path / "ref.pt")])
    cfg = str(write_config(tmp_path / "cfg.yaml", runs, model, checkpoint=checkpoint))
    crash = ["--trainer.callbacks+=testkit.resume.CrashAt", "--trainer.callbacks.step=7"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cli(["fit", "-c", cfg, *crash])
    log = tmp_path / "resumed.log"
    build_cli(["fit", "-c", cfg, "--ckpt_path", "last", *_recorded(log, tmp_path / "res.pt")])
    assert read_steps(log)[0] == "start 5"  # mid-epoch: after the init and the compression
    final = torch.load(tmp_path / "res.pt", weights_only=True)
    reference = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert max_abs_diff(final, reference) == 0.0
    if lora.get("init") == "gradient":
        assert bool(reference["lora_init_done"])
    if lora.get("depth") == 3:
        assert int(reference["model.blocks.0.attn.qkv.active_width"]) == 2
        assert bool(reference["model.blocks.0.attn.qkv.compressed"])
    # the checkpoint rebuilds the trained classifier outside Lightning (export reads it)
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    rebuilt = load_classifier(last)
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(rebuilt(x)).all()


def test_gradient_init_runs_at_fit_start_and_keeps_the_initial_function(tmp_path, monkeypatch):
    from maskrank.tasks import ImageClassifier

    seen: dict[str, torch.Tensor] = {}
    original = ImageClassifier.on_train_start

    def spy(self):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.eval()
        with torch.no_grad():
            seen["before"] = self(x)
            seen["base_before"] = self.model.blocks[0].attn.qkv.base_layer.weight.clone()
        original(self)
        with torch.no_grad():
            seen["after"] = self(x)
            seen["base_after"] = self.model.blocks[0].attn.qkv.base_layer.weight.clone()
        self.train()

    monkeypatch.setattr(ImageClassifier, "on_train_start", spy)
    cfg = write_config(
        tmp_path / "cfg.yaml", tmp_path / "runs", _lora_model(OPTIONS["gradient"]), max_epochs=1
    )
    build_cli(["fit", "-c", str(cfg)])
    assert (seen["after"] - seen["before"]).abs().max() < 1e-5
    assert not torch.allclose(seen["base_after"], seen["base_before"])  # W₀ was offset


CLI_BAD = {
    "gradient init_batches 0": ({"init": "gradient", "init_batches": 0}, "lora.init_batches"),
    "pissa rank above min(shape)": ({"r": 65, "init": "pissa"}, "lora.r"),
    "depth 2": ({"depth": 2}, "lora.depth"),
    "r_c above r": ({"r": 4, "depth": 3, "compress_after": 5, "r_c": 8}, "lora.r_c"),
    "compress_after 0": ({"depth": 3, "compress_after": 0}, "lora.compress_after"),
    "init the engine lacks": ({"engine": "peft", "init": "gradient"}, "lora.init"),
}


@pytest.mark.parametrize("lora, field", CLI_BAD.values(), ids=CLI_BAD.keys())
def test_bad_lora_option_is_one_line_naming_the_flag(tmp_path, capsys, lora, field):
    import json

    from maskrank.cli import main

    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "runs", _lora_model({}))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--model.init_args.lora", json.dumps(lora)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    assert f"model.init_args.{field}" in err[0]
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
