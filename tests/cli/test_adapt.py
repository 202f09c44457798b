"""Two-stage runs through the CLI: MAE pretraining -> finetune / lora -> lora-rank / export."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import yaml

from maskrank.cli import main
from maskrank.cli.adapt import load_classifier
from maskrank.io.checkpoints import encoder_state_dict
from maskrank.models.lora import load_rank_map, lora_layers
from maskrank.tasks import ImageClassifier
from testkit.tiny import TINY_DATA, TINY_VIT


def _fit(tmp_path: Path, name: str, model: dict, *extra: str) -> Path:
    cfg = {
        "trainer": {
            "max_epochs": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": name},
            },
        },
        "model": model,
        "data": TINY_DATA,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "-c", str(path), *extra])
    return tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"


def _classifier(**init) -> dict:
    return {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT, **init}}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stage1")
    mae = {
        "class_path": "maskrank.tasks.MAEPretraining",
        "init_args": {"vit": TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    }
    return _fit(tmp, "mae", mae)


def test_lora_stage_starts_from_the_mae_encoder_and_exports(pretrained, tmp_path, capsys):
    ckpt = _fit(
        tmp_path,
        "lora",
        _classifier(adaptation="lora", lora={"r": 4, "targets": ["qkv", "fc2"]}),
        "--model.init_args.encoder_ckpt",
        str(pretrained),
    )
    model = load_classifier(ckpt)
    layers = lora_layers(model.model)
    assert len(layers) == 4 and {v.r for v in layers.values()} == {4}
    # frozen base weights are exactly the MAE encoder's; the adapters moved
    encoder = encoder_state_dict(pretrained)
    for name, view in layers.items():
        assert torch.equal(view.base.weight, encoder[f"{name}.weight"])
        assert view.lora_b.abs().sum() > 0
    assert torch.equal(model.model.blocks[0].mlp.fc1.weight, encoder["blocks.0.mlp.fc1.weight"])

    main(["export", str(ckpt), "--out", str(tmp_path / "out")])
    assert "local-dir:" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fresh = timm.create_model(f"local-dir:{tmp_path / 'out' / 'timm'}", pretrained=True).eval()
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)

    from peft import PeftModel

    plain = ImageClassifier(vit=TINY_VIT, num_classes=4, encoder_ckpt=str(pretrained)).model
    peft_model = PeftModel.from_pretrained(plain.eval(), str(tmp_path / "out" / "adapter"))
    torch.testing.assert_close(peft_model.eval()(x), expected, atol=1e-4, rtol=1e-4)


def test_finetune_rank_map_feeds_the_lora_stage(pretrained, tmp_path, capsys):
    ft = _fit(
        tmp_path,
        "ft",
        _classifier(adaptation="finetune", layer_decay=0.75),
        "--model.init_args.encoder_ckpt",
        str(pretrained),
    )
    rank_map = tmp_path / "ranks.yaml"
    main(["lora-rank", str(ft), "--energy", "0.9", "--max-rank", "6", "--out", str(rank_map)])
    printed = capsys.readouterr().out
    assert "blocks.1.mlp.fc2" in printed and "wrote" in printed
    ranks = load_rank_map(rank_map)
    assert len(ranks) == 8 and all(1 <= r <= 6 for r in ranks.values())
    lora = _fit(
        tmp_path,
        "lora",
        _classifier(adaptation="lora"),
        "--model.init_args.encoder_ckpt",
        str(pretrained),
        "--model.init_args.lora.rank_pattern",
        str(rank_map),
    )
    rank_map.unlink()  # the checkpoint stores the map itself
    layers = lora_layers(load_classifier(lora).model)
    assert {n: v.r for n, v in layers.items()} == ranks


def test_lora_rank_recovers_a_planted_update_rank(tmp_path, capsys):
    base = ImageClassifier(vit=TINY_VIT, num_classes=4)
    start = tmp_path / "start.pt"
    torch.save(base.model.state_dict(), start)
    tuned = ImageClassifier(vit=TINY_VIT, num_classes=4, encoder_ckpt=str(start))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in tuned.model.named_modules():
            if name.endswith(("qkv", "fc1")):  # plant a rank-3 update
                d, k = module.weight.shape
                module.weight += torch.randn(d, 3, generator=g) @ torch.randn(3, k, generator=g)
    ckpt = tmp_path / "ft.ckpt"
    torch.save({"state_dict": tuned.state_dict(), "hyper_parameters": dict(tuned.hparams)}, ckpt)
    out = tmp_path / "ranks.yaml"
    main(
        ["lora-rank", str(ckpt), "--energy", "0.999", "--targets", "qkv", "fc1", "--out", str(out)]
    )
    assert load_rank_map(out) == {
        f"blocks.{i}.{m}": 3 for i in (0, 1) for m in ("attn.qkv", "mlp.fc1")
    }


def test_commands_refuse_an_mae_checkpoint_naming_it(pretrained, capsys):
    for command in (["export", str(pretrained), "--out", "x"], ["lora-rank", str(pretrained)]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(pretrained) in err and "MAE pretraining" in err


def test_finetune_from_scratch_needs_a_base(tmp_path, capsys):
    ckpt = _fit(tmp_path, "scratch", _classifier())
    with pytest.raises(SystemExit):
        main(["lora-rank", str(ckpt)])
    assert "--base" in capsys.readouterr().err


def test_lora_target_matching_nothing_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, "bad", _classifier(adaptation="lora", lora={"targets": ["fc3"]}))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.init_args.lora.targets" in err and "'fc3'" in err


def test_linear_probe_exports_as_a_plain_timm_model(pretrained, tmp_path):
    ckpt = _fit(
        tmp_path,
        "probe",
        _classifier(adaptation="linear_probe"),
        "--model.init_args.encoder_ckpt",
        str(pretrained),
    )
    model = load_classifier(ckpt)
    assert model.model.head[0].num_batches_tracked > 0  # the probe's BatchNorm saw data
    main(["export", str(ckpt), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "adapter").exists()  # no adapters to export
    fresh = timm.create_model(f"local-dir:{tmp_path / 'out' / 'timm'}", pretrained=True).eval()
    assert isinstance(fresh.head, torch.nn.Linear)  # BatchNorm folded into the Linear
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=1e-5)


def test_lora_rank_of_a_pissa_run_measures_what_training_moved(tmp_path):
    # PiSSA starts its adapter at the top-4 SVD part of W0 and offsets the base by it, so
    # (α/r) B A holds a rank-4 part training never moved; a rank-1 change of B must read rank 1.
    base = ImageClassifier(vit=TINY_VIT, num_classes=4)
    start = tmp_path / "start.pt"
    torch.save(base.model.state_dict(), start)
    lora = {"r": 4, "init": "pissa", "targets": ["qkv", "fc1"]}
    tuned = ImageClassifier(
        vit=TINY_VIT, num_classes=4, encoder_ckpt=str(start), adaptation="lora", lora=lora
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for view in lora_layers(tuned.model).values():
            d, r = view.lora_b.shape
            step = torch.randn(d, 1, generator=g) @ torch.randn(1, r, generator=g)
            view.lora_b += 0.01 * view.lora_b.norm() * step / step.norm()  # small: B0A0 dominates
    ckpt = tmp_path / "pissa.ckpt"
    torch.save({"state_dict": tuned.state_dict(), "hyper_parameters": dict(tuned.hparams)}, ckpt)
    out = tmp_path / "ranks.yaml"
    main(["lora-rank", str(ckpt), "--energy", "0.999", "--out", str(out)])
    assert load_rank_map(out) == {
        f"blocks.{i}.{m}": 1 for i in (0, 1) for m in ("attn.qkv", "mlp.fc1")
    }
