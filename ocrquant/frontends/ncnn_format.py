"""ncnn's model files as data: the ``.param`` text (layers, blobs, params), the ``.bin`` weight records
per layer type, the calibration table (``ncnn2table``'s text format) and the INT8 model ``ncnn2int8``
writes. Readers and writers only; what to quantize and with which scales is
:mod:`ocrquant.quantization.ncnn_int8`."""

from __future__ import annotations

import shlex
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, write_text_atomic

MAGIC = "7767517"


TAG_FP16 = 0x01306B47


TAG_INT8 = 0x000D4B38


TAG_FP32_SCALED = 0x0002C056


# layer type -> the int8_scale_term value ncnn2int8 gives it
INT8_LAYERS = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}


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
