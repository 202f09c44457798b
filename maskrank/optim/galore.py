"""GaLore: AdamW whose moments live in a rank-``r`` projection of each target's gradient.

SCIENCE.md §8 (Zhao et al., "GaLore", ICML 2024). For a target weight ``W`` (m, n) with gradient
``G``, every ``update_proj_gap`` steps the projection is refreshed from the SVD of the current
``G``; with ``P`` (m, r) the top-``r`` left singular vectors (projecting rows) or ``Q`` (n, r) the
top-``r`` right ones (projecting columns), Adam runs on ``R = Pᵀ G`` (r, n) or ``R = G Q`` (m, r)
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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor
from torch.optim.adam import adam

ProjType = Literal["std", "reverse_std", "left", "right"]
PROJ_TYPES: tuple[str, ...] = ("std", "reverse_std", "left", "right")

__all__ = ["PROJ_TYPES", "GaLoreAdamW", "ProjType", "projects_rows", "state_bytes_formula"]


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
    shape: tuple[int, int], rank: int | None, proj_type: str, itemsize: int = 4
) -> int:
    """Bytes of one weight's optimizer state: moments, projector and the step counter.

    AdamW (``rank`` None or ``>= min(m, n)``): ``2 m n`` moments. GaLore: moments of ``R`` (r, n)
    or (m, r) and the (m, r) or (n, r) basis. The step is one float32 scalar.
    """
    m, n = shape
    if rank is None or rank >= min(m, n):
        return 2 * m * n * itemsize + 4
    other = n if projects_rows(shape, proj_type) else m
    basis = m if projects_rows(shape, proj_type) else n
    return (2 * rank * other + rank * basis) * itemsize + 4


@torch.no_grad()
def top_basis(grad: Tensor, rank: int, rows: bool) -> Tensor:
    """Top-``rank`` left (``rows``) or right singular vectors of ``grad`` (m, n) as columns."""
    # half-precision gradients are decomposed in float32; float32/float64 as they are
    work = grad.float() if grad.element_size() < 4 else grad
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    basis = u[:, :rank] if rows else vh[:rank].T  # (m, r) or (n, r)
    return basis.to(grad.dtype).contiguous()


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for the parameter groups that set ``rank``.

    A group with ``rank`` set (an int) must hold 2-D tensors only and may set ``update_proj_gap``
    (default 200), ``scale`` (0.25) and ``proj_type`` (``std``); a group without it (or with
    ``rank: None``) is plain AdamW. Groups carry their own ``lr`` and ``weight_decay`` as usual.

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
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["rank"] is not None and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("GaLore groups (rank set) must hold 2-D tensors only")

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
        """One optimizer step; targets refresh their projection when ``step % gap == 0``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        fused, rank = bool(group["fused"]), group["rank"]
        plain: list[list[Tensor]] = [[], [], [], [], []]  # params, grads, m, v, steps
        low: list[list[Tensor]] = [[], [], [], [], []]  # zero buffers, R, m, v, steps
        targets: list[tuple[Tensor, Tensor, bool]] = []  # (param, basis, rows)
        for p in group["params"]:
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
            if "projector" not in state or int(state["step"]) % group["update_proj_gap"] == 0:
                state["projector"] = top_basis(grad, rank, rows)
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
