"""Adapters started in a measured subspace (PiSSA, gradient init) and Deep LoRA (SCIENCE.md §8)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from maskrank.errors import ConfigError
from maskrank.metrics import top_singular_vectors
from maskrank.models.lora import (
    DeepLoRALinear,
    LoRALinear,
    LoRASpec,
    apply_lora,
    compress_deep_lora,
    gradient_init,
    lora_layers,
    merge_lora,
    save_lora_artefacts,
    save_merged,
)
from maskrank.models.lora.angles import principal_angles
from maskrank.models.lora.init import top_singular_pairs


def _vit(spec, num_classes=4):
    torch.manual_seed(0)
    return spec.build(img_size=32, num_classes=num_classes).eval()


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("engine", ["maskrank", "peft"])
def test_pissa_starts_at_w0_on_the_principal_subspace(tiny_spec, engine):
    model = _vit(tiny_spec)
    w0 = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
    x, _ = _batch()
    before = model(x)
    layers = apply_lora(model, LoRASpec(r=4, init="pissa", engine=engine))
    assert (model(x) - before).abs().max() < 1e-6
    for name, view in layers.items():
        top = torch.linalg.svd(w0[name].double(), full_matrices=False)
        expected = top.U[:, :4] * top.S[:4] @ top.Vh[:4]
        adapter = view.scaling * (view.lora_b.double() @ view.lora_a.double())
        torch.testing.assert_close(adapter, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(view.base.weight.double() + adapter, w0[name].double())


def test_gradient_init_keeps_the_function_and_steps_in_the_gradients_top_subspace(tiny_spec):
    plain = _vit(tiny_spec)
    model = copy.deepcopy(plain)
    x, y = _batch()
    before = model(x)
    # the full-weight gradient at W₀, for reference
    loss = F.cross_entropy(plain(x), y)
    names = ["blocks.0.attn.qkv", "blocks.1.mlp.fc1"]
    grads = torch.autograd.grad(loss, [plain.get_submodule(n).weight for n in names])
    r = 3
    apply_lora(model, LoRASpec(r=r, init="gradient"))
    assert gradient_init(model, [(x, y)], F.cross_entropy) == 1
    assert (model(x) - before).abs().max() < 1e-6
    assert all(p.grad is None for p in model.parameters())
    start = {n: v.scaling * (v.lora_b @ v.lora_a).double() for n, v in lora_layers(model).items()}
    # one plain gradient step on the adapters only
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    step = torch.autograd.grad(F.cross_entropy(model(x), y), adapters)
    with torch.no_grad():
        for p, g in zip(adapters, step, strict=True):
            p -= 1e-3 * g
    for name, grad in zip(names, grads, strict=True):
        view = lora_layers(model)[name]
        moved = view.scaling * (view.lora_b @ view.lora_a).double() - start[name]  # (d, k)
        for side, (m, g) in {"column": (moved, grad), "row": (moved.t(), grad.t())}.items():
            angles = principal_angles(top_singular_vectors(m, r), top_singular_vectors(g, r))
            assert angles.max() < 1.0, (name, side, angles)  # degrees; random: ~60-90


def _train_deep(layer, x, target, steps, lr=1e-2):
    opt = torch.optim.Adam([layer.w1, layer.w2, layer.w3], lr=lr)
    for _ in range(steps):
        loss = (layer(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_deep_lora_compression_keeps_delta_w_and_training_continues():
    torch.manual_seed(0)
    d, k, r = 12, 10, 6
    base = nn.Linear(k, d).requires_grad_(False)
    layer = DeepLoRALinear(base, r, alpha=float(r), init_scale=1e-3)
    x = torch.randn(256, k)
    target = base(x) + x @ (torch.randn(d, 1) @ torch.randn(1, k)).t()  # rank-1 update to learn
    assert _train_deep(layer, x, target, 300) < 1e-4
    before = layer.delta_weight().detach().double()
    changes = compress_deep_lora(layer, 2)
    after = layer.delta_weight().detach().double()
    assert layer.width == 2 and bool(layer.compressed)
    assert [tuple(w.shape) for w in layer.factors()] == [(2, k), (2, 2), (d, 2)]
    assert (after - before).abs().max() < 1e-6 * max(1.0, float(before.abs().max()))
    assert changes[""] < 1e-6
    assert compress_deep_lora(layer, 2) == {}  # once only
    # training goes on at width 2: a second rank-1 direction is learnt too
    target2 = target + x @ (torch.randn(d, 1) @ torch.randn(1, k)).t()
    first = float((layer(x) - target2).square().mean().detach())
    assert _train_deep(layer, x, target2, 300) < 1e-2 * first


def test_deep_lora_forward_is_the_three_factor_product(tiny_spec):
    model = _vit(tiny_spec)
    x, _ = _batch(2)
    before = model(x)
    apply_lora(model, LoRASpec(r=4, depth=3, init_scale=0.3, compress_after=5, r_c=2))
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, DeepLoRALinear)
    assert not torch.allclose(model(x), before, atol=1e-4)  # init_scale 0.3: ΔW != 0
    merged = merge_lora(copy.deepcopy(model))
    torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-5)


def _train_like(model):
    """Move every adapter (and the head) off its init, as training would."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or "lora_" in name or name.endswith(("w1", "w2", "w3")):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


OPTIONS = {
    "default": {},
    "pissa": {"init": "pissa"},
    "gradient": {"init": "gradient"},
    "deep": {"depth": 3, "init_scale": 0.1, "compress_after": 1, "r_c": 2},
    "peft-pissa": {"engine": "peft", "init": "pissa"},
    "peft-olora": {"engine": "peft", "init": "olora"},
    "peft-dora": {"engine": "peft", "use_dora": True},
    "peft-rslora": {"engine": "peft", "use_rslora": True},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_every_option_exports_to_timm_and_peft_with_identical_outputs(tiny_spec, tmp_path, options):
    from peft import PeftModel

    original = _vit(tiny_spec)
    model = copy.deepcopy(original)
    spec = LoRASpec(r=4, alpha=8.0, **options)
    apply_lora(model, spec)
    model.head.requires_grad_(True)
    x, y = _batch(4)
    if spec.init == "gradient":
        gradient_init(model, [(x, y)], F.cross_entropy)
    if spec.depth == 3:
        compress_deep_lora(model, spec.compressed_width)
    _train_like(model)
    model.eval()
    expected = model(x)
    merged = timm.create_model(
        f"local-dir:{save_merged(model, tmp_path / 'timm')}", pretrained=True
    )
    torch.testing.assert_close(merged.eval()(x), expected, atol=1e-5, rtol=1e-5)
    written = save_lora_artefacts(model, tmp_path, spec)
    offset = spec.init not in ("default",)
    assert ("base" in written) == offset
    base = (
        timm.create_model(f"local-dir:{written['base']}", pretrained=True) if offset else original
    )
    loaded = PeftModel.from_pretrained(base, str(written["adapter"])).eval()
    torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


BAD = {
    "gradient init_batches 0": ({"init": "gradient", "init_batches": 0}, "lora.init_batches"),
    "depth 2": ({"depth": 2}, "lora.depth"),
    "r_c above r": ({"r": 4, "depth": 3, "compress_after": 5, "r_c": 8}, "lora.r_c"),
    "compress_after 0": ({"depth": 3, "compress_after": 0}, "lora.compress_after"),
    "compress_after without depth 3": ({"compress_after": 5}, "lora.compress_after"),
    "peft lacks gradient": ({"engine": "peft", "init": "gradient"}, "lora.init"),
    "maskrank lacks olora": ({"init": "olora"}, "lora.init"),
    "maskrank lacks dora": ({"use_dora": True}, "lora.use_dora"),
    "maskrank lacks rslora": ({"use_rslora": True}, "lora.use_rslora"),
    "peft lacks deep lora": ({"engine": "peft", "depth": 3}, "lora.depth"),
    "deep lora with pissa": ({"depth": 3, "init": "pissa"}, "lora.init"),
}


@pytest.mark.parametrize("bad, field", BAD.values(), ids=BAD.keys())
def test_bad_lora_options_name_their_field(bad, field):
    with pytest.raises(ConfigError) as err:
        LoRASpec(**bad)
    assert err.value.field == field and "\n" not in str(err.value)


def test_pissa_rank_above_the_layer_shape_is_refused(tiny_spec):
    # the tiny ViT's qkv is 192 x 64: rank 65 cannot come from its SVD
    with pytest.raises(ConfigError, match="min\\(shape\\)") as err:
        apply_lora(_vit(tiny_spec), LoRASpec(r=65, init="pissa"))
    assert err.value.field == "lora.r" and "blocks.0.attn.qkv" in str(err.value)


def test_lora_linear_is_still_the_default_layer(tiny_spec):
    layers = apply_lora(_vit(tiny_spec), LoRASpec(r=2))
    assert all(isinstance(v.base, nn.Linear) for v in layers.values())
    assert isinstance(_vit(tiny_spec).blocks[0].attn.qkv, nn.Linear)
    model = _vit(tiny_spec)
    apply_lora(model, LoRASpec(r=2))
    assert isinstance(model.blocks[0].attn.qkv, LoRALinear)


def test_update_angles_are_zero_inside_and_ninety_across_the_reference_subspace():
    from maskrank.models.lora.angles import update_angles

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    base = torch.randn(16, 12, generator=g, dtype=torch.float64)
    right = torch.randn(2, 12, generator=g, dtype=torch.float64)
    full = base + q[:, :2] @ right  # the fine-tune's update: columns in span(q[:, :2])
    inside = base + q[:, :2] @ torch.randn(2, 12, generator=g, dtype=torch.float64)
    across = base + q[:, 2:4] @ torch.randn(2, 12, generator=g, dtype=torch.float64)
    out = update_angles(
        {"in": inside, "across": across},
        {"in": full, "across": full},
        {"in": base, "across": base},
        2,
    )
    assert out["in"]["max_deg"] < 1e-4 and out["in"]["cos2_mean"] > 1 - 1e-9
    assert out["across"]["mean_deg"] > 90 - 1e-4


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (20, 20)])
def test_top_singular_pairs_match_the_svd(shape):
    g = torch.Generator().manual_seed(0)
    spectrum = torch.logspace(0, -3, min(shape), dtype=torch.float64)  # distinct singular values
    u0, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g, dtype=torch.float64))
    v0, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g, dtype=torch.float64))
    m = u0 @ torch.diag(spectrum) @ v0.t()
    u, vh = top_singular_pairs(m, 4)
    su, _, svh = torch.linalg.svd(m)
    torch.testing.assert_close(u @ u.t(), su[:, :4] @ su[:, :4].t(), atol=1e-9, rtol=0)
    torch.testing.assert_close(vh.t() @ vh, svh[:4].t() @ svh[:4], atol=1e-9, rtol=0)
    # the pairs belong together: u_i σ_i = m v_i
    torch.testing.assert_close(m @ vh.t(), u * spectrum[:4], atol=1e-9, rtol=0)


def test_top_singular_pairs_of_a_rank_deficient_matrix_fall_back_to_the_svd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 12, generator=g, dtype=torch.float64
    )
    u, vh = top_singular_pairs(m, 4)  # rank 2 < r = 4: the last pairs span null directions
    assert torch.allclose(u.t() @ u, torch.eye(4, dtype=torch.float64), atol=1e-9)
    torch.testing.assert_close(u[:, :2] @ u[:, :2].t() @ m, m, atol=1e-9, rtol=0)
