"""LoRA layers: math, merging, engines, targets and export (SCIENCE.md §6)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from maskrank.errors import ConfigError, CorruptFileError
from maskrank.models.lora import (
    LoRALinear,
    LoRASpec,
    apply_lora,
    delta_weight,
    load_rank_map,
    lora_layers,
    lora_linear,
    merge_lora,
    save_adapter,
    save_merged,
    write_rank_map,
)
from maskrank.models.lora.kernel import _MergedLoRA


def _vit(spec, num_classes=4):
    return spec.build(img_size=32, num_classes=num_classes).eval()


def _randomize_b(model: nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for view in lora_layers(model).values():
            view.lora_b.normal_(std=std)


@pytest.mark.parametrize(
    "t, d, k", [(9, 5, 6), (9, 11, 4), (10, 5, 6), (10, 11, 4)]
)  # odd / even token count (split sums), output narrower / wider than the input
def test_merged_lora_gradients_match_finite_differences(t, d, k):
    dt = torch.float64
    shapes = [(t, k), (d, k), (d,), (3, k), (d, 3)]
    args = [torch.randn(s, dtype=dt, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *a: _MergedLoRA.apply(*a, 0.7), tuple(args))
    # the frozen-weight case (the one LoRA trains in) takes the fused g [W' | B] path when d > k
    args[1].requires_grad_(False)
    args[2].requires_grad_(False)
    assert torch.autograd.gradcheck(lambda *a: _MergedLoRA.apply(*a, 0.7), tuple(args))


def test_fused_and_composed_paths_agree():
    torch.manual_seed(1)
    f64 = {"dtype": torch.float64}
    x = torch.randn(4, 7, 12, requires_grad=True, **f64)
    w, b = torch.randn(10, 12, **f64), torch.randn(10, **f64)
    a = torch.randn(3, 12, requires_grad=True, **f64)
    bb = torch.randn(10, 3, requires_grad=True, **f64)
    fused = lora_linear(x, w, b, a, bb, 2.0)
    composed = lora_linear(x, w, b, a, bb, 2.0, x_lora=x)  # the dropout path with p = 0
    reference = x @ w.t() + b + 2.0 * (x @ a.t()) @ bb.t()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(composed, reference)
    grads = [torch.autograd.grad(out.square().sum(), (x, a, bb)) for out in (fused, composed)]
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2)


def test_a_fresh_adapter_is_the_identity_and_b_changes_it(tiny_spec):
    model = _vit(tiny_spec)
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    apply_lora(model, LoRASpec(r=4))
    torch.testing.assert_close(model(x), before)  # B = 0 at the start
    _randomize_b(model)
    assert not torch.allclose(model(x), before, atol=1e-3)


def test_merged_equals_unmerged_with_nonzero_b(tiny_spec):
    model = _vit(tiny_spec)
    apply_lora(model, LoRASpec(r=4))
    _randomize_b(model)
    x = torch.randn(3, 3, 32, 32)
    unmerged = model(x)
    in_place = copy.deepcopy(model)
    for m in in_place.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    torch.testing.assert_close(in_place(x), unmerged, atol=1e-5, rtol=1e-5)
    plain = merge_lora(copy.deepcopy(model))
    assert not lora_layers(plain) and not any(isinstance(m, LoRALinear) for m in plain.modules())
    torch.testing.assert_close(plain(x), unmerged, atol=1e-5, rtol=1e-5)


def test_merging_twice_equals_merging_once(tiny_spec):
    model = _vit(tiny_spec)
    apply_lora(model, LoRASpec(r=4))
    _randomize_b(model)
    layer = model.blocks[0].attn.qkv
    layer.merge()
    once = layer.base_layer.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, once, rtol=0, atol=0)
    merged_once = merge_lora(copy.deepcopy(model))
    merged_twice = merge_lora(merge_lora(copy.deepcopy(model)))
    for (k1, v1), (k2, v2) in zip(
        merged_once.state_dict().items(), merged_twice.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, once - layer.delta_weight())


def test_frozen_weights_unchanged_after_a_step(tiny_spec):
    model = _vit(tiny_spec)
    apply_lora(model, LoRASpec(r=4))
    model.head.requires_grad_(True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and all("lora_" in n or n.startswith("head.") for n in trained)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
            assert p.grad is None, name  # the frozen gradient is never even formed
    assert all(not torch.equal(dict(model.named_parameters())[n], v) for n, v in trained.items())


def test_peft_engine_computes_the_same_function(tiny_spec):
    ours, theirs = _vit(tiny_spec), _vit(tiny_spec)
    theirs.load_state_dict(ours.state_dict())
    apply_lora(ours, LoRASpec(r=4, targets=["qkv", "fc2"]))
    apply_lora(theirs, LoRASpec(r=4, targets=["qkv", "fc2"], engine="peft"))
    _randomize_b(ours)
    mine, peft_views = lora_layers(ours), lora_layers(theirs)
    assert mine.keys() == peft_views.keys() and len(mine) == 4
    with torch.no_grad():
        for name, view in mine.items():
            peft_views[name].lora_a.copy_(view.lora_a)
            peft_views[name].lora_b.copy_(view.lora_b)
            assert peft_views[name].scaling == view.scaling
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    for name in mine:
        torch.testing.assert_close(delta_weight(mine[name]), delta_weight(peft_views[name]))


def test_target_matching_nothing_names_the_flag(tiny_spec):
    with pytest.raises(ConfigError, match=r"'fc3'.*model\.init_args\.lora\.targets.*fc1"):
        apply_lora(_vit(tiny_spec), LoRASpec(targets=["qkv", "fc3"]))


def test_proj_does_not_match_the_patch_embedding(tiny_spec):
    layers = apply_lora(_vit(tiny_spec), LoRASpec(targets=["proj"]))
    assert sorted(layers) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]


@pytest.mark.parametrize(
    "bad, match",
    [(dict(r=0), r"lora\.r"), (dict(alpha=0.0), "alpha"), (dict(dropout=1.0), "dropout")],
)
def test_bad_spec_values_name_the_flag(tiny_spec, bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_lora(_vit(tiny_spec), LoRASpec(**bad))


def test_rank_pattern_sets_per_module_ranks_and_scales(tiny_spec, tmp_path):
    path = tmp_path / "ranks.yaml"
    write_rank_map(path, {"blocks.0.attn.qkv": 2, "blocks.1.mlp.fc1": 0, r"blocks\.1\.attn\..*": 6})
    ranks = load_rank_map(path)
    layers = apply_lora(_vit(tiny_spec), LoRASpec(r=4, alpha=8.0, rank_pattern=str(path)))
    from_dict = apply_lora(_vit(tiny_spec), LoRASpec(r=4, alpha=8.0, rank_pattern=ranks))
    assert {n: v.r for n, v in layers.items()} == {n: v.r for n, v in from_dict.items()}
    assert layers["blocks.0.attn.qkv"].r == 2
    assert layers["blocks.1.attn.qkv"].r == 6 and layers["blocks.1.attn.proj"].r == 6
    assert "blocks.1.mlp.fc1" not in layers  # rank 0: no adapter
    assert layers["blocks.0.mlp.fc2"].r == 4
    # alpha follows the rank, so every layer starts with the same scale alpha / r = 2
    assert {v.scaling for v in layers.values()} == {2.0}


def test_bad_rank_map_file_names_it(tmp_path):
    bad = tmp_path / "ranks.yaml"
    bad.write_text("rank_pattern: {blocks.0.attn.qkv: four}\n")
    with pytest.raises(CorruptFileError, match="ranks.yaml"):
        load_rank_map(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml.*maskrank lora-rank"):
        load_rank_map(tmp_path / "nope.yaml")


def test_exported_merged_weights_load_in_fresh_timm(tiny_spec, tmp_path):
    model = _vit(tiny_spec)
    apply_lora(model, LoRASpec(r=4))
    _randomize_b(model)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    folder = save_merged(model, tmp_path / "timm")
    assert lora_layers(model)  # the model itself is left adapted
    fresh = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(fresh) is timm.models.VisionTransformer
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)


def test_exported_adapter_loads_in_peft(tiny_spec, tmp_path):
    from peft import PeftModel

    pretrained = _vit(tiny_spec)
    model = copy.deepcopy(pretrained)
    apply_lora(model, LoRASpec(r=4, alpha=8.0, rank_pattern={"blocks.1.mlp.fc2": 2}))
    _randomize_b(model)
    with torch.no_grad():
        model.head.weight.normal_()  # the head trains with the adapters and is exported too
    folder = save_adapter(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(pretrained, str(folder)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)
    assert loaded.peft_config["default"].rank_pattern["blocks.1.mlp.fc2"] == 2
