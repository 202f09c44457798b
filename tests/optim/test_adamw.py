from __future__ import annotations

import math

import pytest
import torch

from maskrank.errors import ConfigError
from maskrank.optim import adamw, warmup_cosine, warmup_cosine_schedule


def test_weight_decay_only_on_matrices(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    opt = adamw(model, lr=1e-3, weight_decay=0.05)
    for group in opt.param_groups:
        for p in group["params"]:
            assert (group["weight_decay"] > 0) == (p.ndim >= 2)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_frozen_parameters_are_left_out(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    model.blocks.requires_grad_(False)
    opt = adamw(model, lr=1e-3, weight_decay=0.05)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt for p in model.blocks.parameters())


def test_warmup_then_cosine():
    total, warm = 100, 10
    values = [warmup_cosine(s, warm, total, 0.1) for s in range(total + 5)]
    assert values[0] == pytest.approx(0.1)  # 1/warmup of the peak, never zero
    assert values[warm - 1] == pytest.approx(1.0)
    assert max(values) == pytest.approx(1.0)
    assert all(
        a >= b for a, b in zip(values[warm:], values[warm + 1 :], strict=False)
    )  # monotone decay
    assert values[total] == pytest.approx(0.1) and values[-1] == pytest.approx(0.1)
    mid = warm + (total - warm) // 2
    assert values[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_schedule_drives_the_optimizer_lr():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = warmup_cosine_schedule(opt, total_steps=20, warmup_fraction=0.1)["scheduler"]
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] < 0.01


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(weight_decay=-1.0)])
def test_bad_optimizer_values(tiny_spec, bad):
    kwargs = dict(lr=1e-3, weight_decay=0.05) | bad
    with pytest.raises(ConfigError, match=next(iter(bad))):
        adamw(tiny_spec.build(img_size=32, num_classes=2), **kwargs)


def test_bad_warmup_fraction():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="warmup_fraction"):
        warmup_cosine_schedule(opt, 10, 1.5)
