"""Accuracy-recovery algorithms, one module each, registered by name (NNCF's layout)."""

from ocrquant.quantization.algorithms import adaround, bias_correction, cle, fallback, hs_cle, weight_width  # noqa: F401  (registration)
from ocrquant.quantization.algorithms.base import (
    ALGORITHMS,
    STAGES,
    Algorithm,
    AlgorithmContext,
    create_algorithm,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "STAGES", "Algorithm", "AlgorithmContext", "create_algorithm", "register_algorithm"]
