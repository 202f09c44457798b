"""GaLore AdamW (SCIENCE.md §8): AdamW at full rank, updates inside the projection, state bytes,
tensor-only state that round-trips through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io

import pytest
import torch

from maskrank.optim import (
    GaLoreAdamW,
    OptimizerSpec,
    adamw,
    build_optimizer,
    galore_targets,
    state_bytes_formula,
)
from maskrank.optim.galore import projects_rows


def _train(model, optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        images = torch.randn(4, 3, 32, 32, generator=gen)
        labels = torch.randint(0, 4, (4,), generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


@pytest.mark.parametrize("layer_decay", [1.0, 0.75])
def test_full_rank_galore_follows_adamw(tiny_spec, layer_decay):
    torch.manual_seed(0)
    reference = tiny_spec.build(img_size=32, num_classes=4)
    model = tiny_spec.build(img_size=32, num_classes=4)
    model.load_state_dict(reference.state_dict())
    lr, wd, betas = 3e-3, 0.05, (0.9, 0.95)
    ref_opt = adamw(reference, lr, wd, betas, layer_decay=layer_decay)
    spec = OptimizerSpec(name="galore_adamw", rank=64)  # the smaller side of every target (dim 64)
    opt = build_optimizer(model, spec, lr, wd, betas, layer_decay=layer_decay)
    assert isinstance(opt, GaLoreAdamW)
    assert sum(g["rank"] is not None for g in opt.param_groups) > 0
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _train(reference, ref_opt, 5)
    _train(model, opt, 5)
    ref_state = reference.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ref_state[name], rtol=0, atol=1e-6, msg=name)
    moved = sum(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert moved > 10  # the comparison is not between untouched weights


@pytest.mark.parametrize(
    "shape, proj_type", [((48, 16), "std"), ((16, 48), "std"), ((24, 24), "left")]
)
def test_low_rank_step_stays_in_the_projection(shape, proj_type):
    torch.manual_seed(0)
    rank, lr, scale, eps = 3, 1e-2, 0.5, 1e-8
    weight = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))  # exact differences
    start = weight.detach().clone()
    opt = GaLoreAdamW(
        [{"params": [weight], "rank": rank, "scale": scale, "proj_type": proj_type}],
        lr=lr,
        eps=eps,
        weight_decay=0.0,
    )
    weight.grad = torch.randn(shape, dtype=torch.float64)
    grad = weight.grad.clone()
    opt.step()
    basis = opt.state[weight]["projector"]
    rows = projects_rows(shape, proj_type)
    delta = (weight.detach() - start).double()
    b = basis.double()
    inside = b @ (b.T @ delta) if rows else (delta @ b) @ b.T
    assert float(delta.norm()) > 1e-3
    torch.testing.assert_close(inside, delta, rtol=0, atol=1e-12)  # no component outside
    # the basis is the gradient's top-r singular subspace, and the first step is Adam's sign step
    u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
    top = u[:, :rank] if rows else vh[:rank].T
    assert float((top.T @ b).square().sum()) == pytest.approx(rank, abs=1e-6)
    projected = b.T @ grad.double() if rows else grad.double() @ b
    direction = projected / (projected.abs() + eps)
    expected = -lr * scale * (b @ direction if rows else direction @ b.T)
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)


def test_projection_refreshes_every_gap_steps():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(20, 10))
    opt = GaLoreAdamW([{"params": [weight], "rank": 2, "update_proj_gap": 3}], lr=1e-3)
    bases = []
    for _ in range(7):
        weight.grad = torch.randn(20, 10)
        opt.step()
        bases.append(opt.state[weight]["projector"].clone())
    same = [torch.equal(bases[i], bases[i + 1]) for i in range(6)]
    # refreshed at steps 0, 3, 6 (counted before the step)
    assert same == [True, True, False, True, True, False]


def test_state_bytes_match_the_formula(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    spec = OptimizerSpec(name="galore_adamw", rank=8)
    opt = build_optimizer(model, spec, 1e-3, 0.05, (0.9, 0.999))
    _train(model, opt, 1)
    targets = {id(p) for p in galore_targets(model, spec).values()}
    measured = expected = 0
    for p in model.parameters():
        measured += sum(t.numel() * t.element_size() for t in opt.state[p].values())
        rank = spec.rank if id(p) in targets else None
        shape = tuple(p.shape) if p.ndim == 2 else (p.numel(), 1)
        expected += state_bytes_formula(shape, rank, spec.proj_type)
    assert measured == expected
    ref = adamw(model, 1e-3, 0.05)
    _train(model, ref, 1)
    adam_bytes = sum(t.numel() * t.element_size() for s in ref.state.values() for t in s.values())
    assert measured < adam_bytes


def test_state_is_tensors_only_and_resumes_exactly():
    torch.manual_seed(0)
    shape = (24, 12)

    def make(weight):
        return GaLoreAdamW([{"params": [weight], "rank": 4, "update_proj_gap": 2}], lr=1e-2)

    grads = [torch.randn(shape) for _ in range(6)]
    a = torch.nn.Parameter(torch.randn(shape))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = make(a)
    for g in grads:
        a.grad = g.clone()
        opt_a.step()
    opt_b = make(b)
    for g in grads[:3]:
        b.grad = g.clone()
        opt_b.step()
    buffer = io.BytesIO()
    torch.save(opt_b.state_dict(), buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in restored["state"][0].values())
    opt_c = make(b)
    opt_c.load_state_dict(restored)
    for g in grads[3:]:
        b.grad = g.clone()
        opt_c.step()
    assert torch.equal(a, b)
