"""Accuracy-recovery algorithms, one module each, registered by name (NNCF's layout)."""

from ocrquant.quantization.algorithms import (  # noqa: F401  (registration)
    adaround,
    bias_correction,
    cle,
    distill,
    fallback,
    hs_cle,
    weight_width,
)
from ocrquant.quantization.algorithms.base import (
    ALGORITHMS,
    STAGES,
    Algorithm,
    AlgorithmContext,
    create_algorithm,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "STAGES", "Algorithm", "AlgorithmContext", "create_algorithm", "register_algorithm"]
