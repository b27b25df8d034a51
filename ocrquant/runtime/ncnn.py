"""ncnn CPU backend: runs a model converted to ncnn (.param/.bin), float32 or INT8.

Install with ``pip install 'ocrquant[ncnn]'`` (pins ncnn==1.0.20261020 and pnnx==20261020).

* **Model argument.** An ``.onnx`` file is converted once with pnnx (see
  :mod:`ocrquant.frontends.ncnn_export`) and cached beside it as ``<stem>.ncnn.param/.bin/.json``; a
  ``.param`` file is loaded as is (its ``.json`` sidecar maps ONNX names to ncnn blobs). So
  ``ocrquant eval --backend ncnn --model ppocrv3-det`` works like any other backend.
* **Names.** The runner speaks ONNX names (``input_names``/``output_names``), so evaluation code
  feeds it exactly as it feeds onnxruntime; outputs get their batch axis back (ncnn has none).
* **Batches.** ncnn runs one image per extractor; a batch of N is N extractions, stacked.
* **Settings.** ``RuntimeOptions.threads`` -> ``opt.num_threads`` (0 = ncnn's default, the physical
  cores); light mode on (intermediate blobs are freed as soon as they are consumed); float32 storage
  and arithmetic (no fp16/bf16, so a float model computes what onnxruntime computes); INT8 layers of
  an INT8 model run INT8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.frontends.ncnn_export import (
    configure_options,
    load_ncnn_model,
    ncnn_model_for,
    require_ncnn,
    to_rank,
)
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

try:
    import ncnn as _ncnn
except ImportError:  # the extra is optional; the runner says how to get it
    _ncnn = None


@register_backend("ncnn")
class NcnnRunner(Runner):
    model_format = "onnx"  # ``ResolvedModel.path_for`` hands us the ONNX file; we convert and cache

    def __init__(self, model: Path, options: RuntimeOptions) -> None:

        ncnn = require_ncnn()
        model = Path(model)
        if not model.is_file():
            raise OcrQuantError("model file not found", model)
        if model.suffix.lower() == ".param":
            self.model = load_ncnn_model(model)
        elif model.suffix.lower() == ".onnx":
            self.model = ncnn_model_for(model)
        else:
            raise OcrQuantError(
                "the ncnn backend runs an .onnx (converted on the fly) or an ncnn .param", model
            )
        self.options = options
        self.net = ncnn.Net()
        configure_options(self.net.opt, options.threads, spinning=options.spinning)
        if self.net.load_param(str(self.model.param)) != 0:
            raise OcrQuantError("ncnn cannot parse the .param file", self.model.param)
        if self.net.load_model(str(self.model.bin)) != 0:
            raise OcrQuantError(
                "ncnn cannot load the weights (.bin does not match the .param)", self.model.bin
            )
        self._ncnn = ncnn

    @property
    def input_names(self) -> list[str]:
        return [b.name for b in self.model.inputs]

    @property
    def output_names(self) -> list[str]:
        return [b.name for b in self.model.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:

        missing = [b.name for b in self.model.inputs if b.name not in feeds]
        if missing:
            raise OcrQuantError(f"ncnn runner: missing input(s) {', '.join(missing)}")
        batch = {len(feeds[b.name]) for b in self.model.inputs}
        if len(batch) != 1:
            raise OcrQuantError("ncnn runner: inputs disagree on the batch size")
        per_item: list[list[np.ndarray]] = []
        for i in range(batch.pop()):
            with self.net.create_extractor() as ex:
                for b in self.model.inputs:
                    # keep the array referenced until clone(): ncnn.Mat(array) borrows its memory
                    x = np.ascontiguousarray(feeds[b.name][i], dtype=np.float32)
                    ex.input(b.blob, self._ncnn.Mat(x).clone())
                outs = []
                for b in self.model.outputs:
                    ret, mat = ex.extract(b.blob)
                    if ret != 0:
                        raise OcrQuantError(f"ncnn failed to compute output '{b.blob}' (code {ret})")
                    outs.append(to_rank(np.array(mat), b.rank))
            per_item.append(outs)
        return [np.concatenate([o[k] for o in per_item], axis=0) for k in range(len(self.model.outputs))]

    def blob_values(self, x: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
        """Float values of internal blobs for one image (batch item 0): calibration reads these.

        Light mode is turned off for the extractor, so every blob computed on the way stays available.
        """
        with self.net.create_extractor() as ex:
            ex.set_light_mode(False)
            item = np.ascontiguousarray(x[0], np.float32)  # must outlive Mat(): it does not own the data
            ex.input(self.model.inputs[0].blob, self._ncnn.Mat(item).clone())
            out = {}
            for name in blobs:
                ret, mat = ex.extract(name)
                if ret != 0:
                    raise OcrQuantError(
                        f"ncnn failed to compute blob '{name}' (code {ret})", self.model.param
                    )
                out[name] = np.array(mat)
        return out
