"""Which layers ncnn runs faster in INT8 than in float on *this* CPU: each layer timed alone.

Why: ncnn's INT8 kernels pay on some layers and lose on others, and which depends on the CPU. On the
2-core AVX2 EPYC (no VNNI) where ocrquant is developed, PP-OCRv3 det's 3x3 FPN convs (96 -> 24
channels at 1/4 scale) run 1.45-1.57x faster in INT8, while every depthwise conv runs 0.5-0.9x (slower)
and so do the convs with 3-24 input channels: INT8 on every layer made the whole model *slower* than
float (0.93-0.97x) and cost 0.7 hmean point; INT8 on the layers measured faster made it 1.15x faster.
An ARM core with dot-product instructions would choose differently, so the choice is measured on the
machine that quantizes, not written into a table (quantize on the deployment CPU, or pass
``int8_layers="all"``).

How: for each candidate layer, a two-layer ncnn net (Input, the layer) is written twice, with the
layer's float weights and with its INT8 weights and scales, and both are run on the layer's real input
blob (from one calibration image), alternating, until ``budget_s`` has passed (at least ``min_reps``
pairs). A layer alone pays its input quantization and output dequantization, which the requantize
fusion between consecutive INT8 convs removes in the full model: the measure is conservative.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import scratch_dir
from ocrquant.frontends.ncnn_export import configure_options
from ocrquant.frontends.ncnn_format import (
    Int8Table,
    Layer,
    NcnnParam,
    WeightRecord,
    write_int8_model,
)
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.ncnn import NcnnRunner


@dataclass
class LayerTiming:
    """Median time of one layer alone, float vs INT8, on its calibration input."""

    layer: str
    type: str
    input_shape: list[int]
    float_ms: float
    int8_ms: float
    pairs: int

    def faster_in_int8(self, min_gain: float) -> bool:
        """INT8 at least ``min_gain`` (a fraction) faster than float: below that, timing noise decides."""
        return self.int8_ms <= (1.0 - min_gain) * self.float_ms


def _single_layer_net(ly: Layer, records: bytes, path: Path) -> Path:
    """``ly`` alone behind an Input: ``<path>.param`` / ``.bin``; blobs ``in0`` -> ``out0``."""
    alone = dataclasses.replace(ly, bottoms=["in0"], tops=["out0"], params=list(ly.params))
    param = NcnnParam([Layer("Input", "input", [], ["in0"]), alone], 2)
    path.write_text(param.text())
    path.with_suffix(".bin").write_bytes(records)
    return path


def time_layers(
    float_model: Any,
    param: NcnnParam,
    records: list[WeightRecord],
    table: Int8Table,
    x: np.ndarray,
    *,
    threads: int = 0,
    budget_s: float = 0.25,
    min_reps: int = 5,
    progress: bool = True,
) -> list[LayerTiming]:
    """Time every layer of ``table`` alone in float and in INT8 on its input blob for input ``x``
    (a preprocessed batch of one). ``float_model``: the float :class:`NcnnModel`; ``param`` and
    ``records``: its parsed ``.param`` and ``.bin`` (:func:`read_bin`), as the caller has them."""
    import ncnn

    layers = param.by_name()
    data = Path(float_model.bin).read_bytes()
    by_layer: dict[str, bytes] = {}
    for r in records:
        by_layer[r.layer] = by_layer.get(r.layer, b"") + data[r.offset : r.offset + r.nbytes]
    names = [n for n in table.weights if len(layers[n].tops) == 1]
    blobs = NcnnRunner(float_model.param, RuntimeOptions(threads=threads)).blob_values(
        x, sorted({layers[n].bottoms[0] for n in names})
    )

    def load(path: Path) -> Any:
        net = ncnn.Net()
        configure_options(net.opt, threads)
        if net.load_param(str(path)) != 0 or net.load_model(str(path.with_suffix(".bin"))) != 0:
            raise OcrQuantError("ncnn cannot load the single-layer timing net", path)
        return net

    def once(net: Any, mat: Any) -> float:
        start = time.perf_counter()
        with net.create_extractor() as ex:
            ex.input("in0", mat)
            ret, _ = ex.extract("out0")
        if ret != 0:
            raise OcrQuantError(f"ncnn failed to run a single-layer timing net (code {ret})")
        return time.perf_counter() - start

    out = []
    with scratch_dir("ncnn-speed") as tmp:
        for i, name in enumerate(
            tqdm(names, desc="ncnn INT8 vs float per layer", disable=not progress, leave=False)
        ):
            fp = _single_layer_net(layers[name], by_layer[name], Path(tmp) / f"l{i}.param")
            qp = Path(tmp) / f"l{i}.int8.param"
            only = Int8Table({name: table.weights[name]}, {name: table.activations[name]})
            write_int8_model(fp, fp.with_suffix(".bin"), only, qp, qp.with_suffix(".bin"))
            nets = {"float": load(fp), "int8": load(qp)}
            blob = np.ascontiguousarray(blobs[layers[name].bottoms[0]], np.float32)
            mat = ncnn.Mat(blob).clone()
            for net in nets.values():  # warm-up: pipelines, packing, first allocations
                once(net, mat)
            times: dict[str, list[float]] = {"float": [], "int8": []}
            start = time.perf_counter()
            while len(times["float"]) < min_reps or time.perf_counter() - start < budget_s:
                order = ("float", "int8") if len(times["float"]) % 2 else ("int8", "float")
                for k in order:
                    times[k].append(once(nets[k], mat))
                if len(times["float"]) >= 200:
                    break
            out.append(
                LayerTiming(
                    name,
                    layers[name].type,
                    list(blob.shape),
                    float(np.median(times["float"]) * 1e3),
                    float(np.median(times["int8"]) * 1e3),
                    len(times["float"]),
                )
            )
    return out
