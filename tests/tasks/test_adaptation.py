"""Adaptation modes of the classifier: linear probe, layer-wise lr decay, LoRA (SCIENCE.md §6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskrank.errors import ConfigError
from maskrank.optim import adamw
from maskrank.tasks import ImageClassifier
from maskrank.tasks.adaptation import fold_probe_head, trainable_parameters


def _classifier(spec, **kw) -> ImageClassifier:
    return ImageClassifier(vit=spec, num_classes=4, img_size=32, **kw)


def _step(model: ImageClassifier, steps: int = 2) -> None:
    opt = adamw(model, lr=1e-2, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 4)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_linear_probe_trains_only_the_head_with_a_frozen_eval_encoder(tiny_spec):
    model = _classifier(
        type(tiny_spec)(**{**tiny_spec.__dict__, "drop_path_rate": 0.5}), adaptation="linear_probe"
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.head.1.weight", "model.head.1.bias"]
    norm = model.model.head[0]
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine
    before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    assert not model.model.blocks[0].training and model.model.head.training
    x = torch.randn(4, 3, 32, 32)
    features = model.model.forward_head(model.model.forward_features(x), pre_logits=True)
    again = model.model.forward_head(model.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, again)  # drop_path is off in the frozen encoder
    _step(model)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name
    assert norm.num_batches_tracked > 0  # the probe's BatchNorm statistics did update


def test_folded_probe_head_equals_the_eval_head():
    head = nn.Sequential(nn.BatchNorm1d(6, affine=False, eps=1e-6), nn.Linear(6, 3))
    head.train()
    head(torch.randn(32, 6) * 3 + 1)  # non-trivial running statistics
    head.eval()
    x = torch.randn(5, 6)
    folded = fold_probe_head(head)
    assert isinstance(folded, nn.Linear)
    torch.testing.assert_close(folded(x), head(x), atol=1e-5, rtol=1e-5)


def test_layer_decay_scales_lr_by_depth(tiny_spec):
    model = _classifier(tiny_spec, layer_decay=0.5)
    opt = adamw(model.model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    vit = model.model
    # depth 2: patch embedding at 0.5^3, block 0 at 0.5^2, block 1 at 0.5, head at 1
    assert lr_of[id(vit.patch_embed.proj.weight)] == pytest.approx(0.125)
    assert lr_of[id(vit.blocks[0].attn.qkv.weight)] == pytest.approx(0.25)
    assert lr_of[id(vit.blocks[1].mlp.fc2.weight)] == pytest.approx(0.5)
    assert lr_of[id(vit.head.weight)] == pytest.approx(1.0)
    assert len(lr_of) == len(list(model.parameters()))
    for g in opt.param_groups:
        assert all((g["weight_decay"] > 0) == (p.ndim >= 2) for p in g["params"])


def test_lora_mode_trains_adapters_and_head_only(tiny_spec):
    model = _classifier(tiny_spec, adaptation="lora", lora={"r": 4, "targets": ["qkv"]})
    trainable, total = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".head." in n for n in names) and len(names) == 2 * 2 + 2
    assert trainable == 2 * 4 * (64 + 192) + 4 * 64 + 4 and trainable < total / 10
    _step(model)
    clone = ImageClassifier(**model.hparams)  # hparams rebuild the adapted model
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(adaptation="probe"), r"model\.init_args\.adaptation"),
        (dict(layer_decay=0.0), r"model\.init_args\.layer_decay"),
        (dict(adaptation="lora", lora={"rank": 4}), r"unknown key.*model\.init_args\.lora"),
    ],
)
def test_bad_adaptation_values_name_the_flag(tiny_spec, bad, match):
    with pytest.raises(ConfigError, match=match):
        _classifier(tiny_spec, **bad)


def test_lora_on_a_wrong_architecture_checkpoint_names_the_file(tiny_spec, tmp_path):
    other = _classifier(type(tiny_spec)(**{**tiny_spec.__dict__, "embed_dim": 32}))
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ConfigError, match=r"other\.ckpt.*does not match"):
        _classifier(tiny_spec, adaptation="lora", encoder_ckpt=str(path))
