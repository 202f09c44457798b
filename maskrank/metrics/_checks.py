"""Input validation shared by the metric functions (SCIENCE.md §1, §3, §4).

Every public metric validates its input with these helpers before computing, so that a bad input
raises a :class:`ValueError` (or :class:`TypeError` for a non-tensor) whose message says why, and a
metric never returns NaN silently. Valid matrices are converted to float64 on a *work device*: the
input's own device, except Apple MPS (which has no float64), where work falls back to the CPU.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Method",
    "NonFiniteInputError",
    "as_matrix64",
    "as_vector64",
    "check_finite",
    "check_fraction",
    "check_positive_int",
    "check_probability",
    "check_real_tensor",
    "lambda_of",
    "work_device",
]

# How singular values are computed: "svd" = torch.linalg.svdvals; "gram" = sqrt of the eigenvalues
# of the smaller Gram matrix; "auto" = "gram" for clearly rectangular matrices, else "svd".
Method = Literal["auto", "svd", "gram"]


class NonFiniteInputError(ValueError):
    """A metric's input holds NaN or inf; the metric is undefined (monitors skip that step)."""


def work_device(x: Tensor) -> torch.device:
    """Device on which the float64 work for ``x`` happens: its own, or the CPU for MPS tensors."""
    return torch.device("cpu") if x.device.type == "mps" else x.device


def check_real_tensor(x: object, name: str) -> Tensor:
    """Check that ``x`` is a non-empty real tensor (float or integer dtype) with finite values.

    Raises:
        TypeError: ``x`` is not a :class:`torch.Tensor`.
        ValueError: complex or bool dtype, no elements, or a NaN / inf entry.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must have a real float or integer dtype, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); metrics need at least 1 entry")
    check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise :class:`NonFiniteInputError` if ``x`` has a NaN or inf entry (one device sync on GPU)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); spectra of such a matrix "
            "are undefined"
        )


def as_matrix64(x: object, name: str = "A") -> Tensor:
    """Validate a 2-D matrix and return it detached, as float64 on its work device.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: not 2-D, empty, complex/bool, or non-finite.
    """
    if isinstance(x, Tensor) and x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (N, D), got shape {tuple(x.shape)}")
    t = check_real_tensor(x, name)
    return t.detach().to(device=work_device(t), dtype=torch.float64)  # (N, D)


def as_vector64(x: object, name: str, *, nonnegative: bool = False) -> Tensor:
    """Validate a 1-D vector (e.g. precomputed singular values) and return it as float64.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: not 1-D, empty, non-finite, or (with ``nonnegative``) a negative entry.
    """
    if isinstance(x, Tensor) and x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {tuple(x.shape)}")
    t = check_real_tensor(x, name).detach().to(device=work_device(x), dtype=torch.float64)  # (K,)
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0 (singular values / eigenvalues), got min {t.min()}")
    return t


def _check_real_number(x: object, name: str) -> float:
    """Return ``x`` as a finite Python float, or raise (bools are rejected)."""
    if isinstance(x, bool) or not isinstance(x, Real):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_probability(p: object, name: str = "p") -> float:
    """Validate a drop probability ``0 <= p < 1`` (``p = 1`` drops everything: λ is infinite)."""
    value = _check_real_number(p, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} = {value} must satisfy 0 <= {name} < 1")
    return value


def check_fraction(
    x: object, name: str, *, allow_zero: bool = False, allow_one: bool = False
) -> float:
    """Validate a number in the open interval (0, 1), optionally closed at either end."""
    value = _check_real_number(x, name)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    high_ok = value <= 1.0 if allow_one else value < 1.0
    if not (low_ok and high_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} = {value} must lie in {lo}, {hi}")
    return value


def check_positive_int(k: object, name: str) -> int:
    """Validate an integer ``k >= 1`` (bools are rejected)."""
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} = {k} must be >= 1")
    return int(k)


def lambda_of(p: object) -> float:
    """``λ = p / (1 - p)`` after validating ``0 <= p < 1`` (SCIENCE.md §4 notation)."""
    value = check_probability(p)
    return value / (1.0 - value)
