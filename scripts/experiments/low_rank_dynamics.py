"""Deep linear networks, the ground truth of low-rank training (SCIENCE.md §8; Yaras, Wang, Hu,
Zhu, Balzano & Qu, "The law of parsimony in gradient descent for learning deep linear networks",
2023).

A depth-``L`` factorization ``W_L ⋯ W_1`` (each ``d × d``, ``W_l(0) = ε O_l``, ``O_l`` orthogonal)
is fitted to a rank-``r`` target ``M*`` by full-batch gradient descent on
``½ ‖W_L ⋯ W_1 - M*‖_F²``. The theory predicts that each ``W_l`` changes only inside a subspace
of dimension ``2r``: at most ``2r`` singular values move away from ``ε`` (the others stay equal to
one value ``ρ(t)`` that drifts from ``ε`` as ``ρ ← ρ - η ρ^{2L-1}``), the update ``W_l(t) - W_l(0)``
keeps the same ``2r``-dimensional left singular subspace from the first step to the last, and a
network of width ``2r`` started from ``ε I`` on the compressed target follows the same end-to-end
trajectory.

The compressed network: with ``A_1 = I``, ``A_{l+1} = O_l A_l``, the change of variables
``W'_l = A_{l+1}ᵀ W_l A_l`` turns every factor into ``ε I`` at the start and the target into
``M' = A_{L+1}ᵀ M*``, and gradient descent commutes with it. With ``B`` (d, k) an orthonormal basis
of the column and row spaces of ``M'`` together (``k <= 2r``), the width-``k`` network fits
``Bᵀ M' B`` from ``ε I_k``; lifted back, ``A_{L+1} (B W̃(t) Bᵀ + ρ(t)^L (I - B Bᵀ))`` must equal
the full network's product at every step. Both runs are computed independently and compared.

Per layer and step the script prints: the number of singular values of ``W_l(t)`` that moved
(more than 1 % from ``ε``), the largest principal angle between the update's significant left
singular subspace now and the final top-``2r`` one, and the effective rank (RankMe) of the update;
per step the loss of the full and the compressed network and their end-to-end difference.

    python scripts/experiments/low_rank_dynamics.py --d 64 --r 4 --depth 3 --steps 1000
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from maskrank.metrics import effective_rank, moved_singular_values


@dataclass
class Problem:
    """A rank-``r`` target (d, d) and the orthogonal initial directions of the ``depth`` factors."""

    target: Tensor
    directions: list[Tensor]
    eps: float
    rank: int


def make_problem(
    d: int, r: int, depth: int, eps: float, seed: int = 0, orthogonal_init: bool = True
) -> Problem:
    """Target ``U diag(s) Vᵀ`` with ``s`` from 1 to 0.5, random orthogonal ``O_l`` (float64).

    ``orthogonal_init=False`` (the control) draws ``O_l`` with i.i.d. ``N(0, 1/d)`` entries
    instead: not orthogonal, so the theorem's invariant subspaces do not exist.
    """
    gen = torch.Generator().manual_seed(seed)

    def orthogonal(n: int, k: int) -> Tensor:
        q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
        return q

    s = torch.linspace(1.0, 0.5, r, dtype=torch.float64)
    target = orthogonal(d, r) @ torch.diag(s) @ orthogonal(d, r).T  # (d, d), rank r
    if orthogonal_init:
        directions = [orthogonal(d, d) for _ in range(depth)]
    else:
        directions = [
            torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
            for _ in range(depth)
        ]
    return Problem(target, directions, eps, r)


def final_moved(problem: Problem, lr: float, steps: int) -> list[int]:
    """Moved singular values per layer after ``steps`` of gradient descent (no compression)."""
    start = [problem.eps * o for o in problem.directions]
    factors = list(start)
    for _ in range(steps):
        factors = gd_step(factors, problem.target, lr)
    return [moved_singular_values(w, w0) for w, w0 in zip(factors, start, strict=True)]


def product(factors: list[Tensor]) -> Tensor:
    """``W_L ⋯ W_1`` for ``factors = [W_1, ..., W_L]``."""
    out = factors[0]
    for w in factors[1:]:
        out = w @ out
    return out


def loss(factors: list[Tensor], target: Tensor) -> float:
    """``½ ‖W_L ⋯ W_1 - M‖_F²``."""
    return 0.5 * float((product(factors) - target).square().sum())


def gd_step(factors: list[Tensor], target: Tensor, lr: float) -> list[Tensor]:
    """One gradient-descent step: ``∇_l = (W_L⋯W_{l+1})ᵀ E (W_{l-1}⋯W_1)ᵀ``, ``E`` the residual."""
    n = len(factors)
    error = product(factors) - target
    new = []
    for i, w in enumerate(factors):
        below = product(factors[:i]) if i > 0 else torch.eye(w.shape[1], dtype=w.dtype)
        above = product(factors[i + 1 :]) if i < n - 1 else torch.eye(w.shape[0], dtype=w.dtype)
        new.append(w - lr * (above.T @ error @ below.T))
    return new


def compression(problem: Problem) -> tuple[Tensor, Tensor, Tensor]:
    """``(A_{L+1}, B, Bᵀ M' B)``: the output rotation, the basis (d, k) and the compressed target."""
    rotation = torch.eye(problem.target.shape[0], dtype=torch.float64)
    for o in problem.directions:
        rotation = o @ rotation  # A_{l+1} = O_l A_l
    rotated = rotation.T @ problem.target  # M' = A_{L+1}ᵀ M*
    u, s, vh = torch.linalg.svd(rotated)
    spans = torch.cat([u[:, : problem.rank], vh[: problem.rank].T], dim=1)  # (d, 2r)
    q, sv, _ = torch.linalg.svd(spans, full_matrices=False)
    basis = q[:, : int((sv > 1e-10 * sv[0]).sum())]  # (d, k), k <= 2r
    return rotation, basis, basis.T @ rotated @ basis


def angle_to(update: Tensor, final_basis: Tensor) -> float:
    """Largest principal angle (degrees) between ``update``'s significant left singular subspace
    (singular values above ``1e-3`` of the largest) and the span of ``final_basis`` (d, k)."""
    u, s, _ = torch.linalg.svd(update)
    if float(s[0]) == 0.0:
        return 0.0
    k = min(int((s > 1e-3 * s[0]).sum()), final_basis.shape[1])
    cosines = torch.linalg.svdvals(u[:, :k].T @ final_basis)  # (k,)
    return math.degrees(math.acos(min(1.0, float(cosines.min()))))


@dataclass
class Row:
    """One measured step: losses, the end-to-end gap, and per-layer moved/angle/erank."""

    step: int
    loss_full: float
    loss_compressed: float
    gap: float  # ‖full product - lifted compressed product‖_F / ‖M*‖_F
    moved: list[int]
    angle: list[float]
    erank: list[float]


def run(problem: Problem, lr: float, steps: int, report: list[int]) -> list[Row]:
    """Train the full and the compressed network side by side; measure at the ``report`` steps."""
    d, depth = problem.target.shape[0], len(problem.directions)
    full = [problem.eps * o for o in problem.directions]
    start = [w.clone() for w in full]
    rotation, basis, small_target = compression(problem)
    k = basis.shape[1]
    small = [problem.eps * torch.eye(k, dtype=torch.float64) for _ in range(depth)]
    rho = problem.eps
    trajectory: dict[int, tuple[list[Tensor], list[Tensor], float]] = {}
    for t in range(steps + 1):
        if t in report:
            trajectory[t] = ([w.clone() for w in full], [w.clone() for w in small], rho)
        if t < steps:
            full = gd_step(full, problem.target, lr)
            small = gd_step(small, small_target, lr)
            rho = rho - lr * rho ** (2 * depth - 1)  # the complement block, ρ I in every layer
    final = trajectory[max(report)][0]
    final_bases = []
    for w, w0 in zip(final, start, strict=True):
        u, _, _ = torch.linalg.svd(w - w0)
        final_bases.append(u[:, : 2 * problem.rank])
    rows = []
    complement = torch.eye(d, dtype=torch.float64) - basis @ basis.T
    scale = float(problem.target.norm())
    for t in sorted(trajectory):
        ws, smalls, r_t = trajectory[t]
        lifted = rotation @ (basis @ product(smalls) @ basis.T + r_t**depth * complement)
        updates = [w - w0 for w, w0 in zip(ws, start, strict=True)]
        rows.append(
            Row(
                step=t,
                loss_full=loss(ws, problem.target),
                loss_compressed=loss(smalls, small_target) + 0.5 * (d - k) * r_t ** (2 * depth),
                gap=float((product(ws) - lifted).norm()) / scale,
                moved=[moved_singular_values(w, w0) for w, w0 in zip(ws, start, strict=True)],
                angle=[angle_to(u, b) for u, b in zip(updates, final_bases, strict=True)],
                erank=[effective_rank(u) if bool(u.any()) else 0.0 for u in updates],
            )
        )
    return rows


def format_table(rows: list[Row], rank: int) -> str:
    """A markdown table; the theory's prediction in the header."""
    depth = len(rows[0].moved)
    head = ["step", "loss full", "loss width-2r", "‖Δ end-to-end‖/‖M*‖"]
    for layer in range(1, depth + 1):
        head += [f"W{layer} moved σ", f"W{layer} angle°", f"W{layer} erank ΔW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pred = ["theory", "=", "= loss full", "0"] + [f"≤ {2 * rank}", "0", f"≤ {2 * rank}"] * depth
    lines.append("| " + " | ".join(pred) + " |")
    for r in rows:
        cells = [str(r.step), f"{r.loss_full:.3e}", f"{r.loss_compressed:.3e}", f"{r.gap:.1e}"]
        for m, a, e in zip(r.moved, r.angle, r.erank, strict=True):
            cells += [str(m), f"{a:.1e}", f"{e:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=64, help="width of every factor")
    parser.add_argument("--r", type=int, default=4, help="rank of the target")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.05, help="scale of the orthogonal init")
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.r < 1 or 2 * args.r > args.d:
        parser.error("need 1 <= r and 2r <= d")
    problem = make_problem(args.d, args.r, args.depth, args.eps, args.seed)
    report = sorted({0, 1, 10, 30, 100, 200, 300, 500, args.steps} & set(range(args.steps + 1)))
    rows = run(problem, args.lr, args.steps, report)
    print(f"d={args.d} r={args.r} depth={args.depth} eps={args.eps} lr={args.lr} seed={args.seed}")
    print(format_table(rows, args.r))
    control = make_problem(args.d, args.r, args.depth, args.eps, args.seed, orthogonal_init=False)
    moved = final_moved(control, args.lr, args.steps)
    print(
        f"\ncontrol, N(0, 1/d) init instead of orthogonal: moved σ per layer at step {args.steps}"
    )
    print(f"{moved} (no 2r bound expected)")


if __name__ == "__main__":
    main()
