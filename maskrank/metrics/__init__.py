"""Pure, typed spectrum and regularizer metrics (shared/SCIENCE.md); no Lightning imports."""

from maskrank.metrics._checks import NonFiniteInputError
from maskrank.metrics.covariance import alpha_req, covariance_eigenvalues, participation_ratio
from maskrank.metrics.dropout import (
    dropout_lambda,
    dropout_penalty,
    dropout_penalty_term,
    equalization_score,
)
from maskrank.metrics.dropout_mf import (
    DropoutMFOptimum,
    dropout_mf_optimum,
    equalize_factorization,
    factorization_penalty,
    factorization_penalty_term,
    min_factorization_penalty,
)
from maskrank.metrics.knn import knn_accuracy, knn_predict
from maskrank.metrics.lidar import LIDAR_DELTA, lda_matrix, lidar
from maskrank.metrics.probe import linear_probe_accuracy
from maskrank.metrics.projection import captured_energy
from maskrank.metrics.spectrum import (
    RANKME_EPS,
    effective_rank,
    energy_rank,
    energy_rank_key,
    frobenius_norm,
    normalized_nuclear_norm,
    nuclear_norm,
    numerical_rank,
    numerical_rank_key,
    resolve_method,
    singular_values,
    spectral_norm,
    spectrum_metrics,
    stable_rank,
)
from maskrank.metrics.subspace import (
    moved_singular_values,
    subspace_similarity,
    top_singular_vectors,
    update_spectrum,
)
from maskrank.metrics.uniformity import uniformity_loss

__all__ = [
    "LIDAR_DELTA",
    "NonFiniteInputError",
    "RANKME_EPS",
    "DropoutMFOptimum",
    "alpha_req",
    "captured_energy",
    "covariance_eigenvalues",
    "dropout_lambda",
    "dropout_mf_optimum",
    "dropout_penalty",
    "dropout_penalty_term",
    "effective_rank",
    "energy_rank",
    "energy_rank_key",
    "equalization_score",
    "equalize_factorization",
    "factorization_penalty",
    "factorization_penalty_term",
    "frobenius_norm",
    "knn_accuracy",
    "knn_predict",
    "lda_matrix",
    "lidar",
    "linear_probe_accuracy",
    "min_factorization_penalty",
    "moved_singular_values",
    "normalized_nuclear_norm",
    "nuclear_norm",
    "numerical_rank",
    "numerical_rank_key",
    "participation_ratio",
    "resolve_method",
    "singular_values",
    "spectral_norm",
    "spectrum_metrics",
    "stable_rank",
    "subspace_similarity",
    "top_singular_vectors",
    "uniformity_loss",
    "update_spectrum",
]
