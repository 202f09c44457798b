"""Dropout variants: the layers, the spec, apply_dropout and the explicit penalty (SCIENCE.md §4)."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from maskrank.errors import ConfigError
from maskrank.metrics import dropout_penalty_term
from maskrank.models.dropout import (
    AttentionDropout,
    DropConnectLinear,
    DropoutSpec,
    DropPath,
    FeatureDropout,
    TokenDropout,
    as_dropout_specs,
    dropconnect,
    token_dropout,
)
from maskrank.models.dropout_apply import ExplicitDropoutPenalty, apply_dropout
from maskrank.models.mae import MaskedAutoencoder


def _within(fraction: float, p: float, n: int) -> bool:
    """|fraction - p| within 5 binomial standard errors of n trials."""
    return abs(fraction - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.fixture
def vit(tiny_spec):
    return tiny_spec.build(img_size=32, in_chans=3, num_classes=4)


@pytest.fixture
def mae(tiny_spec):
    return MaskedAutoencoder(tiny_spec.build(img_size=32), decoder_dim=32, decoder_depth=2)


# ------------------------------------------------------------------------------------- layers

LAYERS = {
    "feature": lambda: FeatureDropout(0.3),
    "attention": lambda: AttentionDropout(0.3),
    "drop_path": lambda: DropPath(0.3),
    "token": lambda: TokenDropout(0.3),
}


@pytest.mark.parametrize("name", [*LAYERS, "dropconnect"])
def test_identity_in_eval_mode(name):
    x = torch.randn(4, 17, 8)
    if name == "dropconnect":
        layer = DropConnectLinear(8, 5, p=0.5).eval()
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    else:
        assert torch.equal(LAYERS[name]().eval()(x), x)
    assert "p=0.3" in repr(LAYERS["token"]()) and "p=0.5" in repr(DropConnectLinear(2, 2, p=0.5))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_feature_and_attention_dropout_drop_fraction_p_and_rescale(p):
    for layer in (FeatureDropout(p), AttentionDropout(p)):
        x = torch.ones(64, 16, 32, requires_grad=True)
        y = layer.train()(x)
        zero = y == 0
        assert _within(zero.double().mean().item(), p, zero.numel())
        torch.testing.assert_close(y[~zero], torch.full_like(y[~zero], 1 / (1 - p)))
        y.sum().backward()  # gradient 1/θ on kept entries, 0 on dropped ones
        torch.testing.assert_close(x.grad, (~zero).float() / (1 - p))


def test_drop_path_drops_whole_samples_with_probability_p():
    p, n = 0.3, 4000
    x = torch.ones(n, 5, 4, requires_grad=True)
    y = DropPath(p).train()(x)
    dropped = (y == 0).all(dim=(1, 2))
    assert ((y == 0).any(dim=(1, 2)) == dropped).all()  # all or nothing per sample
    assert _within(dropped.double().mean().item(), p, n)
    y.sum().backward()
    assert (x.grad[~dropped] > 0).all()


@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
def test_token_dropout_keeps_cls_and_the_expected_number_of_tokens(p):
    b, length, d = 3, 16, 8
    x = torch.randn(b, 1 + length, d, requires_grad=True)
    y = TokenDropout(p).train()(x)
    assert y.shape == (b, 1 + max(1, int(length * (1 - p))), d)
    torch.testing.assert_close(y[:, 0], x[:, 0])  # CLS kept, first
    for i in range(b):  # kept tokens are distinct tokens of the same sample
        match = (y[i, 1:, None] == x[i, None, 1:]).all(-1)  # (K, L)
        assert (match.sum(1) == 1).all() and (match.sum(0) <= 1).all()
    y.sum().backward()
    assert x.grad[:, 0].eq(1).all()
    assert torch.equal(token_dropout(x, p, training=False), x)


def test_dropconnect_masks_weights_each_forward_and_is_unbiased():
    torch.manual_seed(1)
    p, n = 0.4, 4000
    w = torch.randn(50, 40)
    masked = dropconnect(w, p)
    assert _within((masked == 0).double().mean().item(), p, w.numel())
    assert not torch.equal(dropconnect(w, p), masked)  # resampled every call
    layer = DropConnectLinear(6, 3, p=p).double().train()
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():  # one mask per forward: n forward passes
        samples = torch.stack([layer(x) for _ in range(n)])  # (n, 5, 3)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    err = (samples.mean(0) - plain).abs()
    assert (err < 5 * samples.std(0) / math.sqrt(n)).all()  # Monte Carlo: E[output] = plain
    # ... and its expected extra squared error is feature dropout's penalty on the layer's input
    extra = (samples - plain).square().sum(-1).mean(-1)  # (n,) per mask, mean over samples
    expected = dropout_penalty_term(layer.weight.detach(), x, p).item()
    assert abs(extra.mean().item() - expected) < 5 * extra.std().item() / math.sqrt(n)
    layer.zero_grad()
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [False, True])
def test_attention_dropout_works_on_fused_and_matmul_paths(vit, fused):
    torch.manual_seed(2)
    p, n = 0.5, 2000
    apply_dropout(vit, DropoutSpec("attention", p))
    attn = vit.blocks[0].attn.double()
    attn.fused_attn = fused
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    seen = []
    attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    clean = attn.eval()(x)  # (2, 5, 64)
    with torch.no_grad():  # n independent draws at once: masks are per sample, head and weight
        samples = attn.train()(x.repeat(n, 1, 1)).reshape(n, *x.shape)
    assert not torch.allclose(samples[0], clean)  # dropout is active
    err = (samples.mean(0) - clean).abs()  # the output is linear in the attention weights
    assert (err < 5 * samples.std(0) / math.sqrt(n) + 1e-9).all()
    if not fused:  # matmul path: the module itself drops about a fraction p of the weights
        weights = seen[-1]
        assert _within((weights == 0).double().mean().item(), p, weights.numel())
    else:
        assert not seen  # SDPA applied attn_drop.p inside the kernel


# ------------------------------------------------------------------------------ apply_dropout


def _changed(model: nn.Module, specs) -> tuple[list[str], set[str]]:
    before = {n: id(m) for n, m in model.named_modules()}
    params = {n: id(p) for n, p in model.named_parameters()}
    names = apply_dropout(model, specs)
    after = {n: id(m) for n, m in model.named_modules()}
    assert {n: id(p) for n, p in model.named_parameters()} == params  # shared, same names
    changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    return names, changed


@pytest.mark.parametrize(
    "spec, expected",
    [
        (DropoutSpec("feature", 0.1), ["blocks.0.mlp.drop1", "blocks.1.mlp.drop1"]),
        (
            DropoutSpec("feature", 0.1, blocks=[-1], targets=["drop2", "attn.proj_drop"]),
            ["blocks.1.mlp.drop2", "blocks.1.attn.proj_drop"],
        ),
        (DropoutSpec("attention", 0.2, blocks=[0]), ["blocks.0.attn.attn_drop"]),
        (DropoutSpec("drop_path", 0.2, blocks=[1]), ["blocks.1.drop_path1", "blocks.1.drop_path2"]),
        (
            DropoutSpec("dropconnect", 0.2, targets=["fc1", "qkv"]),
            ["blocks.0.mlp.fc1", "blocks.0.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.attn.qkv"],
        ),
        (DropoutSpec("token", 0.5), ["patch_drop"]),
        (DropoutSpec("none", 0.0), []),
    ],
)
def test_apply_changes_exactly_the_named_modules(vit, spec, expected):
    names, changed = _changed(vit, spec)
    assert names == expected and set(names) == changed
    vit.train()(torch.randn(2, 3, 32, 32)).sum().backward()


def test_combined_specs_and_checkpoints_keep_their_keys(vit, tiny_spec):
    keys = list(vit.state_dict())
    specs = [
        {"variant": "dropconnect", "rate": 0.3},
        DropoutSpec("feature", 0.1),
        DropoutSpec("token", 0.25),
    ]
    names, changed = _changed(vit, specs)
    assert names[:2] == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"] and set(names) == changed
    assert isinstance(vit.blocks[0].mlp.fc2, nn.Linear)  # found by the weight-spectrum callbacks
    assert list(vit.state_dict()) == keys
    fresh = tiny_spec.build(img_size=32, in_chans=3, num_classes=4)
    fresh.load_state_dict(vit.state_dict())
    seen = []
    vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    vit.train()(torch.randn(2, 3, 32, 32))
    assert seen[-1] == (2, 1 + 12, 64)  # 16 patches, 25 % dropped, CLS kept
    vit.eval()(torch.randn(2, 3, 32, 32))
    assert seen[-1] == (2, 17, 64)


def test_rate_zero_installs_the_disabled_forms(vit):
    apply_dropout(vit, [DropoutSpec("feature", 0.0), DropoutSpec("dropconnect", 0.0)])
    apply_dropout(vit, [DropoutSpec("attention", 0.0), DropoutSpec("drop_path", 0.0)])
    block = vit.blocks[0]
    assert isinstance(block.mlp.drop1, nn.Identity) and isinstance(block.drop_path1, nn.Identity)
    assert type(block.mlp.fc2) is nn.Linear and block.attn.attn_drop.p == 0.0


@pytest.mark.parametrize(
    "where, prefixes",
    [
        ("encoder", {"encoder"}),
        ("decoder", {"decoder_blocks"}),
        ("both", {"encoder", "decoder_blocks"}),
    ],
)
def test_mae_encoder_decoder_selection(mae, where, prefixes):
    spec = DropoutSpec("attention", 0.1, where=where, blocks=[0])
    names, changed = _changed(mae, [spec, DropoutSpec("drop_path", 0.1, where=where)])
    assert set(names) == changed and {n.split(".")[0] for n in names} == prefixes
    assert all(".0.attn" in n for n in names if "attn" in n)
    loss, _, _ = mae.train()(torch.randn(2, 3, 32, 32))
    loss.backward()


@pytest.mark.parametrize(
    "specs, match",
    [
        (DropoutSpec("feature", 1.0), r"model\.init_args\.dropout\.rate = 1\.0 must be"),
        ([DropoutSpec("none"), DropoutSpec("drop_path", -0.1)], r"dropout\[1\]\.rate"),
        (DropoutSpec("feature", 0.1, blocks=[2]), r"dropout\.blocks: index 2 is out of range"),
        (DropoutSpec("feature", 0.1, targets=["qkv"]), r"dropout\.targets: 'qkv' is not"),
        (DropoutSpec("feature", 0.1, where="decoder"), r"dropout\.where = 'decoder'"),
        (DropoutSpec("attention", 0.1, mode="explicit"), r"dropout\.mode = 'explicit' needs"),
        (DropoutSpec("attention", 0.1, targets=["attn_drop"], blocks=[0]), None),
        (
            [DropoutSpec("feature", 0.1), DropoutSpec("feature", 0.2, blocks=[1])],
            r"dropout\[1\] and model\.init_args\.dropout\[0\] both set blocks\.1\.mlp\.drop1",
        ),
        ({"variant": "feature", "rat": 0.1}, r"unknown field\(s\) \['rat'\]"),
        (DropoutSpec("bogus", 0.1), r"dropout\.variant = 'bogus'"),
    ],
)
def test_user_mistakes_name_the_flag(vit, specs, match):
    if match is None:
        assert apply_dropout(vit, specs) == ["blocks.0.attn.attn_drop"]
        return
    with pytest.raises(ConfigError, match=match):
        apply_dropout(vit, specs)


def test_token_dropout_is_refused_on_an_mae(mae):
    with pytest.raises(ConfigError, match=r"dropout\.variant = 'token' is for classifiers"):
        apply_dropout(mae, DropoutSpec("token", 0.5))


def test_specs_round_trip_through_plain_dicts():
    specs = as_dropout_specs([DropoutSpec("feature", 0.2, targets=["drop1"]), {"variant": "none"}])
    assert specs[0].targets == ["mlp.drop1"]
    assert as_dropout_specs([asdict(s) for s in specs]) == specs
    assert as_dropout_specs(None) == []


# --------------------------------------------------------------------------- explicit penalty


def test_explicit_penalty_equals_the_term_on_the_hooked_activations(mae):
    spec = DropoutSpec("feature", 0.3, where="both", mode="explicit")
    names = apply_dropout(mae, spec)
    assert len(names) == 4 and all(isinstance(mae.get_submodule(n), nn.Identity) for n in names)
    penalty = ExplicitDropoutPenalty.from_specs(mae, spec)
    assert penalty is not None and len(penalty.rates) == 4
    inputs = {}
    for name in penalty.rates:
        mae.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: inputs.__setitem__(name, a[0].detach())
        )
    mae.train()
    loss, _, _ = mae(torch.randn(2, 3, 32, 32))
    total = penalty.pop()
    expected = sum(
        dropout_penalty_term(mae.get_submodule(n).weight, a, 0.3) for n, a in inputs.items()
    )
    torch.testing.assert_close(total, expected)
    assert inputs["encoder.blocks.0.mlp.fc2"].shape[1] == 1 + 4  # CLS + 25 % visible of 16
    (loss + total).backward()  # differentiable: reaches fc2 and, through a, fc1
    assert mae.encoder.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert float(penalty.pop()) == 0.0  # popped
    with torch.no_grad():
        mae(torch.randn(2, 3, 32, 32))
    mae.eval()(torch.randn(2, 3, 32, 32))
    assert float(penalty.pop()) == 0.0  # only training forwards with autograd count
    penalty.remove()
    mae.train()(torch.randn(2, 3, 32, 32))
    assert float(penalty.pop()) == 0.0


def test_explicit_penalty_matches_monte_carlo_dropout_on_the_last_linear_layer(vit):
    """E_mask ‖y - fc2(drop(a))‖² - ‖y - fc2(a)‖², per token, equals λ Σ_j ‖u_j‖² mean(a_j²)."""
    torch.manual_seed(3)
    p, n = 0.3, 4000
    spec = DropoutSpec("feature", p, blocks=[0], mode="explicit")
    apply_dropout(vit.double(), spec)
    penalty = ExplicitDropoutPenalty(vit, p, blocks=[0])
    mlp = vit.blocks[0].mlp.train()
    h = torch.randn(2, 3, 64, dtype=torch.float64)  # (B, N, D) tokens entering the MLP
    y = torch.randn(2, 3, 64, dtype=torch.float64)  # a regression target for the MLP output
    clean = mlp(h)  # (B, N, D), dropout off: the explicit penalty is recorded
    explicit = penalty.pop().item()
    mlp.drop1 = FeatureDropout(p)
    with torch.no_grad():  # n independent masks per token at once: (n·B, N, D)
        noisy = mlp(h.repeat(n, 1, 1)).reshape(n, *h.shape)
    base = (y - clean).square().sum(-1).mean()
    extra = (y - noisy).square().sum(-1).mean(dim=(1, 2)) - base  # (n,) extra loss per draw
    assert abs(extra.mean().item() - explicit) < 5 * extra.std().item() / math.sqrt(n)
    noise = (noisy - clean).square().sum(-1).mean(dim=(1, 2))  # (n,) the same without y
    assert abs(noise.mean().item() - explicit) < 5 * noise.std().item() / math.sqrt(n)
    assert abs(noise.mean().item() / explicit - 1) < 0.02
