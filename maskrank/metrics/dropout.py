"""Dropout on the input of a last linear layer, as an explicit regularizer (SCIENCE.md §4).

For ``y ≈ U a`` with dropout on the features ``a`` (mask ``b_j ~ Bernoulli(θ)``, scaled by ``1/θ``
as :class:`torch.nn.Dropout` does), Mianjy, Arora & Vidal ("On the implicit bias of dropout",
ICML 2018) show

    ``E_b ‖y - U diag(b/θ) a‖² = ‖y - U a‖² + λ Σ_j ‖u_j‖² a_j²``,  ``λ = p / (1 - p)``,

where ``u_j`` is column ``j`` of ``U``. In a timm ViT MLP (``fc1 → act → drop → fc2``), ``U`` is
``fc2.weight`` (out, in) and ``a`` the input of ``fc2``. The logged quantities are the penalty
``R_drop = λ Σ_j ‖u_j‖² mean_x(a_j²)`` and the equalization score, the coefficient of variation of
``‖u_j‖ · rms(a_j)`` over ``j`` (0 when dropout's preferred "equalized" solution is reached).

The squared loss here is a *sum* over the ``out`` outputs; a loss averaged over outputs gets the
penalty divided by ``out``. The matrix-factorization form of SCIENCE.md §4 (Cavazza et al.,
AISTATS 2018) lives in :mod:`maskrank.metrics.dropout_mf` and is re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maskrank.metrics._checks import check_real_tensor, lambda_of
from maskrank.metrics.dropout_mf import (  # re-exported: SCIENCE.md §4 in one namespace
    DropoutMFOptimum,
    dropout_mf_optimum,
    equalize_factorization,
    factorization_penalty,
    factorization_penalty_term,
    min_factorization_penalty,
)

__all__ = [
    "DropoutMFOptimum",
    "dropout_lambda",
    "dropout_mf_optimum",
    "equalize_factorization",
    "factorization_penalty",
    "factorization_penalty_term",
    "min_factorization_penalty",
    "dropout_penalty",
    "dropout_penalty_term",
    "equalization_score",
]


def dropout_lambda(p: float) -> float:
    """``λ = p / (1 - p)`` for a drop probability ``0 <= p < 1`` (SCIENCE.md §4).

    Raises:
        ValueError: ``p`` outside ``[0, 1)`` (at ``p = 1`` everything is dropped and λ is infinite),
            not a real number, or non-finite.
    """
    return lambda_of(p)


def _layer_inputs(weight: Tensor, activations: Tensor, validate: bool) -> Tensor:
    """Check ``weight`` (out, in) against ``activations`` (..., in); return activations (M, in)."""
    for name, t in (("weight", weight), ("activations", activations)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if weight.ndim != 2:
        raise ValueError(
            f"weight must be 2-D (out, in) like fc2.weight, got shape {tuple(weight.shape)}"
        )
    if activations.ndim < 1 or activations.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"activations must have shape (..., in) with in = weight.shape[1] = {weight.shape[1]}, "
            f"got {tuple(activations.shape)}"
        )
    if validate:
        check_real_tensor(weight, "weight")
        check_real_tensor(activations, "activations")
    elif activations.numel() == 0 or weight.numel() == 0:
        raise ValueError("weight and activations must not be empty")
    return activations.reshape(-1, weight.shape[1])  # (M, in): all leading dims are samples


def dropout_penalty_term(
    weight: Tensor, activations: Tensor, p: float, *, validate: bool = True
) -> Tensor:
    """Differentiable ``λ Σ_j ‖u_j‖² mean_x(a_j²)`` as a 0-d tensor, for use as a loss term.

    SCIENCE.md §4; Mianjy, Arora & Vidal, ICML 2018. ``weight`` is (out, in) (``u_j`` = column
    ``j``, e.g. ``fc2.weight``), ``activations`` (..., in) the layer's input, whose leading
    dimensions (batch, tokens) are all averaged over. Gradients flow to both arguments; the
    computation uses their common dtype, so it composes with autocast. Adding it to the loss with
    dropout switched off is the *explicit* counterpart of dropout with drop probability ``p``.

    ``validate=False`` skips the finiteness check (a device sync each call) inside a training loop;
    shapes and ``p`` are always checked. ``p = 0`` gives 0.

    Raises:
        ValueError: ``weight`` not 2-D, mismatched ``in`` sizes, empty or non-finite inputs, or
            ``p`` outside ``[0, 1)``.
    """
    lam = dropout_lambda(p)
    a = _layer_inputs(weight, activations, validate)  # (M, in)
    col_sq = weight.square().sum(dim=0)  # (in,) ‖u_j‖²
    act_sq = a.square().mean(dim=0)  # (in,) mean_x a_j²
    return lam * (col_sq * act_sq).sum()


@torch.no_grad()
def dropout_penalty(weight: Tensor, activations: Tensor, p: float) -> float:
    """``R_drop = λ Σ_j ‖u_j‖² mean_x(a_j²)`` as a Python float, computed in float64.

    SCIENCE.md §4; Mianjy, Arora & Vidal, ICML 2018. The expected increase of the squared loss
    (summed over outputs, averaged over samples/tokens) caused by dropout with probability ``p`` on
    the input of the linear layer ``weight`` (out, in). See :func:`dropout_penalty_term` for shapes.
    All-zero weight or activations give 0.0; a single sample, ``(in,)`` or ``(1, in)``, is fine.

    Raises:
        ValueError: as :func:`dropout_penalty_term`.
    """
    _layer_inputs(weight, activations, validate=True)
    w = weight.detach().double()  # (out, in)
    a = activations.detach().double().to(w.device)  # (..., in)
    return float(dropout_penalty_term(w, a, p, validate=False))


@torch.no_grad()
def equalization_score(weight: Tensor, activations: Tensor) -> float:
    """Coefficient of variation (std / mean) over ``j`` of ``c_j = ‖u_j‖ · rms_x(a_j)``.

    SCIENCE.md §4; Mianjy, Arora & Vidal, ICML 2018: for a fixed ``Σ_j c_j`` the dropout penalty
    ``λ Σ_j c_j²`` is smallest when all ``c_j`` are equal, so a score near 0 means dropout's
    "equalized" solution. ``weight`` is (out, in), ``activations`` (..., in) with all leading
    dimensions averaged over; ``std`` is the population standard deviation (divides by ``in``).
    A single unit (in = 1) scores 0.0.

    Raises:
        ValueError: all ``c_j`` are zero (zero weight or dead units everywhere: the mean is 0 and
            the ratio undefined), or invalid inputs as in :func:`dropout_penalty_term`.
    """
    a = _layer_inputs(weight, activations, validate=True)  # (M, in)
    w = weight.detach().double()  # (out, in)
    a = a.detach().double().to(w.device)  # (M, in)
    c = (w.square().sum(dim=0) * a.square().mean(dim=0)).sqrt()  # (in,) ‖u_j‖ rms(a_j)
    scale = c.max()
    if float(scale) == 0.0:
        raise ValueError(
            "equalization score undefined: every ‖u_j‖·rms(a_j) is 0 (zero weight or activations)"
        )
    c = c / scale  # (in,) in [0, 1]
    return float(c.std(correction=0) / c.mean())
