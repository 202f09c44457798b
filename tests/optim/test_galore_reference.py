"""Low-rank GaLore against a reference GaLore-AdamW written here from the paper (SCIENCE.md §8).

The reference follows Zhao et al. 2024 (Algorithm 2) with maskrank's documented conventions
(``maskrank/optim/galore.py``), each of which changes the result well above the tolerance
(:func:`test_each_convention_matters`):

* side: ``proj_type: std`` projects the smaller side: ``P`` (m, r), the top-``r`` left singular
  vectors of ``G``, when m < n (``R = Pᵀ G``, (r, n)); ``Q`` (n, r), the top-``r`` right ones, when
  m >= n (``R = G Q``, (m, r));
* refresh: at every step ``t`` (counted from 0) with ``t % update_proj_gap == 0``, from the SVD of
  that step's gradient, before the moments are updated; the basis is ``torch.linalg.svd``'s, signs
  included, since the carried moments live in its coordinates;
* moments: Adam's ``M``, ``V`` of ``R`` are kept across a refresh, and the bias correction uses the
  step count since the start (never reset);
* update: ``N = M̂ / (sqrt(V̂) + eps)`` with ``M̂ = M / (1 - β1^t)``, ``V̂ = V / (1 - β2^t)``,
  ``t`` the 1-based step; ``W <- (1 - lr·wd) W - lr · scale · P N`` (or ``N Qᵀ``): the decoupled
  decay acts on the weight before the step, as torch's AdamW does;
* everything else (biases, the head) is plain AdamW; the optimizer's groups come from
  :func:`maskrank.optim.spec.build_optimizer`, so biases are not decayed.

The ``galore-torch`` package (the paper's code, 1.0) is compared too when it is importable; it
decays after the step and adds ``eps`` to ``sqrt(V)`` before bias correction, so that comparison
runs with ``weight_decay = 0`` and a negligible ``eps``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from maskrank.optim.spec import OptimizerSpec, build_optimizer

RANK, GAP, STEPS = 3, 7, 24  # refreshes at steps 0, 7, 14 and 21
LR, WD, BETAS, EPS, SCALE = 1e-2, 0.1, (0.9, 0.999), 1e-8, 0.25
TARGETS = ("fc1.weight", "fc2.weight")
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only contend


class Net(nn.Module):
    """10 -> 6 -> 12 -> 3 with tanh: fc1.weight (6, 10) is projected on the left (m < n),
    fc2.weight (12, 6) on the right (m >= n); the head is a non-target 2-D weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 6)
        self.fc2 = nn.Linear(6, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _problem(dtype: torch.dtype) -> tuple[Net, Tensor, Tensor]:
    """The network and a fixed regression batch: x (32, 10), y (32, 3)."""
    torch.manual_seed(0)
    net = Net().to(dtype)
    x = torch.randn(32, 10, dtype=dtype)
    y = torch.randn(32, 3, dtype=dtype)
    return net, x, y


def _loss(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(net(x), y)


def _train(net: Net, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    for _ in range(STEPS):
        optimizer.zero_grad()
        _loss(net, x, y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _maskrank(
    dtype: torch.dtype, fused: bool, weight_decay: float = WD, eps: float = EPS
) -> tuple[dict[str, Tensor], dict]:
    """The final parameters and the optimizer state (by name) of maskrank's GaLore run, built
    as the tasks build it (:func:`build_optimizer`: weight-decay groups, GaLore targets)."""
    net, x, y = _problem(dtype)
    settings = dict(rank=RANK, update_proj_gap=GAP, scale=SCALE, targets=["fc1", "fc2"])
    spec = OptimizerSpec(name="galore_adamw", **settings)
    optimizer = build_optimizer(net, spec, LR, weight_decay, BETAS, fused)
    for group in optimizer.param_groups:
        group["eps"] = eps
    final = _train(net, x, y, optimizer)
    state = {name: optimizer.state[p] for name, p in net.named_parameters()}
    return final, state


def reference(
    dtype: torch.dtype = torch.float64,
    weight_decay: float = WD,
    eps: float = EPS,
    reset_moments: bool = False,
    decay_after_step: bool = False,
    swap_sides: bool = False,
    refresh: Callable[[int], bool] = lambda t: t % GAP == 0,
) -> dict[str, Tensor]:
    """GaLore-AdamW as the module docstring states it; the keyword arguments switch one
    convention to another (for :func:`test_each_convention_matters`)."""
    net, x, y = _problem(dtype)
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    moments: dict[str, tuple[Tensor, Tensor]] = {}
    bases: dict[str, Tensor] = {}
    beta1, beta2 = BETAS
    for t in range(STEPS):
        loss = _loss_functional(net, params, x, y)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        with torch.no_grad():
            for name, w in params.items():
                g = grads[name]
                if name in TARGETS:
                    rows = (w.shape[0] < w.shape[1]) != swap_sides  # P (m, r): smaller side
                    if refresh(t) or name not in bases:
                        u, _, vh = torch.linalg.svd(g, full_matrices=False)
                        bases[name] = u[:, :RANK] if rows else vh[:RANK].T
                        if reset_moments:
                            moments.pop(name, None)
                    basis = bases[name]
                    g = basis.T @ g if rows else g @ basis  # R: (r, n) or (m, r)
                m, v = moments.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                moments[name] = (m, v)
                k = t + 1
                n = (m / (1 - beta1**k)) / ((v / (1 - beta2**k)).sqrt() + eps)
                if name in TARGETS:
                    n = SCALE * (basis @ n if rows else n @ basis.T)
                wd = weight_decay if name.endswith(".weight") else 0.0  # biases: no decay
                if decay_after_step:
                    w.sub_(LR * n).mul_(1 - LR * wd)
                else:
                    w.mul_(1 - LR * wd).sub_(LR * n)
    return {k: v.detach() for k, v in params.items()}


def _loss_functional(net: Net, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(torch.func.functional_call(net, params, (x,)), y)


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach-off", "fused"])
def test_low_rank_galore_equals_the_reference(fused):
    final, state = _maskrank(torch.float64, fused)
    # the projected path ran: a (6, 3) basis for both targets, none elsewhere
    assert {n for n, s in state.items() if "projector" in s} == set(TARGETS)
    assert all(state[n]["projector"].shape == (6, RANK) for n in TARGETS)
    assert all(int(s["step"]) == STEPS for s in state.values())
    assert _max_diff(final, reference()) < 1e-9  # float64: both agree to round-off


def test_each_convention_matters():
    """Every stated convention moves the weights far more than the tolerance above, so the
    comparison pins each of them; and the training moved the weights at all."""
    final, _ = _maskrank(torch.float64, fused=False)
    initial = {k: v.detach() for k, v in _problem(torch.float64)[0].named_parameters()}
    assert _max_diff(final, initial) > 0.1
    variants = {
        "moments reset at a refresh": dict(reset_moments=True),
        "weight decay after the step": dict(decay_after_step=True),
        "the larger side projected": dict(swap_sides=True),
        "no refresh after step 0": dict(refresh=lambda t: t == 0),
        "refresh one step late": dict(refresh=lambda t: t % GAP == 1),
        "no weight decay": dict(weight_decay=0.0),
    }
    for what, kwargs in variants.items():
        assert _max_diff(final, reference(**kwargs)) > 1e-5, what


def test_low_rank_galore_equals_galore_torch():
    """maskrank's optimizer against the paper's own code, where their conventions coincide."""
    galore_torch = pytest.importorskip("galore_torch")
    eps = 1e-12  # galore-torch adds eps before the bias correction: make it negligible
    final, _ = _maskrank(torch.float32, fused=False, weight_decay=0.0, eps=eps)
    net, x, y = _problem(torch.float32)
    targets = [p for n, p in net.named_parameters() if n in TARGETS]
    others = [p for n, p in net.named_parameters() if n not in TARGETS]
    groups = [
        {"params": others},
        {"params": targets, "rank": RANK, "update_proj_gap": GAP, "scale": SCALE,
         "proj_type": "std"},
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its AdamW's deprecation notice
        optimizer = galore_torch.GaLoreAdamW(groups, lr=LR, betas=BETAS, eps=eps, weight_decay=0)
    theirs = _train(net, x, y, optimizer)
    assert _max_diff(final, theirs) < 1e-6  # float32 (galore-torch takes the SVD in float32)
