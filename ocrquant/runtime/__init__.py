"""Runtimes behind one Runner interface."""

from ocrquant.runtime import ncnn as _ncnn  # noqa: F401  (registers "ncnn"; extra needed to run)
from ocrquant.runtime import openvino as _openvino  # noqa: F401  (registers "openvino"; extra needed to run)
from ocrquant.runtime import ort as _ort  # noqa: F401  (registers "onnxruntime")
from ocrquant.runtime import paddle as _paddle  # noqa: F401  (registers "paddle"; imports paddle lazily)
from ocrquant.runtime import tensorrt as _tensorrt  # noqa: F401  (registers "tensorrt"; needs a CUDA GPU to run)
from ocrquant.runtime import torch_backend as _torch  # noqa: F401  (registers "torch"; imports torch lazily)
from ocrquant.runtime.base import BACKENDS, Runner, RuntimeOptions, create_runner

__all__ = ["BACKENDS", "Runner", "RuntimeOptions", "create_runner"]
