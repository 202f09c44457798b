"""Dropout specs in the tasks: real Trainer steps, the logged penalty, plain hparams, the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maskrank.cli import main
from maskrank.errors import ConfigError
from maskrank.models.dropout import DropConnectLinear, DropoutSpec, FeatureDropout
from maskrank.tasks import ImageClassifier, MAEPretraining

CONFIGS = Path(__file__).parents[2] / "configs"
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")


def _loader(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(images, torch.arange(n) % 4), batch_size=4)


def _fit(model: pl.LightningModule, tmp_path) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader())
    return trainer


def test_classifier_trains_with_implicit_and_explicit_dropout(tmp_path, tiny_spec):
    specs = [
        DropoutSpec("dropconnect", 0.2, targets=["fc1"]),
        DropoutSpec("feature", 0.1, blocks=[1]),
        DropoutSpec("feature", 0.3, blocks=[0], mode="explicit"),
        DropoutSpec("token", 0.25),
    ]
    model = ImageClassifier(vit=tiny_spec, num_classes=4, dropout=specs)
    assert isinstance(model.model.blocks[1].mlp.drop1, FeatureDropout)
    assert isinstance(model.model.blocks[0].mlp.drop1, nn.Identity)  # explicit: dropout off
    assert isinstance(model.model.blocks[0].mlp.fc1, DropConnectLinear)
    trainer = _fit(model, tmp_path)
    assert trainer.global_step == 2
    assert float(trainer.callback_metrics["train/dropout_penalty"]) > 0
    # hparams are plain (weights_only checkpoints) and rebuild the same model
    assert model.hparams["dropout"][2] == {
        "variant": "feature",
        "rate": 0.3,
        "where": "encoder",
        "blocks": [0],
        "targets": ["mlp.drop1"],
        "mode": "explicit",
    }
    buffer = io.BytesIO()
    torch.save(dict(model.hparams), buffer)
    buffer.seek(0)
    clone = ImageClassifier(**torch.load(buffer, weights_only=True))
    clone.load_state_dict(model.state_dict())
    assert repr(clone.model) == repr(model.model)


def test_mae_trains_with_dropout_in_encoder_and_decoder(tmp_path, tiny_spec):
    specs = [
        {"variant": "attention", "rate": 0.1, "where": "both"},
        {"variant": "feature", "rate": 0.2, "where": "decoder", "mode": "explicit"},
    ]
    model = MAEPretraining(vit=tiny_spec, decoder_dim=32, decoder_depth=1, lr=1e-3, dropout=specs)
    assert model.mae.encoder.blocks[0].attn.attn_drop.p == 0.1
    assert model.mae.decoder_blocks[0].attn.attn_drop.p == 0.1
    trainer = _fit(model, tmp_path)
    assert float(trainer.callback_metrics["train/dropout_penalty"]) > 0
    assert "train/loss" in trainer.callback_metrics


def test_a_bad_rate_names_the_flag(tiny_spec):
    with pytest.raises(ConfigError, match=r"model\.init_args\.dropout\.rate = 1\.5"):
        ImageClassifier(vit=tiny_spec, num_classes=4, dropout=DropoutSpec("feature", 1.5))
    with pytest.raises(ConfigError, match=r"model\.init_args\.dropout\[0\]\.variant = 'token'"):
        MAEPretraining(vit=tiny_spec, dropout=[DropoutSpec("token", 0.5)])


def test_the_mae_config_accepts_a_list_of_specs(capsys):
    spec = "[{variant: feature, rate: 0.1, where: both}, {variant: drop_path, rate: 0.1}]"
    config = str(CONFIGS / "pretrain" / "mae_vit_tiny_cifar10.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", config, "--model.init_args.dropout", spec, "--print_config"])
    assert exit_.value.code in (0, None)
    dropout = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["dropout"]
    assert [d["variant"] for d in dropout] == ["feature", "drop_path"]
    assert dropout[0]["where"] == "both" and dropout[1]["mode"] == "implicit"
