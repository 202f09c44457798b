"""The CPU side of :class:`~maskrank.callbacks.WeightSpectrumMonitor` (SCIENCE.md §3).

Everything here works on CPU snapshots (no module, no Lightning), so it can run in a background
thread while training goes on. Weights of one shape are stacked and decomposed in one batched call:
the singular values of each ``A`` (m, n) come from ``eigh`` of its smaller Gram matrix in float64
(the ``"gram"`` route of :func:`maskrank.metrics.singular_values`, batched), and the top-``k`` left
singular vectors of ``ΔW`` come from the same decomposition. The metrics themselves are the ones of
:mod:`maskrank.metrics`, fed with these precomputed singular values (``sv=``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from maskrank.callbacks._common import module_type_name
from maskrank.metrics import energy_rank_key, spectrum_metrics, subspace_similarity

__all__ = [
    "GRAD_KEYS",
    "Group",
    "Snapshot",
    "UPDATE_KEYS",
    "WEIGHT_KEYS",
    "batched_gram_spectra",
    "compute",
    "default_series",
    "moved_count",
    "select",
    "subspace_key",
]

_F64_EPS = torch.finfo(torch.float64).eps
_MIN_REL_SV = 1e-4  # U_k from the Gram route is trusted (orthonormal to ~1e-8) when σ_k ≥ this·σ_1
WEIGHT_KEYS = ("effective_rank", "stable_rank", "spectral_norm", "nuclear_norm")
UPDATE_KEYS = (
    "effective_rank",
    energy_rank_key(0.9),
    energy_rank_key(0.99),
    "moved_singular_values",
)  # and subspace_key(k) from the second measurement on
GRAD_KEYS = ("norm", "effective_rank", "stable_rank")
# The default series (without all_metrics): where the update goes, per layer (its effective rank,
# how many singular values of W it moved, how much its top subspace still turns), and the weight's
# effective rank per layer type. The energy ranks, norms and gradient spectra answer narrower
# questions and come with all_metrics.
_DEFAULT_UPDATE = ("effective_rank", "moved_singular_values", "subspace_similarity_top")
_DEFAULT_WEIGHT = ("effective_rank",)


def subspace_key(k: int) -> str:
    """``subspace_similarity_top<k>``: the tag leaf of the update's subspace similarity."""
    return f"subspace_similarity_top{k}"


@dataclass
class Group:
    """Same-shape weights at one step: ``keys`` (parameter names), ``names`` (short names).

    ``weights`` is (B, m, n) float on the CPU; ``grads`` (G, m, n) holds the gradients that exist,
    for the weights at positions ``grad_index`` (empty when the step had none).
    """

    keys: list[str]
    names: list[str]
    weights: Tensor
    grads: Tensor | None = None
    grad_index: list[int] = field(default_factory=list)


@dataclass
class Snapshot:
    """Everything one measurement needs, copied off the model: ``step`` and its groups."""

    step: int
    groups: list[Group]


@torch.no_grad()
def batched_gram_spectra(a: Tensor, k: int = 0) -> tuple[Tensor, Tensor | None]:
    """Singular values (B, K) descending of every ``a[i]`` (m, n), and top-``k`` left vectors.

    Float64 ``eigh`` of the smaller Gram matrix; eigenvalues below the round-off level
    ``max(m, n)·eps·λ_max`` read as 0, as in :func:`maskrank.metrics.singular_values` (so the
    metrics agree with it to 1e-4 relative). Returns ``U`` (B, m, k) with orthonormal columns when
    ``k > 0``, else None; columns for ``σ_j < 1e-4 σ_1`` are unreliable (callers check ``sv``).
    """
    a = a.double()  # (B, m, n)
    _, m, n = a.shape
    tall = m > n
    gram = a.mT @ a if tall else a @ a.mT  # (B, K, K), K = min(m, n)
    if k > 0:
        evals, evecs = torch.linalg.eigh(gram)  # ascending, (B, K) and (B, K, K)
    else:
        evals, evecs = torch.linalg.eigvalsh(gram), None
    evals = evals.flip(-1)  # (B, K) descending
    floor = max(m, n) * _F64_EPS * evals[:, :1].clamp_min(0.0)  # (B, 1)
    sv = torch.where(evals > floor, evals, torch.zeros_like(evals)).sqrt()  # (B, K)
    if evecs is None:
        return sv, None
    top = evecs.flip(-1)[..., :k]  # (B, K, k): V_k if tall, else U_k
    if tall:  # U_k = A V_k / σ_k
        top = (a @ top) / sv[:, None, :k].clamp_min(torch.finfo(torch.float64).tiny)
    return sv, top


def moved_count(sv: Tensor, sv0: Tensor, rtol: float, atol: float = 1e-6) -> int:
    """:func:`maskrank.metrics.moved_singular_values` from precomputed spectra (K,) descending."""
    scale = torch.maximum(sv[0], sv0[0])
    if float(scale) == 0.0:
        return 0
    return int(((sv - sv0).abs() > rtol * sv0 + atol * scale).sum())


def _mean_summaries(metrics: dict[str, float]) -> dict[str, float]:
    """``<kind>/<type>_mean/<metric>``: the average over blocks of ``<kind>/<module>/<metric>``."""
    sums: dict[str, list[float]] = defaultdict(list)
    for tag, value in metrics.items():
        kind, module, metric = tag.split("/")
        kind_type = module_type_name(module)
        if kind_type != module:
            sums[f"{kind}/{kind_type}_mean/{metric}"].append(value)
    return {tag: sum(values) / len(values) for tag, values in sums.items()}


@torch.no_grad()
def compute(
    snapshot: Snapshot,
    w0: dict[str, Tensor],
    sv0_cache: dict[str, Tensor],
    bases: dict[str, Tensor],
    *,
    subspace_k: int,
    grad_norm_floor: float,
    moved_rtol: float,
    per_module: bool,
    summaries: bool,
    all_metrics: bool,
) -> tuple[dict[str, float], dict[str, Tensor], dict[str, Tensor]]:
    """All SCIENCE.md §3 metrics of one snapshot.

    Args:
        snapshot: the weights (and gradients) at one step.
        w0: parameter name -> the weight when training started (CPU).
        sv0_cache: parameter name -> singular values of ``w0`` (filled for missing names).
        bases: parameter name -> the top-k left singular vectors of ``ΔW`` at the previous
            measurement (read only).
        subspace_k: k of the subspace similarity.
        grad_norm_floor: gradient metrics only when ``‖G‖_F`` exceeds this.
        moved_rtol: relative tolerance of the moved-singular-value count.
        per_module: return per-module tags.
        summaries: return the ``<type>_mean`` averages over blocks.
        all_metrics: return every series; False: only the default ones (:func:`default_series`).

    Returns:
        ``(metrics, new_bases, new_sv0)``: tag -> value; name -> (m, k) basis of ``ΔW`` now (only
        where ``ΔW`` has rank >= k); name -> singular values of ``W0`` computed now.
    """
    metrics: dict[str, float] = {}
    new_bases: dict[str, Tensor] = {}
    new_sv0: dict[str, Tensor] = {}
    sim_key = subspace_key(subspace_k)
    for group in snapshot.groups:
        w = group.weights.double()  # (B, m, n)
        start = torch.stack([w0[key] for key in group.keys]).double()  # (B, m, n)
        missing = [i for i, key in enumerate(group.keys) if key not in sv0_cache]
        if missing:
            sv_missing, _ = batched_gram_spectra(start[missing])  # (b, K)
            new_sv0.update({group.keys[i]: sv_missing[j] for j, i in enumerate(missing)})
        k = min(subspace_k, *w.shape[1:])
        sv_w, _ = batched_gram_spectra(w)  # (B, K)
        sv_d, u_d = batched_gram_spectra(w - start, k)  # (B, K), (B, m, k)
        for i, (key, name) in enumerate(zip(group.keys, group.names, strict=True)):
            sv0 = sv0_cache.get(key, new_sv0.get(key))
            spec_w = spectrum_metrics(sv=sv_w[i])
            for metric in WEIGHT_KEYS:
                metrics[f"weights/{name}/{metric}"] = spec_w[metric]
            spec_d = spectrum_metrics(sv=sv_d[i], energies=(0.9, 0.99))
            for metric in UPDATE_KEYS[:3]:
                metrics[f"updates/{name}/{metric}"] = spec_d[metric]
            metrics[f"updates/{name}/moved_singular_values"] = float(
                moved_count(sv_w[i], sv0, moved_rtol)
            )
            if float(sv_d[i, k - 1]) >= _MIN_REL_SV * float(sv_d[i, 0]) > 0.0:
                new_bases[key] = u_d[i].clone()  # (m, k)
                if key in bases and bases[key].shape == new_bases[key].shape:
                    metrics[f"updates/{name}/{sim_key}"] = subspace_similarity(
                        new_bases[key], bases[key]
                    )
        if group.grads is not None and group.grad_index:
            g = group.grads.double()  # (G, m, n)
            norms = g.flatten(1).norm(dim=1)  # (G,)
            keep = [j for j in range(g.shape[0]) if float(norms[j]) > grad_norm_floor]
            sv_g = batched_gram_spectra(g[keep])[0] if keep else None  # (G', K)
            for j, i in enumerate(group.grad_index):
                metrics[f"grads/{group.names[i]}/norm"] = float(norms[j])
                if j in keep:
                    spec_g = spectrum_metrics(sv=sv_g[keep.index(j)])  # type: ignore[index]
                    for metric in GRAD_KEYS[1:]:
                        metrics[f"grads/{group.names[i]}/{metric}"] = spec_g[metric]
    out = select(metrics, per_module=per_module, summaries=summaries, all_metrics=all_metrics)
    return out, new_bases, new_sv0


def default_series(tag: str, per_module: bool) -> bool:
    """Whether ``tag`` is logged without ``all_metrics``: the update's effective rank, moved
    singular values and subspace similarity per layer (per layer type where ``per_module`` is
    off), and the weight's effective rank per layer type."""
    kind, module, metric = tag.split("/")
    mean = module.endswith("_mean")
    if kind == "updates" and metric.startswith(_DEFAULT_UPDATE):
        return mean != per_module
    return kind == "weights" and metric in _DEFAULT_WEIGHT and mean


def select(
    metrics: dict[str, float], *, per_module: bool, summaries: bool, all_metrics: bool
) -> dict[str, float]:
    """The tags to log of one measurement's per-module ``metrics``: per module and/or the means
    over blocks, every series or the default ones. The monitor's ``planned_tags`` runs the same
    selection on placeholder values, so the tags it announces are the tags it logs."""
    out = dict(metrics) if per_module else {}
    if summaries:
        out.update(_mean_summaries(metrics))
    if not all_metrics:
        out = {tag: v for tag, v in out.items() if default_series(tag, per_module)}
    return out
