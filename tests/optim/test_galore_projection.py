"""GaLore's projection methods and adaptive refresh (SCIENCE.md §8): the randomized range finder
and warm-started block power iteration find a known top-r subspace, power iteration keeps an exact
basis as it is, adaptive refresh keeps a basis exactly when the new one is within the threshold,
the state resumes bit for bit, and a bad ``projection`` is one line naming the flag."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from maskrank.callbacks import GaLoreMonitor
from maskrank.cli import main
from maskrank.metrics import subspace_similarity
from maskrank.optim import (
    GaLoreAdamW,
    OptimizerSpec,
    build_optimizer,
    power_basis,
    randomized_basis,
    svd_basis,
)
from maskrank.optim.galore import MAX_REFRESH_FACTOR
from testkit.resume import tiny_mae_model, write_config


def _orthogonal(d: int, k: int, gen: torch.Generator) -> Tensor:
    """A (d, k) float64 matrix with orthonormal columns."""
    return torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]


def _planted(m: int, n: int, top: Tensor, tail: Tensor, seed: int = 0) -> tuple[Tensor, ...]:
    """G = U diag(s) Vᵀ (m, n) in float32 with s = (top, tail), and its U (m, r), V (n, r)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, v = _orthogonal(m, k, gen), _orthogonal(n, k, gen)
    s = torch.cat([top, tail]).double()
    r = top.numel()
    return ((u * s) @ v.T).float(), u[:, :r], v[:, :r]


# top 8 spanning three decades, then a spectral gap of 10: (σ_8 / σ_1)³ = 1e-9 is below float32's
# round-off, so a range finder that does not re-orthonormalise between products loses directions
WIDE = (torch.logspace(0, -3, 8), torch.logspace(-4, -6, 40))
# gradient-like: the top 8 within a factor 20, then a gap of 10
NARROW = (torch.logspace(0, -1.3, 8), torch.logspace(-2.3, -4, 40))


@pytest.mark.parametrize("rows", [True, False], ids=["left", "right"])
@pytest.mark.parametrize("method", ["randomized", "power"])
def test_randomized_and_power_find_a_known_top_subspace(method, rows):
    top, tail = WIDE if method == "randomized" else NARROW
    grad, u, v = _planted(48, 80, top, tail) if rows else _planted(80, 48, top, tail)
    truth = u if rows else v  # the projected side: (48, 8)
    gen = torch.Generator().manual_seed(1)
    if method == "randomized":
        basis = randomized_basis(grad, 8, rows, generator=gen)
    else:  # from a random start, i.e. no warm start at all
        start = _orthogonal(48, 8, gen).float()
        basis = power_basis(grad, start, rows, iters=3)
    assert basis.shape == truth.shape and basis.dtype == grad.dtype
    assert subspace_similarity(truth, basis) > 0.999
    # the exact SVD sees the same subspace, and a random one does not
    assert subspace_similarity(truth, svd_basis(grad, 8, rows)) > 0.999
    assert subspace_similarity(truth, _orthogonal(48, 8, gen)) < 0.5


def test_power_iteration_from_the_exact_basis_is_a_fixed_point():
    grad, _, _ = _planted(48, 64, *NARROW)
    for rows in (True, False):
        exact = svd_basis(grad, 8, rows)
        # the same vectors with the same signs, not only the same subspace: the Adam moments kept
        # across a refresh are coordinates in this basis
        torch.testing.assert_close(power_basis(grad, exact, rows), exact, rtol=0, atol=1e-5)


def _rotated(u0: Tensor, w: Tensor, theta: float) -> Tensor:
    """``cos θ U0 + sin θ W``: orthonormal, with similarity ``cos² θ`` to ``U0`` (W ⟂ U0)."""
    return math.cos(theta) * u0 + math.sin(theta) * w


def _adaptive(weight: torch.nn.Parameter, tau: float, gap: int = 2) -> GaLoreAdamW:
    group = {"params": [weight], "rank": 3, "update_proj_gap": gap, "refresh_similarity": tau}
    return GaLoreAdamW([group], lr=1e-3)


def _left_gradient(u: Tensor, gen: torch.Generator, n: int = 40) -> Tensor:
    """A (m, n) gradient whose top-3 left subspace is span(u): fresh right vectors each step."""
    return ((u * torch.tensor([3.0, 2.0, 1.0], dtype=u.dtype)) @ _orthogonal(n, 3, gen).T).float()


def test_adaptive_refresh_keeps_a_fixed_subspace_and_doubles_the_gap():
    gen = torch.Generator().manual_seed(0)
    u = _orthogonal(12, 3, gen)
    weight = torch.nn.Parameter(torch.zeros(12, 40))  # m < n: projected on the left, P (12, 3)
    opt = _adaptive(weight, tau=0.99)
    checks, first = [], None
    for step in range(48):
        weight.grad = _left_gradient(u, gen)
        opt.step()
        state = opt.state[weight]
        first = state["projector"].clone() if first is None else first
        if int(state["refresh_step"]) == step and step > 0:
            checks.append((step, int(state["refresh_factor"])))
            assert float(state["similarity"]) >= 0.99
        assert torch.equal(state["projector"], first)  # never replaced
    # gap 2: checks after 2, then 4, 8, 16 steps; then 8 x 2 at most
    assert checks == [(2, 2), (6, 4), (14, 8), (30, MAX_REFRESH_FACTOR), (46, MAX_REFRESH_FACTOR)]


@pytest.mark.parametrize("margin", [-1e-3, 1e-3], ids=["tau below: keep", "tau above: replace"])
def test_adaptive_refresh_replaces_exactly_below_the_threshold(margin):
    gen = torch.Generator().manual_seed(0)
    basis = _orthogonal(12, 6, gen)
    u0, w = basis[:, :3], basis[:, 3:]
    theta = 0.3  # every later gradient's subspace is U0 rotated by θ: similarity cos² θ
    similarity = math.cos(theta) ** 2
    weight = torch.nn.Parameter(torch.zeros(12, 40))
    opt = _adaptive(weight, tau=similarity + margin)
    weight.grad = _left_gradient(u0, gen)
    opt.step()
    before = opt.state[weight]["projector"].clone()
    for _ in range(2):  # the check is due at the third step (gap 2)
        weight.grad = _left_gradient(_rotated(u0, w, theta), gen)
        opt.step()
    state = opt.state[weight]
    assert int(state["refresh_step"]) == 2
    assert float(state["similarity"]) == pytest.approx(similarity, abs=1e-5)
    kept = torch.equal(state["projector"], before)
    assert kept == (margin < 0)
    assert int(state["refresh_factor"]) == (2 if kept else 1)
    if not kept:  # replaced by the rotated subspace itself
        assert subspace_similarity(_rotated(u0, w, theta), state["projector"]) > 0.9999


def test_adaptive_refresh_follows_a_rotating_subspace_every_gap():
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(12, 40))
    opt = _adaptive(weight, tau=0.9)
    bases = []
    for _ in range(9):
        weight.grad = _left_gradient(_orthogonal(12, 3, gen), gen)  # a new subspace every step
        opt.step()
        bases.append(opt.state[weight]["projector"].clone())
        assert int(opt.state[weight]["refresh_factor"]) == 1
    changed = [not torch.equal(bases[i], bases[i + 1]) for i in range(8)]
    assert changed == [False, True] * 4  # replaced at steps 2, 4, 6, 8: the base gap


def _stream(shape: tuple[int, int], steps: int) -> list[Tensor]:
    """Gradients whose subspace drifts slowly: some checks keep the basis, some replace it."""
    gen = torch.Generator().manual_seed(0)
    base, drift = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return [base + 0.3 * t * drift + 0.1 * torch.randn(shape, generator=gen) for t in range(steps)]


@pytest.mark.parametrize("tau", [None, 0.8], ids=["fixed gap", "adaptive"])
@pytest.mark.parametrize("projection", ["svd", "randomized", "power"])
def test_state_dict_round_trip_resumes_bit_for_bit(projection, tau):
    shapes = [(24, 12), (10, 30)]  # projected on the right and on the left
    grads = [_stream(shape, 16) for shape in shapes]

    def make(weights):
        group = {"params": weights, "rank": 4, "update_proj_gap": 2, "projection": projection}
        return GaLoreAdamW([{**group, "refresh_similarity": tau}], lr=1e-2)

    decisions = set()  # (kept?) at each adaptive check, uninterrupted run

    def run(opt, weights, steps):
        for step in steps:
            for w, g in zip(weights, grads, strict=True):
                w.grad = g[step].clone()
            opt.step()
            for w in weights:
                state = opt.state[w]
                if tau is not None and step > 0 and int(state["refresh_step"]) == step:
                    decisions.add(int(state["refresh_factor"]) > 1)

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    b = [torch.nn.Parameter(w.detach().clone()) for w in a]
    opt_a = make(a)
    run(opt_a, a, range(16))
    opt_b = make(b)
    run(opt_b, b, range(7))
    buffer = io.BytesIO()
    torch.save(opt_b.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a resumed process's global RNG is not the interrupted one's
    opt_c = make(b)
    opt_c.load_state_dict(torch.load(buffer, weights_only=True))
    run(opt_c, b, range(7, 16))
    for wa, wb in zip(a, b, strict=True):
        assert torch.equal(wa, wb)
    for wa, wb in zip(a, b, strict=True):
        sa, sc = opt_a.state[wa], opt_c.state[wb]
        assert sa.keys() == sc.keys()
        for key in sa:
            assert sa[key].dtype == sc[key].dtype, key
            torch.testing.assert_close(sa[key], sc[key], rtol=0, atol=0, equal_nan=True)
    # the drifting stream makes both decisions: some checks keep the basis, some replace it
    assert decisions == ({True, False} if tau is not None else set())


def test_refresh_counters_stay_integers_through_a_bfloat16_checkpoint():
    weight = torch.nn.Parameter(torch.randn(10, 30, dtype=torch.bfloat16))
    opt = _adaptive(weight, tau=0.5)
    weight.grad = torch.randn(10, 30, dtype=torch.bfloat16)
    opt.step()
    opt.state[weight]["refresh_step"].fill_(301)  # not a bfloat16 number
    loaded = _adaptive(weight, tau=0.5)
    loaded.load_state_dict(opt.state_dict())
    state = loaded.state[weight]
    assert state["refresh_step"].dtype == torch.int64 and int(state["refresh_step"]) == 301
    assert state["projector"].dtype == torch.bfloat16


def test_the_spec_reaches_every_galore_group(tiny_spec):
    torch.manual_seed(0)
    model = tiny_spec.build(img_size=32, num_classes=4)
    spec = OptimizerSpec(
        name="galore_adamw", rank=8, update_proj_gap=1, projection="power", refresh_similarity=0.5
    )
    opt = build_optimizer(model, spec, 1e-3, 0.05, (0.9, 0.999))
    galore = [g for g in opt.param_groups if g["rank"] is not None]
    assert galore and all(g["projection"] == "power" for g in galore)
    assert all(g["refresh_similarity"] == 0.5 for g in galore)
    plain = [g for g in opt.param_groups if g["rank"] is None]
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
    projected = [s for s in opt.state.values() if "projector" in s]
    assert len(projected) == 8 and all(int(s["refresh_step"]) == 1 for s in projected)
    assert all("refresh_step" not in opt.state[p] for g in plain for p in g["params"])


BAD = {
    "unknown projection": (
        "{name: galore_adamw, projection: qr}",
        ["model.init_args.optimizer.projection = 'qr'", "svd, randomized, power"],
    ),
    "unknown proj_type": (
        "{name: galore_adamw, proj_type: rows}",
        ["model.init_args.optimizer.proj_type = 'rows'", "std, reverse_std, left, right"],
    ),
    "similarity above 1": (
        "{name: galore_adamw, refresh_similarity: 1.5}",
        ["model.init_args.optimizer.refresh_similarity = 1.5", "(0, 1]"],
    ),
    "projection without galore": (
        "{name: adamw, projection: power}",
        ["model.init_args.optimizer.projection = 'power'", "galore_adamw only"],
    ),
}


@pytest.mark.parametrize("value, expect", BAD.values(), ids=BAD.keys())
def test_bad_projection_is_one_line_naming_the_flag(tmp_path, capsys, value, expect):
    runs = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", runs, tiny_mae_model())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), "--model.init_args.optimizer", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    for needle in expect:
        assert needle in err[0], (needle, err[0])
    assert not runs.exists() or not list(runs.rglob("*.ckpt"))


class _Logger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, dict(metrics)))


def test_monitor_logs_the_similarity_of_each_adaptive_check_and_only_then():
    """GaLoreMonitor reports the optimizer's own comparison at each check of a layer (its gap
    doubles while the subspace stays), not a 1.0 at every multiple of update_proj_gap."""
    gen = torch.Generator().manual_seed(0)
    u = _orthogonal(12, 3, gen)
    module = torch.nn.Linear(40, 12, bias=False)
    weight = module.weight  # (12, 40): projected on the left
    opt = _adaptive(weight, tau=0.99)
    logger = _Logger()
    trainer = SimpleNamespace(
        is_global_zero=True, optimizers=[opt], loggers=[logger], global_step=0
    )
    monitor = GaLoreMonitor(every_n_steps=1000)
    for step in range(32):
        weight.grad = _left_gradient(u, gen)
        opt.step()
        trainer.global_step = step + 1
        monitor.on_train_batch_end(trainer, module, None, None, step)
    logged = [
        (s, m["galore/weight/projection_similarity"])
        for s, m in logger.logged
        if "galore/weight/projection_similarity" in m
    ]
    assert [s - 1 for s, _ in logged] == [2, 6, 14, 30]  # the checks, not every 2nd step
    assert all(value >= 0.99 for _, value in logged)
