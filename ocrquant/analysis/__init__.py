"""Analysis of a quantized model: tensor dumps, layer-wise float-vs-INT8 comparison, an integer
simulator of the QDQ graph, and per-layer profiles.

Each step works on any float / QDQ ONNX pair (onnxruntime's quantizer or ocrquant's own), reading
only the graph: it never relies on how the quantized model was made.
"""

from ocrquant.analysis.compare import CompareResult, LayerStat, compare_from_dump, compare_models
from ocrquant.analysis.dump import dump_model, dump_pair
from ocrquant.analysis.graph import match_tensors, safe_tensor_dirname

__all__ = [
    "CompareResult",
    "LayerStat",
    "compare_from_dump",
    "compare_models",
    "dump_model",
    "dump_pair",
    "match_tensors",
    "safe_tensor_dirname",
]
