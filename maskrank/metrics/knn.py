"""Weighted k-nearest-neighbour accuracy of frozen features (SCIENCE.md §9).

The usual SSL protocol (Wu et al. 2018; DINO, solo-learn): features of a labelled bank and of
held-out queries are L2-normalised; every query's ``k`` most cosine-similar bank items vote for
their label with weight ``exp(s / T)``; the query gets the class with the largest summed weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from maskrank.metrics._checks import as_matrix64, check_positive_int

__all__ = ["knn_accuracy", "knn_predict"]


def _labels(labels: object, n: int, name: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor of {n} class indices, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (class indices), got min {int(labels.min())}")
    return labels


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Predicted class (Q,) of every query by a ``k``-NN vote weighted by ``exp(cos / T)``.

    Args:
        bank: (N, D) features of the labelled bank.
        bank_labels: (N,) integer class indices of the bank.
        queries: (Q, D) features to classify.
        k: neighbours per query, ``1 <= k <= N``.
        temperature: ``T > 0`` of the vote weights.
        chunk: queries per similarity block (memory only).

    Computed in float64 on the bank's device. Ties between classes go to the smaller index.
    """
    b = as_matrix64(bank, "bank features")
    q = as_matrix64(queries, "query features")
    if b.shape[1] != q.shape[1]:
        raise ValueError(f"bank and query features differ in width ({b.shape[1]} vs {q.shape[1]})")
    y = _labels(bank_labels, b.shape[0], "bank labels").to(b.device)
    k = check_positive_int(k, "k")
    if k > b.shape[0]:
        raise ValueError(f"k = {k} is larger than the bank of {b.shape[0]} features")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or (
        temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    num_classes = int(y.max()) + 1
    b = torch.nn.functional.normalize(b, dim=1)  # (N, D); an all-zero row stays zero
    q = torch.nn.functional.normalize(q.to(b.device), dim=1)  # (Q, D)
    predictions = []
    for part in q.split(chunk):  # (c, D)
        sim, idx = (part @ b.T).topk(k, dim=1)  # (c, k) cosine similarities, bank indices
        weights = (sim / temperature).exp()  # (c, k)
        votes = torch.zeros(part.shape[0], num_classes, dtype=b.dtype, device=b.device)
        votes.scatter_add_(1, y[idx], weights)  # (c, C) summed weight per class
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)  # (Q,)


def knn_accuracy(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Fraction in [0, 1] of ``queries`` (Q, D) whose weighted ``k``-NN vote over ``bank`` (N, D)
    gives their label (SCIENCE.md §9); see :func:`knn_predict` for the vote.

    Raises ValueError (saying why) on mismatched shapes, non-finite features, negative or
    non-integer labels, ``k < 1``, ``k`` larger than the bank, or ``temperature <= 0``.
    """
    predicted = knn_predict(bank, bank_labels, queries, k, temperature)
    truth = _labels(query_labels, predicted.shape[0], "query labels").to(predicted.device)
    return float((predicted == truth).double().mean())
