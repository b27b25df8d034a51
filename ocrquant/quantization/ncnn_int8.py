"""ncnn INT8 from ocrquant's calibration: ncnn's calibration table and INT8 model, written in Python.

What ncnn's own tools do (``ncnn2table`` then ``ncnn2int8``), rebuilt on ocrquant's calibration so the
range method (kl, min_max, percentile, mse: the calibrator registry) and the calibration set are the
same as for every other target:

* **Table format** (ncnn's documented text format, one entry per line): ``<layer>_param_0 s1 ... sN``
  holds a layer's per-output-channel weight scales (``127 / absmax`` of the channel; per group for
  ConvolutionDepthWise; 1 for an all-zero channel), and ``<layer> s`` the scale of the layer's bottom
  blob (``127 / threshold``, symmetric int8 as ncnn quantizes activations to [-127, 127]).
* **INT8 model** (what ``ncnn2int8`` writes): for each Convolution / ConvolutionDepthWise /
  InnerProduct layer named in the table, param ``8=int8_scale_term`` (2 for Convolution and
  InnerProduct: per-output-channel weights; 1 for ConvolutionDepthWise: per-group weights), the
  weights stored as int8 (tag ``0x000D4B38``, rounded half away from zero, clamped to [-127, 127], as
  ncnn's ``quantize_to_int8``), and after the bias the weight scales then the bottom blob scale, as
  ``load_model`` reads them. Every other layer (Deconvolution, which ncnn has no INT8 kernel for,
  activations, pooling, resize...) is copied unchanged and runs in float.
* **Activation statistics** come from running the float ncnn model itself (``extract`` of each
  quantized layer's bottom blob, light mode off) on the calibration images: pnnx renames every tensor,
  so mapping ncnn blobs back to ONNX tensor names is not reliable, while the ncnn model's own blobs
  are exactly what the INT8 layers will see. The statistics are the calibration package's
  :class:`TensorStats` (two passes: exact min/max, then fixed-range histograms), so any registered
  calibrator computes the threshold, and they are cached: trying another method re-runs no model.
* **Errors.** A table entry naming a layer the model lacks, or a quantizable layer with weight scales
  but no bottom-blob scale (or the reverse), is a one-line :class:`OcrQuantError`; nothing is written
  then (outputs are written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import struct
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, scratch_dir, write_json_atomic, write_text_atomic
from ocrquant.quantization.calibration import CalibrationStats, QSpec, TensorStats, create_calibrator

log = logging.getLogger("ocrquant")

MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056
HIST_BINS = 2048
# Measured on PP-OCRv3 det, ICDAR2015 det_test (500), 200 det_train calibration images, ncnn INT8 hmean vs
# float 0.4234: percentile(99.99) 0.4162, mse 0.4109, kl (ncnn2table's own method) 0.3211.
DEFAULT_METHOD = "percentile"
# layer type -> the int8_scale_term value ncnn2int8 gives it
INT8_LAYERS = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
# which of those layers get INT8: the ones measured faster in INT8 on this CPU, or every one
INT8_LAYER_CHOICES = ("faster", "all")


# --------------------------------------------------------------------------------------------- .param


@dataclass
class Layer:
    """One ``.param`` line; ``params`` keeps the raw ``key=value`` tokens in their order."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: int, default: float = 0) -> float:
        for k, v in self.params:
            if k == str(key):
                return float(v)
        return default

    def geti(self, key: int, default: int = 0) -> int:
        return int(self.get(key, default))

    def set(self, key: int, value: str) -> None:
        for i, (k, _) in enumerate(self.params):
            if k == str(key):
                self.params[i] = (k, value)
                return
        self.params.append((str(key), value))

    def line(self) -> str:
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join([head, *self.bottoms, *self.tops, *(f"{k}={v}" for k, v in self.params)])


@dataclass
class NcnnParam:
    layers: list[Layer]
    blob_count: int

    @classmethod
    def read(cls, path: Path) -> NcnnParam:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if not lines or lines[0].strip() != MAGIC:
            raise OcrQuantError("not an ncnn text .param file (magic 7767517 missing)", path)
        try:
            n_layers, n_blobs = (int(v) for v in lines[1].split())
            layers = []
            for ln in lines[2:]:
                tok = shlex.split(ln, posix=False)  # keeps quoted values (pnnx's Interp size expressions)
                nb, nt = int(tok[2]), int(tok[3])
                bottoms, tops = tok[4 : 4 + nb], tok[4 + nb : 4 + nb + nt]
                params = [tuple(t.split("=", 1)) for t in tok[4 + nb + nt :]]
                layers.append(Layer(tok[0], tok[1], bottoms, tops, params))  # type: ignore[arg-type]
        except (ValueError, IndexError) as exc:
            raise OcrQuantError(f"malformed ncnn .param ({exc})", path) from None
        if len(layers) != n_layers:
            raise OcrQuantError(f"header says {n_layers} layers, file has {len(layers)}", path)
        return cls(layers, n_blobs)

    def text(self) -> str:
        return (
            "\n".join([MAGIC, f"{len(self.layers)} {self.blob_count}", *(ly.line() for ly in self.layers)])
            + "\n"
        )

    def by_name(self) -> dict[str, Layer]:
        return {ly.name: ly for ly in self.layers}


# --------------------------------------------------------------------------------------------- .bin

# A weight record is either "auto" (ModelBin type 0: 4-byte tag then fp32 / fp16 / int8 / table data)
# or "raw" (type 1: plain fp32). Per layer type: the records its ``load_model`` reads, in order.
LayoutFn = Callable[[Layer], list[tuple[str, str, int]]]


def _conv_layout(ly: Layer, n_int8: Callable[[Layer], int]) -> list[tuple[str, str, int]]:
    if ly.geti(28 if ly.type.startswith("Deconvolution") else 19):  # dynamic weight: no stored weights
        return []
    recs = [("weight", "auto", ly.geti(6))]
    if ly.geti(5):
        recs.append(("bias", "raw", ly.geti(0)))
    term = ly.geti(8)
    if term and not ly.type.startswith("Deconvolution"):
        recs += [("weight_scales", "raw", n_int8(ly)), ("bottom_scale", "raw", 1)]
        if term > 100:
            recs.append(("top_scale", "raw", 1))
    return recs


def _dw_scales(ly: Layer) -> int:
    term = ly.geti(8) % 100
    return ly.geti(7, 1) if term == 1 else 1


def _ip_layout(ly: Layer) -> list[tuple[str, str, int]]:
    recs = [("weight", "auto", ly.geti(2))]
    if ly.geti(1):
        recs.append(("bias", "raw", ly.geti(0)))
    if ly.geti(8):
        recs += [("weight_scales", "raw", ly.geti(0)), ("bottom_scale", "raw", 1)]
    return recs


def _memorydata_layout(ly: Layer) -> list[tuple[str, str, int]]:
    dims = [ly.geti(k) for k in (0, 1, 11, 2)]
    n = int(np.prod([d for d in dims if d > 0])) if any(d > 0 for d in dims) else 0
    return [("data", "raw", n)] if n else []


LAYOUTS: dict[str, LayoutFn] = {
    "Convolution": lambda ly: _conv_layout(ly, lambda x: x.geti(0)),
    "ConvolutionDepthWise": lambda ly: _conv_layout(ly, _dw_scales),
    "Deconvolution": lambda ly: _conv_layout(ly, lambda x: 0),
    "DeconvolutionDepthWise": lambda ly: _conv_layout(ly, lambda x: 0),
    "InnerProduct": _ip_layout,
    "BatchNorm": lambda ly: [(r, "raw", ly.geti(0)) for r in ("slope", "mean", "var", "bias")],
    "Scale": lambda ly: (
        ([("scale", "raw", ly.geti(0))] if ly.geti(0) != -233 else [])
        + ([("bias", "raw", ly.geti(0))] if ly.geti(1) else [])
    ),
    "PReLU": lambda ly: [("slope", "raw", ly.geti(0))],
    "Bias": lambda ly: [("bias", "raw", ly.geti(0))],
    "MemoryData": _memorydata_layout,
    "LayerNorm": lambda ly: [(r, "raw", ly.geti(0)) for r in ("gamma", "beta")] if ly.geti(2) else [],
    "InstanceNorm": lambda ly: [(r, "raw", ly.geti(0)) for r in ("gamma", "beta")] if ly.geti(2, 1) else [],
    "GroupNorm": lambda ly: [(r, "raw", ly.geti(1)) for r in ("gamma", "beta")] if ly.geti(3, 1) else [],
    "Embed": lambda ly: (
        [("weight", "auto", ly.geti(3))] + ([("bias", "raw", ly.geti(0))] if ly.geti(2) else [])
    ),
}


@dataclass
class WeightRecord:
    """One record of the ``.bin``: where it is, how it is stored and (for float data) its values."""

    layer: str
    role: str
    kind: str  # "auto" | "raw"
    count: int
    offset: int
    nbytes: int
    tag: int | None  # the type-0 tag (None for raw records)
    values: np.ndarray | None = None  # float32 values (None for int8 data)


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def read_bin(param: NcnnParam, path: Path) -> list[WeightRecord]:
    """Walk ``path`` record by record as ncnn's ``load_model`` would; fail clearly on any mismatch."""
    data = Path(path).read_bytes()
    pos = 0
    recs: list[WeightRecord] = []
    for ly in param.layers:
        layout = LAYOUTS.get(ly.type)
        if layout is None:
            continue
        for role, kind, count in layout(ly):
            start = pos
            if kind == "raw":
                nbytes = 4 * count
                vals = np.frombuffer(data, np.float32, count, pos) if pos + nbytes <= len(data) else None
                tag = None
            else:
                if pos + 4 > len(data):
                    raise OcrQuantError(f"truncated at layer {ly.name} ({role})", path)
                (tag,) = struct.unpack_from("<I", data, pos)
                pos += 4
                if tag == TAG_FP16:
                    nbytes = _align4(2 * count)
                    vals = np.frombuffer(data, np.float16, count, pos).astype(np.float32)
                elif tag == TAG_INT8:
                    raise OcrQuantError(f"layer {ly.name} is already INT8; quantize the float model", path)
                elif tag in (0, TAG_FP32_SCALED):
                    nbytes = 4 * count
                    vals = np.frombuffer(data, np.float32, count, pos) if pos + nbytes <= len(data) else None
                else:  # 256-entry lookup table then uint8 indices
                    table = np.frombuffer(data, np.float32, 256, pos)
                    idx = np.frombuffer(data, np.uint8, count, pos + 1024)
                    vals = table[idx]
                    nbytes = 1024 + _align4(count)
            if vals is None or pos + nbytes > len(data):
                raise OcrQuantError(
                    f"truncated at layer {ly.name} ({role}); does the .bin match the .param?", path
                )
            pos += nbytes
            recs.append(WeightRecord(ly.name, role, kind, count, start, pos - start, tag, vals))
    if pos != len(data):
        odd = sorted({ly.type for ly in param.layers if ly.type not in LAYOUTS})
        raise OcrQuantError(
            f"read {pos} of {len(data)} bytes: the .bin does not match the .param, or holds weights of a "
            f"layer type not handled here ({', '.join(odd) or 'none'})",
            path,
        )
    return recs


# --------------------------------------------------------------------------------------------- scales


def quantizable_layers(param: NcnnParam, exclude: Iterable[str] = ()) -> list[Layer]:
    """Layers ncnn can run INT8 (float weights, a single bottom, no dynamic weight), minus ``exclude``."""
    skip = set(exclude)
    out = []
    for ly in param.layers:
        if ly.type not in INT8_LAYERS or ly.name in skip or len(ly.bottoms) != 1:
            continue
        if ly.geti(19) or ly.geti(8):  # dynamic weights, or already int8
            continue
        out.append(ly)
    return out


def weight_scales(
    param: NcnnParam, records: list[WeightRecord], layers: list[Layer]
) -> dict[str, np.ndarray]:
    """``127 / absmax`` per output channel (per group for depthwise), 1 where a channel is all zero."""
    weights = {r.layer: r.values for r in records if r.role == "weight"}
    out = {}
    for ly in layers:
        w = weights[ly.name]
        rows = ly.geti(7, 1) if ly.type == "ConvolutionDepthWise" else ly.geti(0)
        absmax = np.abs(w.reshape(rows, -1)).max(axis=1)
        out[ly.name] = np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)
    return out


def activation_scales(
    stats: CalibrationStats, layers: list[Layer], method: str = DEFAULT_METHOD, **method_options: Any
) -> dict[str, float]:
    """``127 / threshold`` of each layer's bottom blob, the threshold from ocrquant's calibrator."""
    calibrator = create_calibrator(method, **method_options)
    spec = QSpec("int8", symmetric=True)
    out = {}
    for ly in layers:
        blob = ly.bottoms[0]
        if blob not in stats.tensors:
            raise OcrQuantError(f"no calibration statistics for blob '{blob}' (input of layer {ly.name})")
        lo, hi = calibrator.compute_range(stats.tensors[blob], spec)
        t = max(abs(float(lo)), abs(float(hi)))
        out[ly.name] = 127.0 / t if t > 0 else 1.0
    return out


# --------------------------------------------------------------------------------------------- table


@dataclass
class Int8Table:
    """ncnn's calibration table: weight scales per layer and one bottom-blob scale per layer."""

    weights: dict[str, np.ndarray]
    activations: dict[str, float]

    def without(self, names: Iterable[str]) -> Int8Table:
        """The table minus ``names`` (those layers stay float)."""
        drop = set(names)
        return Int8Table(
            {k: v for k, v in self.weights.items() if k not in drop},
            {k: v for k, v in self.activations.items() if k not in drop},
        )

    def text(self) -> str:
        lines = [f"{name}_param_0 " + " ".join(f"{s:.9g}" for s in sc) for name, sc in self.weights.items()]
        lines += [f"{name} {s:.9g}" for name, s in self.activations.items()]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        write_text_atomic(path, self.text())

    @classmethod
    def read(cls, path: Path) -> Int8Table:
        path = Path(path)
        if not path.is_file():
            raise OcrQuantError("calibration table not found", path)
        weights, acts = {}, {}
        for n, ln in enumerate(path.read_text().splitlines(), 1):
            tok = ln.split()
            if not tok:
                continue
            try:
                vals = [float(v) for v in tok[1:]]
            except ValueError:
                raise OcrQuantError(f"line {n}: scales must be numbers: {ln[:80]!r}", path) from None
            if not vals or not all(np.isfinite(v) and v > 0 for v in vals):
                raise OcrQuantError(f"line {n}: '{tok[0]}' needs positive finite scales", path)
            if "_param_" in tok[0]:
                weights[tok[0].rsplit("_param_", 1)[0]] = np.array(vals, np.float32)
            else:
                acts[tok[0]] = vals[0]
        return cls(weights, acts)


# --------------------------------------------------------------------------------------------- INT8 model


def _quantize_weights(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ncnn's ``quantize_to_int8``: round half away from zero, clamp to [-127, 127]."""
    x = w.reshape(len(scales), -1) * scales[:, None]
    q = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


def requantize_pairs(param: NcnnParam, quantized: set[str]) -> dict[str, str]:
    """INT8 (depthwise) convolutions whose output feeds only INT8 (depthwise) convolutions, directly or
    through one Split: producer -> the consumer whose bottom scale becomes the producer's top scale.

    ncnn then requantizes inside the producer (int32 accumulator -> int8 at the consumer's scale, with the
    fused activation) and the consumer skips its own quantization: the float round trip between the two
    layers disappears (``ncnn2int8``'s requantize fusion). Every consumer of one blob gets the same scale
    here (scales are computed per blob), so a Split fan-out is exact too.
    """
    convs = {"Convolution", "ConvolutionDepthWise"}
    by_name = param.by_name()
    consumers: dict[str, list[Layer]] = {}
    for ly in param.layers:
        for b in ly.bottoms:
            consumers.setdefault(b, []).append(ly)

    def int8_conv(ly: Layer) -> bool:
        return ly.type in convs and ly.name in quantized and len(ly.bottoms) == 1

    pairs = {}
    for name in quantized:
        ly = by_name[name]
        if ly.type not in convs or len(ly.tops) != 1:
            continue
        users = consumers.get(ly.tops[0], [])
        if len(users) != 1:
            continue
        user = users[0]
        if int8_conv(user):
            pairs[name] = user.name
        elif user.type == "Split":
            fan = [consumers.get(t, []) for t in user.tops]
            if all(len(f) == 1 and int8_conv(f[0]) for f in fan):
                pairs[name] = fan[0][0].name
    return pairs


def write_int8_model(
    param_path: Path,
    bin_path: Path,
    table: Int8Table,
    out_param: Path,
    out_bin: Path,
    *,
    table_path: Path | None = None,
    requantize: bool = True,
    float_weights_fp16: bool = True,
) -> dict[str, Any]:
    """``ncnn2int8`` in Python: quantize the layers the table names (and, with ``requantize``, fuse
    requantization between consecutive INT8 convolutions); returns a summary of what was done."""
    where = table_path or param_path
    param = NcnnParam.read(param_path)
    records = read_bin(param, bin_path)
    layers = param.by_name()
    for name in list(table.weights) + list(table.activations):
        if name not in layers:
            raise OcrQuantError(
                f"the table names layer '{name}', which {Path(param_path).name} does not have", where
            )
    for name in set(table.weights) | set(table.activations):
        ly = layers[name]
        if ly.type not in INT8_LAYERS:
            raise OcrQuantError(
                f"layer '{name}' is a {ly.type}; ncnn runs only {', '.join(INT8_LAYERS)} in INT8", where
            )
        if name not in table.activations:
            raise OcrQuantError(
                f"layer '{name}' has weight scales but no bottom blob scale line '{name} <scale>'", where
            )
        if name not in table.weights:
            raise OcrQuantError(
                f"layer '{name}' has a bottom blob scale but no '{name}_param_0' weight scales", where
            )
        rows = ly.geti(7, 1) if ly.type == "ConvolutionDepthWise" else ly.geti(0)
        if len(table.weights[name]) != rows:
            raise OcrQuantError(
                f"layer '{name}' needs {rows} weight scales, the table has {len(table.weights[name])}", where
            )
    data = Path(bin_path).read_bytes()
    out = bytearray()
    by_layer: dict[str, list[WeightRecord]] = {}
    for r in records:
        by_layer.setdefault(r.layer, []).append(r)
    quantized = []
    fused = requantize_pairs(param, set(table.weights)) if requantize else {}
    for ly in param.layers:
        recs = by_layer.get(ly.name, [])
        if ly.name not in table.weights:
            for r in recs:
                if float_weights_fp16 and r.kind == "auto" and r.tag == 0 and r.values is not None:
                    # as ncnn2int8 (storage_type 1): layers left float keep fp16 weights; ncnn widens them
                    # to fp32 at load, so only the weights are rounded, the arithmetic stays fp32
                    half = r.values.astype("<f2").tobytes()
                    out += struct.pack("<I", TAG_FP16) + half + b"\0" * (_align4(len(half)) - len(half))
                else:
                    out += data[r.offset : r.offset + r.nbytes]
            continue
        wsc = table.weights[ly.name]
        for r in recs:
            if r.role == "weight":
                q = _quantize_weights(r.values, wsc)
                out += struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * (_align4(len(q)) - len(q))
            else:
                out += data[r.offset : r.offset + r.nbytes]
        out += wsc.astype("<f4").tobytes() + struct.pack("<f", table.activations[ly.name])
        term = INT8_LAYERS[ly.type]
        if ly.name in fused:
            out += struct.pack("<f", table.activations[fused[ly.name]])
            term += 100
        ly.set(8, str(term))
        quantized.append(ly.name)
    with atomic_path(out_bin) as tmp:
        tmp.write_bytes(bytes(out))
    write_text_atomic(out_param, param.text())
    float_layers = [ly.name for ly in param.layers if ly.type in LAYOUTS and ly.name not in table.weights]
    return {
        "quantized_layers": quantized,
        "float_weight_layers": float_layers,
        "requantized_layers": sorted(fused),
    }


# --------------------------------------------------------------------------------------------- calibration


def _hist(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    idx = ((v.reshape(-1).astype(np.float32) - np.float32(lo)) * np.float32(bins / (hi - lo))).astype(
        np.int64
    )
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)[:bins]


def collect_blob_statistics(
    runner: Any,
    blobs: list[str],
    inputs: Callable[[], Iterable[np.ndarray]],
    *,
    total: int | None = None,
    bins: int = HIST_BINS,
    progress: bool = True,
) -> CalibrationStats:
    """Two passes of the float ncnn model over ``inputs()``: exact min/max, then fixed-range histograms.

    ``runner`` is an :class:`ocrquant.runtime.ncnn.NcnnRunner` (its ``blob_values``). Same semantics as
    the calibration package's ONNX statistics, so its calibrators apply unchanged.
    """
    mins = dict.fromkeys(blobs, np.inf)
    maxs = dict.fromkeys(blobs, -np.inf)
    count = 0
    for x in tqdm(
        inputs(), total=total, desc="ncnn calibration 1/2 (range)", disable=not progress, leave=False
    ):
        count += 1
        for b, v in runner.blob_values(x, blobs).items():
            if v.size:
                lo, hi = float(v.min()), float(v.max())
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise OcrQuantError(f"blob '{b}' produced NaN or Inf during calibration")
                mins[b], maxs[b] = min(mins[b], lo), max(maxs[b], hi)
    if count == 0:
        raise OcrQuantError("no calibration inputs")
    span = {
        b: (min(mins[b], 0.0), max(maxs[b], 0.0) if maxs[b] > min(mins[b], 0.0) else min(mins[b], 0.0) + 1e-8)
        for b in blobs
        if np.isfinite(mins[b])
    }
    hists = {b: np.zeros(bins, np.int64) for b in span}
    for x in tqdm(
        inputs(), total=total, desc="ncnn calibration 2/2 (histogram)", disable=not progress, leave=False
    ):
        for b, v in runner.blob_values(x, list(span)).items():
            hists[b] += _hist(v, *span[b], bins)
    return CalibrationStats({b: TensorStats(b, mins[b], maxs[b], hists[b], *span[b]) for b in span}, count)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else 1.0


def sensitivity_fallback(
    float_model: Any,
    table: Int8Table,
    inputs: list[np.ndarray],
    *,
    target_cos: float = 0.99,
    max_float: int = 8,
    threads: int = 0,
    progress: bool = True,
) -> tuple[list[str], dict[str, Any]]:
    """Layers to keep float so the INT8 model's outputs reach ``target_cos`` (cosine to the float model,
    worst over ``inputs``, calibration images), at most ``max_float`` of them.

    Why: ncnn quantizes activations per tensor; in PP-OCRv3 det a few layers (the FPN/head convs
    reading residual sums with thresholds near 1000, some depthwise convs) lose most of their signal and
    the errors compound (all layers INT8: output cosine about 0.85 whatever the range method). Each
    candidate is scored once by leaving it alone in float (everything else INT8); layers are then kept
    float in the order of that gain until the target is met. Cost: one INT8 build and run per layer.
    """
    from ocrquant.runtime import RuntimeOptions
    from ocrquant.runtime.ncnn import NcnnRunner

    opts = RuntimeOptions(threads=threads)
    ref_runner = NcnnRunner(float_model.param, opts)
    name = ref_runner.input_names[0]
    ref = [ref_runner.run({name: x})[0] for x in inputs]

    with scratch_dir("ncnn-fallback") as tmp:
        trial = Path(tmp) / "trial.param"
        side = float_model.to_json()
        side["bin"] = trial.with_suffix(".bin").name
        write_json_atomic(trial.with_suffix(".json"), side)

        def score(keep_float: set[str]) -> float:
            sub = table.without(keep_float)
            write_int8_model(float_model.param, float_model.bin, sub, trial, trial.with_suffix(".bin"))
            runner = NcnnRunner(trial, opts)
            return min(_cosine(r, runner.run({name: x})[0]) for r, x in zip(ref, inputs, strict=True))

        base = score(set())
        chosen: list[str] = []
        report: dict[str, Any] = {"all_int8_cos": base, "target_cos": target_cos}
        if base >= target_cos or max_float <= 0:
            report["final_cos"] = base
            return chosen, report
        gains = {}
        for layer in tqdm(list(table.weights), desc="ncnn sensitivity", disable=not progress, leave=False):
            gains[layer] = score({layer}) - base
        ranked = sorted(gains, key=lambda k: -gains[k])
        current = base
        for layer in ranked[:max_float]:
            if gains[layer] <= 0:
                break
            trial_cos = score({*chosen, layer})
            if trial_cos <= current:  # single-layer gains do not always add up: keep only what helps
                continue
            chosen.append(layer)
            current = trial_cos
            if current >= target_cos:
                break
        report.update(final_cos=current, gains={k: round(gains[k], 5) for k in ranked[: max(max_float, 10)]})
    return chosen, report


@dataclass
class NcnnInt8Result:
    """What :func:`quantize_ncnn` produced."""

    param: Path
    bin: Path
    table: Path
    method: str
    calib_size: int
    quantized_layers: list[str]
    float_weight_layers: list[str]
    requantized_layers: list[str] = field(default_factory=list)
    slower_in_int8: list[str] = field(default_factory=list)


def quantize_ncnn(
    float_param: str | Path,
    calib_inputs: Callable[[], Iterable[np.ndarray]],
    out_param: str | Path,
    *,
    calib_size: int | None = None,
    method: str = DEFAULT_METHOD,
    method_options: dict[str, Any] | None = None,
    exclude: Iterable[str] = (),
    stats_cache: Path | None = None,
    stats_key: str = "",
    int8_layers: str = "faster",
    min_gain: float = 0.05,
    fallback_inputs: list[np.ndarray] | None = None,
    target_cos: float = 0.99,
    max_float: int = 8,
    threads: int = 0,
    progress: bool = True,
) -> NcnnInt8Result:
    """Float ncnn model + calibration inputs -> calibration table + INT8 model (+ sidecar JSON).

    ``int8_layers``: ``faster`` (default) quantizes only the layers that run at least ``min_gain``
    faster in INT8 than in float on this CPU, each timed alone on the first calibration input
    (:mod:`ocrquant.quantization.ncnn_speed`; the timings go into the sidecar); ``all`` quantizes every
    layer ncnn can run in INT8, as ``ncnn2int8`` does.

    ``calib_inputs`` yields preprocessed NCHW batches (batch 1) and is called twice. ``stats_cache``
    (an ``.npz``) keeps the blob statistics: another ``method`` then re-runs no model; ``stats_key`` says
    what the calibration inputs were (the cache is reused only for the same model and key). With
    ``fallback_inputs`` (a few calibration images), :func:`sensitivity_fallback` picks up to
    ``max_float`` layers to keep float until the INT8 output reaches ``target_cos``.
    """
    from ocrquant.frontends.ncnn_export import load_ncnn_model, sidecar_path
    from ocrquant.runtime import RuntimeOptions
    from ocrquant.runtime.ncnn import NcnnRunner

    if int8_layers not in INT8_LAYER_CHOICES:
        raise OcrQuantError(f"unknown int8_layers '{int8_layers}' (known: {', '.join(INT8_LAYER_CHOICES)})")
    float_model = load_ncnn_model(float_param)
    param = NcnnParam.read(float_model.param)
    records = read_bin(param, float_model.bin)
    layers = quantizable_layers(param, exclude)
    blobs = sorted({ly.bottoms[0] for ly in layers})
    stats = None
    key = hashlib.sha256(
        (float_model.param.read_text() + str(float_model.bin.stat().st_size) + stats_key).encode()
    ).hexdigest()
    if stats_cache is not None and stats_cache.is_file() and stats_cache.with_suffix(".key").is_file():
        if stats_cache.with_suffix(".key").read_text() == key:
            stats = CalibrationStats.load(stats_cache)
            if not set(blobs) <= set(stats.tensors):
                stats = None
    if stats is None:
        runner = NcnnRunner(float_model.param, RuntimeOptions(threads=threads))
        stats = collect_blob_statistics(runner, blobs, calib_inputs, total=calib_size, progress=progress)
        if stats_cache is not None:
            with atomic_path(stats_cache) as tmp:
                with open(tmp, "wb") as f:
                    stats.save(f)  # type: ignore[arg-type]
            write_text_atomic(stats_cache.with_suffix(".key"), key)
    table = Int8Table(
        weight_scales(param, records, layers),
        activation_scales(stats, layers, method, **(method_options or {})),
    )
    speed: dict[str, Any] = {"int8_layers": int8_layers}
    slower: list[str] = []
    if int8_layers == "faster" and table.weights:
        from ocrquant.quantization.ncnn_speed import time_layers

        first = next(iter(calib_inputs()))
        timings = time_layers(float_model, param, records, table, first, threads=threads, progress=progress)
        slower = [t.layer for t in timings if not t.faster_in_int8(min_gain)]
        table = table.without(slower)
        speed.update(
            min_gain=min_gain,
            slower_in_int8=slower,
            layer_timings=[asdict(t) for t in timings],
        )
    out_param = Path(out_param)
    out_bin = out_param.with_suffix(".bin")
    table_path = out_param.with_suffix(".table")
    fallback: dict[str, Any] = {}
    if fallback_inputs:
        keep, fallback = sensitivity_fallback(
            float_model,
            table,
            fallback_inputs,
            target_cos=target_cos,
            max_float=max_float,
            threads=threads,
            progress=progress,
        )
        table = table.without(keep)
        fallback["kept_float"] = keep
    table.write(table_path)
    summary = write_int8_model(float_model.param, float_model.bin, table, out_param, out_bin)
    side = float_model.to_json()
    side.update(
        bin=out_bin.name,
        precision="int8",
        int8_table=table_path.name,
        calibration_method=method,
        calibration_inputs=stats.num_inputs,
        float_model=float_model.param.name,
        speed=speed,
        fallback=fallback,
        **summary,
    )
    write_json_atomic(sidecar_path(out_param), side)
    return NcnnInt8Result(
        out_param,
        out_bin,
        table_path,
        method,
        stats.num_inputs,
        summary["quantized_layers"],
        summary["float_weight_layers"],
        summary["requantized_layers"],
        slower,
    )


def quantize_with_table(
    float_param: str | Path, table_path: str | Path, out_param: str | Path
) -> dict[str, Any]:
    """Apply an existing calibration table (ours or ``ncnn2table``'s) to a float ncnn model."""
    from ocrquant.frontends.ncnn_export import load_ncnn_model, sidecar_path

    float_model = load_ncnn_model(float_param)
    table = Int8Table.read(Path(table_path))
    out_param = Path(out_param)
    summary = write_int8_model(
        float_model.param,
        float_model.bin,
        table,
        out_param,
        out_param.with_suffix(".bin"),
        table_path=Path(table_path),
    )
    side = float_model.to_json()
    side.update(
        bin=out_param.with_suffix(".bin").name, precision="int8", int8_table=str(table_path), **summary
    )
    write_json_atomic(sidecar_path(out_param), side)
    return summary


def read_sidecar(param: Path) -> dict[str, Any]:
    side = Path(param).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


# --------------------------------------------------------------------------------------------- report


def _file_sha(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _eval_once(
    task_obj: Any,
    runner: Any,
    dataset: Any,
    name: str,
    out: Path,
    limit: int | None,
    settings: dict[str, Any],
) -> Any:
    """Evaluate, reusing ``out`` when it was written with the same settings (model hash included), and
    resuming a partial run otherwise (the evaluator's own partial log)."""
    from ocrquant.evaluation import EvalResult, evaluate

    if out.is_file():
        try:
            done = json.loads(out.read_text())
            if {k: done["settings"].get(k) for k in settings} == settings and done["settings"].get(
                "limit"
            ) == limit:
                return EvalResult(**done)
        except (ValueError, KeyError, TypeError):
            pass
    return evaluate(
        task_obj, runner, dataset, model_name=name, limit=limit, output=out, extra_settings=settings
    )


def ncnn_report(
    model: str | Path,
    task: str | None,
    test_data: str | Path,
    calib_data: str | Path,
    *,
    out_dir: str | Path = Path("runs/ncnn"),
    method: str = DEFAULT_METHOD,
    method_options: dict[str, Any] | None = None,
    calib_size: int = 200,
    seed: int = 0,
    limit: int | None = None,
    threads: int = 2,
    latency_images: int = 10,
    latency_rounds: int = 3,
    task_options: dict[str, Any] | None = None,
    exclude: Iterable[str] = (),
    compare_onnxruntime: bool = True,
    int8_layers: str = "faster",
    max_float: int = 0,
    target_cos: float = 0.99,
    fallback_images: int = 3,
    progress: bool = True,
) -> Any:
    """Float vs INT8 in ncnn for one model: metric on ``test_data``, model size, interleaved latency.

    The float model is the pnnx conversion of ``model`` (cached beside its ONNX file); the INT8 model,
    its calibration table and blob statistics go to ``out_dir``. With ``compare_onnxruntime`` the ONNX
    model is also evaluated with onnxruntime, so the report proves the ncnn float model scores the same.
    ``int8_layers``: see :func:`quantize_ncnn` (``faster``: only the layers INT8 speeds up here).
    ``max_float`` > 0 enables :func:`sensitivity_fallback` on the first ``fallback_images`` calibration
    images. Returns a :class:`ocrquant.report.ReportRow` (``details`` holds the rest).
    """
    from ocrquant.api import build_task, infer_task
    from ocrquant.data import load_image, open_dataset, sample_calibration
    from ocrquant.evaluation.evaluate import preprocessed_inputs
    from ocrquant.frontends.ncnn_export import ncnn_model_for
    from ocrquant.report import ReportRow
    from ocrquant.runtime import RuntimeOptions, create_runner
    from ocrquant.runtime.timing import interleaved_runs
    from ocrquant.zoo.resolve import resolve_model

    out_dir = Path(out_dir)
    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    task_obj = build_task(task_name, resolved, task_options)
    test_set = open_dataset(Path(test_data), task_name)
    calib_set = open_dataset(Path(calib_data), task_name)
    if test_set.root.resolve() == calib_set.root.resolve():
        raise OcrQuantError("calibration and test data are the same directory", calib_set.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_model = ncnn_model_for(resolved.path)
    picked = sample_calibration(calib_set, calib_size, seed)

    def calib_inputs() -> Iterable[np.ndarray]:
        for s in picked:
            yield task_obj.preprocess([load_image(s)]).inputs

    int8_param = out_dir / f"{resolved.name}.int8.ncnn.param"
    stats_key = json.dumps(
        {"calib": str(calib_set.root), "keys": [s.key for s in picked], "task_config": repr(task_obj.config)}
    )
    q = quantize_ncnn(
        float_model.param,
        calib_inputs,
        int8_param,
        calib_size=len(picked),
        method=method,
        method_options=method_options,
        exclude=exclude,
        stats_cache=out_dir / f"{resolved.name}.ncnn_stats.npz",
        stats_key=stats_key,
        int8_layers=int8_layers,
        fallback_inputs=[task_obj.preprocess([load_image(s)]).inputs for s in picked[:fallback_images]]
        if max_float > 0
        else None,
        target_cos=target_cos,
        max_float=max_float,
        threads=threads,
        progress=progress,
    )
    opts = RuntimeOptions(threads=threads)
    runners = {
        "float": create_runner(float_model.param, "ncnn", opts),
        "int8": create_runner(q.param, "ncnn", opts),
    }
    files = {"float": [float_model.param, float_model.bin], "int8": [q.param, q.bin]}
    results = {}
    for key, runner in runners.items():
        settings = {"backend": "ncnn", "model_sha": _file_sha(files[key])}
        results[key] = _eval_once(
            task_obj,
            runner,
            test_set,
            f"{resolved.name}-ncnn-{key}",
            out_dir / f"eval_ncnn_{key}.json",
            limit,
            settings,
        )
    ort_metric = None
    if compare_onnxruntime:
        ort_runner = create_runner(resolved.path, "onnxruntime", opts)
        ort_res = _eval_once(
            task_obj,
            ort_runner,
            test_set,
            f"{resolved.name}-onnxruntime",
            out_dir / "eval_onnxruntime_float.json",
            limit,
            {"backend": "onnxruntime", "model_sha": _file_sha([resolved.path])},
        )
        ort_metric = ort_res.primary
    lat_inputs = preprocessed_inputs(task_obj, test_set, latency_images)
    lat = interleaved_runs(runners, {k: lat_inputs for k in runners}, rounds=latency_rounds, warmup=1)
    size = {k: sum(p.stat().st_size for p in v) / 2**20 for k, v in files.items()}
    return ReportRow.from_evals(
        resolved.name,
        task_name,
        results["float"],
        results["int8"],
        (lat["float"].median_ms, lat["int8"].median_ms),
        (size["float"], size["int8"]),
        task_obj=task_obj,
        framework=resolved.framework,
        float_nodes=q.float_weight_layers,
        details={
            "backend": "ncnn",
            "onnxruntime float metric": ort_metric,
            "calibration": {
                "method": method,
                "images": q.calib_size,
                "data": str(calib_set.root),
                "seed": seed,
            },
            "quantized layers": len(q.quantized_layers),
            "requantized layers": len(q.requantized_layers),
            "int8 layers": int8_layers,
            "kept float, slower in INT8 here": q.slower_in_int8,
            "kept float by sensitivity": read_sidecar(q.param).get("fallback", {}).get("kept_float", []),
            "float model": str(float_model.param),
            "int8 model": str(q.param),
            "int8 table": str(q.table),
            "size ratio": round(size["int8"] / size["float"], 4),
            "latency": {k: vars(v) for k, v in lat.items()},
            "threads": threads,
            "ncnn conversion": {
                k: float_model.info.get(k) for k in ("route", "max_abs_diff_vs_onnxruntime", "onnx_fixes")
            },
        },
    )
