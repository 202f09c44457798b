"""GaLore: AdamW whose moments live in a rank-``r`` projection of each target's gradient.

SCIENCE.md §8 (Zhao et al., "GaLore", ICML 2024). For a target weight ``W`` (m, n) with gradient
``G``, every ``update_proj_gap`` steps the projection is refreshed from the current ``G`` (its
SVD by default, see ``projection`` below); with ``P`` (m, r) the top-``r`` left singular vectors
(projecting rows) or ``Q`` (n, r) the top-``r`` right ones (projecting columns), Adam runs on ``R = Pᵀ G`` (r, n) or ``R = G Q`` (m, r)
and the weight moves by ``-lr · scale · P N`` or ``-lr · scale · N Qᵀ``, ``N`` the bias-corrected
Adam direction of ``R``. Decoupled weight decay acts on the full ``W`` as in AdamW. The side is
fixed by ``proj_type``: ``std`` projects the smaller side (``Q`` when ``m >= n``, else ``P``), so
the moments are ``2 r max(m, n)`` numbers and the projector ``r min(m, n)``, against AdamW's
``2 m n``; ``reverse_std`` the larger side; ``left`` / ``right`` always ``P`` / ``Q``.
The moments are kept across a refresh, as in the reference implementation.

A target with ``rank >= min(m, n)`` has nothing to compress and is updated as plain AdamW (no SVD):
at full rank an SVD basis would only rotate the gradient, and Adam's elementwise normaliser is not
rotation invariant, so "GaLore at full rank" is AdamW only with the identity projection.

Every state entry is a tensor (``step``, ``exp_avg``, ``exp_avg_sq``, ``projector``: the basis with
orthonormal columns, (m, r) or (n, r)), so checkpoints load with ``torch.load(weights_only=True)``
and a resumed fit continues bit for bit. The ``galore-torch`` package (1.0) was evaluated first and
not used: its optimizer keeps a ``GaLoreProjector`` Python object and a Python ``int`` step in the
state, so a checkpoint holding it fails to load with ``weights_only=True``; importing it pulls in
``transformers`` and ``bitsandbytes`` (3.4 s, and a kernel warning on CPU), and its AdamW applies
weight decay after the update with ``eps = 1e-6``, so it is not torch's AdamW at full rank.

The Adam arithmetic itself is torch's (``torch.optim.adam.adam``, fused on CPU/CUDA): plain
parameters step in place; targets step a zero buffer shaped like ``R``, which then holds
``-lr · N`` and is projected back.

How a refresh finds the basis is the group's ``projection`` (:mod:`maskrank.optim.projection`):
``svd`` (exact), ``randomized`` (Halko et al.'s range finder; its Gaussian test matrix is drawn
from a generator seeded with the step count and the parameter's position in the optimizer, so
every DDP rank, and a resumed run, draws the same one) or ``power`` (block power iteration
warm-started from the basis in use; the first basis is an exact SVD).

Adaptive refresh (group key ``refresh_similarity`` = ``τ``, the lazy layer-wise update of
Q-GaLore, Zhang et al. 2024): each target keeps its own gap, ``refresh_factor · update_proj_gap``
with ``refresh_factor`` in {1, 2, 4, 8}. When it is due, the candidate basis is computed and
compared with the one in use by the subspace similarity ``s = ‖P_oldᵀ P_new‖_F² / r``
(:func:`maskrank.metrics.subspace_similarity`). ``s >= τ``: the layer's subspace has not moved, so
the basis in use is kept (the moments stay in the coordinates they were accumulated in) and the
factor doubles, up to :data:`MAX_REFRESH_FACTOR`; ``s < τ``: the candidate replaces it and the
factor returns to 1. The check costs the same decomposition as a refresh; what a stable layer
saves is later decompositions: a layer stable at every check is decomposed at steps 0, g, 3g, 7g,
15g, then every 8g (g = ``update_proj_gap``), instead of every g; its staleness is bounded by 8g
steps. The state of such a target adds three scalars: ``refresh_step`` (the step count at its last
check, int64), ``refresh_factor`` (int64) and ``similarity`` (float32, ``s`` at the last check,
NaN before the first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor
from torch.optim.adam import adam

from maskrank.metrics.subspace import subspace_similarity
from maskrank.optim.projection import (
    PROJECTIONS,
    power_basis,
    randomized_basis,
    svd_basis,
)

ProjType = Literal["std", "reverse_std", "left", "right"]
PROJ_TYPES: tuple[str, ...] = ("std", "reverse_std", "left", "right")
MAX_REFRESH_FACTOR = 8  # adaptive refresh: a stable layer's gap grows to at most 8 update_proj_gap
# the adaptive-refresh scalars of a target's state (integers, and a similarity kept in float32)
REFRESH_STATE: tuple[str, ...] = ("refresh_step", "refresh_factor", "similarity")
_SEED_STRIDE = 1 << 20  # randomized: seed = step count * stride + the parameter's position

__all__ = [
    "MAX_REFRESH_FACTOR",
    "PROJ_TYPES",
    "REFRESH_STATE",
    "GaLoreAdamW",
    "ProjType",
    "projects_rows",
    "state_bytes_formula",
]


def projects_rows(shape: tuple[int, int], proj_type: str) -> bool:
    """True when a weight of ``shape`` (m, n) is projected by ``P`` (m, r): ``R = Pᵀ G``."""
    m, n = shape
    if proj_type == "left":
        return True
    if proj_type == "right":
        return False
    if proj_type == "std":
        return m < n
    return m >= n  # reverse_std


def state_bytes_formula(
    shape: tuple[int, int],
    rank: int | None,
    proj_type: str,
    itemsize: int = 4,
    adaptive: bool = False,
) -> int:
    """Bytes of one weight's optimizer state: moments, projector and the step counter.

    AdamW (``rank`` None or ``>= min(m, n)``): ``2 m n`` moments. GaLore: moments of ``R`` (r, n)
    or (m, r) and the (m, r) or (n, r) basis. The step is one float32 scalar; ``adaptive``
    (``refresh_similarity`` set) adds two int64 counters and a float32 similarity per target.
    """
    m, n = shape
    if rank is None or rank >= min(m, n):
        return 2 * m * n * itemsize + 4
    other = n if projects_rows(shape, proj_type) else m
    basis = m if projects_rows(shape, proj_type) else n
    return (2 * rank * other + rank * basis) * itemsize + 4 + (20 if adaptive else 0)


def _orthonormal_atol(dtype: torch.dtype) -> float:
    """How far from orthonormal a basis stored in ``dtype`` may be (rounding of its entries)."""
    return max(1e-4, 64 * torch.finfo(dtype).eps)


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for the parameter groups that set ``rank``.

    A group with ``rank`` set (an int) must hold 2-D tensors only and may set ``update_proj_gap``
    (default 200), ``scale`` (0.25), ``proj_type`` (``std``), ``projection`` (``svd``; or
    ``randomized``, ``power``) and ``refresh_similarity`` (None; or ``τ`` in (0, 1]: adaptive
    refresh, see the module docs); a group without it (or with ``rank: None``) is plain AdamW.
    Groups carry their own ``lr`` and ``weight_decay`` as usual.

    Args:
        params: parameters or parameter groups.
        lr: default learning rate.
        betas: Adam's moment decay rates.
        eps: added to ``sqrt(v̂)``.
        weight_decay: default decoupled weight decay.
        fused: torch's fused Adam kernel (CPU and CUDA tensors only).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        fused: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            fused=fused,
            rank=None,
            update_proj_gap=200,
            scale=0.25,
            proj_type="std",
            projection="svd",
            refresh_similarity=None,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["rank"] is not None and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("GaLore groups (rank set) must hold 2-D tensors only")
            if group["projection"] not in PROJECTIONS:
                raise ValueError(
                    f"projection = {group['projection']!r}; expected one of {PROJECTIONS}"
                )
            tau = group["refresh_similarity"]
            if tau is not None and not 0.0 < tau <= 1.0:
                raise ValueError(f"refresh_similarity = {tau!r}; expected None or in (0, 1]")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved before these keys existed: today's rule
            group.setdefault("projection", "svd")
            group.setdefault("refresh_similarity", None)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, but the adaptive-refresh scalars keep their saved dtype and device.

        torch casts every state tensor except ``step`` to its parameter's dtype: a bfloat16
        ``refresh_step`` would round to a multiple of 8 above 256.
        """
        super().load_state_dict(state_dict)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        live = [p for g in self.param_groups for p in g["params"]]
        for index, p in zip(saved, live, strict=True):  # the order torch maps them in
            for key in REFRESH_STATE:
                value = state_dict["state"].get(index, {}).get(key)
                if value is not None:
                    self.state[p][key] = value.clone()

    def _init_state(self, p: Tensor, moment_shape: torch.Size, fused: bool) -> dict:
        state = self.state[p]
        if not state:
            # fused kernels want the step on the parameter's device; torch's AdamW does the same
            device = p.device if fused else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state["exp_avg"] = torch.zeros(moment_shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(moment_shape, dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        """One optimizer step; targets refresh their projection when due (see the module docs)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        position = 0  # of the parameter in the optimizer: part of the randomized seed
        for group in self.param_groups:
            self._step_group(group, position)
            position += len(group["params"])
        return loss

    def _new_basis(
        self, group: dict, grad: Tensor, rows: bool, previous: Tensor | None, seed: int
    ) -> Tensor:
        """The basis the group's ``projection`` finds for ``grad`` (m, n): (m, r) or (n, r)."""
        rank, projection = group["rank"], group["projection"]
        if projection == "randomized":
            generator = torch.Generator(device=grad.device).manual_seed(seed)
            return randomized_basis(grad, rank, rows, generator=generator)
        if projection == "power" and previous is not None:
            return power_basis(grad, previous, rows)
        return svd_basis(grad, rank, rows)

    def _refresh(self, group: dict, state: dict, grad: Tensor, rows: bool, position: int) -> None:
        """Set or renew ``state["projector"]`` if due at this step (before its Adam update).

        ``position``: the parameter's index over all groups, which with the step count seeds the
        randomized range finder.
        """
        step, gap = int(state["step"]), group["update_proj_gap"]
        tau = group["refresh_similarity"]
        seed = step * _SEED_STRIDE + position
        previous = state.get("projector")
        if previous is None:
            state["projector"] = self._new_basis(group, grad, rows, None, seed)
        if tau is not None and "refresh_step" not in state:
            # first step, or a state saved without adaptive refresh: as if last checked at the
            # latest multiple of the gap (the step itself for a fresh state)
            state["refresh_step"] = torch.tensor(step - step % gap, dtype=torch.int64)
            state["refresh_factor"] = torch.tensor(1, dtype=torch.int64)
            state["similarity"] = torch.tensor(float("nan"), dtype=torch.float32)
        if previous is None:
            return
        if tau is None:
            if step % gap == 0:
                state["projector"] = self._new_basis(group, grad, rows, previous, seed)
            return
        factor = int(state["refresh_factor"])
        if step < int(state["refresh_step"]) + factor * gap:
            return
        candidate = self._new_basis(group, grad, rows, previous, seed)
        atol = _orthonormal_atol(previous.dtype)
        similarity = subspace_similarity(previous, candidate, atol=atol)
        if similarity >= tau:  # the subspace stayed: keep the basis, look again later
            factor = min(2 * factor, MAX_REFRESH_FACTOR)
        else:
            state["projector"], factor = candidate, 1
        state["refresh_step"].fill_(step)
        state["refresh_factor"].fill_(factor)
        state["similarity"].fill_(similarity)

    def _step_group(self, group: dict, position: int) -> None:
        beta1, beta2 = group["betas"]
        fused, rank = bool(group["fused"]), group["rank"]
        plain: list[list[Tensor]] = [[], [], [], [], []]  # params, grads, m, v, steps
        low: list[list[Tensor]] = [[], [], [], [], []]  # zero buffers, R, m, v, steps
        targets: list[tuple[Tensor, Tensor, bool]] = []  # (param, basis, rows)
        for offset, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            grad = p.grad
            if rank is None or rank >= min(p.shape):
                state = self._init_state(p, p.shape, fused)
                for lst, t in zip(
                    plain,
                    (p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"]),
                    strict=True,
                ):
                    lst.append(t)
                continue
            rows = projects_rows(tuple(p.shape), group["proj_type"])
            moment_shape = (rank, p.shape[1]) if rows else (p.shape[0], rank)
            state = self._init_state(p, torch.Size(moment_shape), fused)
            self._refresh(group, state, grad, rows, position + offset)
            basis = state["projector"]  # (m, r) or (n, r)
            projected = basis.T @ grad if rows else grad @ basis  # (r, n) or (m, r)
            buffer = torch.zeros_like(projected)
            for lst, t in zip(
                low,
                (buffer, projected, state["exp_avg"], state["exp_avg_sq"], state["step"]),
                strict=True,
            ):
                lst.append(t)
            targets.append((p, basis, rows))
        kwargs = dict(
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            eps=group["eps"],
            maximize=False,
            fused=fused or None,
            foreach=None if fused else False,
        )
        if plain[0]:
            params, grads, m, v, steps = plain
            wd = group["weight_decay"]
            adam(
                params,
                grads,
                m,
                v,
                [],
                steps,
                weight_decay=wd,
                decoupled_weight_decay=True,
                **kwargs,
            )
        if targets:
            buffers, projected, m, v, steps = low
            adam(buffers, projected, m, v, [], steps, weight_decay=0.0, **kwargs)
            decay = 1.0 - group["lr"] * group["weight_decay"]
            for (p, basis, rows), delta in zip(targets, buffers, strict=True):  # delta = -lr · N
                # W <- decay · W + scale · (P delta or delta Qᵀ): decay and update in one pass
                if rows:
                    p.addmm_(basis, delta, beta=decay, alpha=group["scale"])
                else:
                    p.addmm_(delta, basis.T, beta=decay, alpha=group["scale"])
