"""Integer simulator of QDQ models: fixed-point arithmetic, one kernel module per op family, a registry.

Importing this package registers every kernel family.
"""

from ocrquant.analysis.simulate import ops_activation as _ops_activation  # noqa: F401
from ocrquant.analysis.simulate import ops_conv as _ops_conv  # noqa: F401
from ocrquant.analysis.simulate import ops_eltwise as _ops_eltwise  # noqa: F401
from ocrquant.analysis.simulate import ops_matmul as _ops_matmul  # noqa: F401
from ocrquant.analysis.simulate import ops_movement as _ops_movement  # noqa: F401
from ocrquant.analysis.simulate import ops_pool as _ops_pool  # noqa: F401
from ocrquant.analysis.simulate.engine import NodeReport, SimReport, Simulator
from ocrquant.analysis.simulate.fixedpoint import quantize_multiplier, requantize, rounding_shift_right
from ocrquant.analysis.simulate.qtypes import QParams, QTensor
from ocrquant.analysis.simulate.registry import KERNELS

__all__ = [
    "KERNELS",
    "NodeReport",
    "QParams",
    "QTensor",
    "SimReport",
    "Simulator",
    "quantize_multiplier",
    "requantize",
    "rounding_shift_right",
]
