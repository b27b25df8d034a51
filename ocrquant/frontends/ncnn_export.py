"""ONNX / PyTorch -> ncnn (.param + .bin) with pnnx, verified against onnxruntime.

Install with ``pip install 'ocrquant[ncnn]'`` (pins ncnn==1.0.20261020, pnnx==20261020; pnnx needs torch).

Why each step is the way it is:

* **Two routes, one result.** pnnx converts TorchScript (its most mature path) and ONNX. A model that
  came from PyTorch (ONNX metadata ``source_framework=torch`` with its checkpoint beside it, e.g. the
  zoo's CRAFT) is converted from a fresh trace of the network; any other ONNX model (PP-OCR from
  Paddle exists only as ONNX) goes through pnnx's ONNX importer. pnnx's ONNX route turns CRAFT's
  shape-dependent ``Resize`` into ``pnnx.Expression`` layers that ncnn cannot load, while the
  TorchScript route emits ``Interp`` layers sized from the skip tensor, which ncnn runs natively.
* **The Resize fix (PP-OCRv3 det).** paddle2onnx writes every ``Resize`` (opset 11/12) with a
  non-empty ``roi`` constant (eight ones). pnnx only recognises ``Resize`` as ``F.upsample`` when
  ``roi`` is empty, so it passed the six upsampling nodes through as raw ``Resize`` layers and
  ncnn 1.0.20261020 refused the model at ``load_param`` ("layer Resize not exists or registered").
  The ONNX spec says ``roi`` is only read when ``coordinate_transformation_mode`` is
  ``tf_crop_and_resize``; for every other mode it is dead input. We therefore replace it by an empty
  tensor (opset <= 12 does not allow leaving the input out) before pnnx runs: the model's arithmetic
  is unchanged and pnnx emits ncnn ``Interp`` layers with scale factors (so any input size works).
* **Dynamic shapes.** pnnx is given two input shapes (``inputshape`` and ``inputshape2``) for
  dynamic height/width so it keeps shape expressions dynamic, and the result is then verified at a
  *third* size, which proves the converted model is not specialised to the probe sizes.
* **Unknown layers are a clear error.** Every layer type of the emitted ``.param`` is checked against
  ncnn's layer registry before loading, so a pnnx pass-through names the op instead of failing later.
* **Names.** pnnx names blobs ``in0``, ``out0``...; ocrquant's runners speak ONNX names. The mapping
  (and each output's rank, since ncnn drops the batch axis) is written at conversion time to
  ``<stem>.ncnn.json`` beside the ``.param``, together with the verification result.
* **Float32.** pnnx is run with ``fp16=0`` (its default stores weights in half precision), so the
  ncnn model is the same float model as the ONNX one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ocrquant.data import load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError, missing_extra
from ocrquant.fileio import atomic_path, scratch_dir, sha256_file, write_json_atomic
from ocrquant.frontends.torch import ARCHS, load_network, require_torch, resolve_arch, select_outputs
from ocrquant.onnx_shapes import declared_dims

log = logging.getLogger("ocrquant")

EXTRA = "ncnn"
NCNN_REQUIREMENT = "ncnn==1.0.20261020"
PNNX_REQUIREMENT = "pnnx==20261020"
SIDECAR_FORMAT = "ocrquant-ncnn/1"
DEFAULT_TOLERANCE = 1e-3
# sizes substituted for dynamic height/width: pnnx's two probes, then the verification size
PROBE_HW = (640, 640)
PROBE2_HW = (480, 800)
VERIFY_MAX_SIDE = 480
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def require_ncnn() -> Any:
    """Import the ncnn Python bindings, or say in one line how to get them."""
    try:
        import ncnn
    except ImportError as exc:
        raise missing_extra(EXTRA, "the ncnn backend", exc) from None
    return ncnn


def pnnx_executable() -> Path:
    """The pnnx converter binary shipped in the ``pnnx`` wheel (found without importing torch)."""
    spec = importlib.util.find_spec("pnnx")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pnnx" for p in spec.submodule_search_locations]
    which = shutil.which("pnnx")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file():
            return c
    raise missing_extra(EXTRA, "conversion to ncnn (pnnx)")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


# ------------------------------------------------------------------------------------------ model files


@dataclass
class BlobMap:
    """One model input or output: its ONNX name, the ncnn blob carrying it, and the ONNX rank."""

    name: str
    blob: str
    rank: int


@dataclass
class NcnnModel:
    """An ncnn model on disk with the ONNX<->ncnn name mapping read from its sidecar JSON."""

    param: Path
    bin: Path
    inputs: list[BlobMap]
    outputs: list[BlobMap]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.param)

    def size_bytes(self) -> int:
        return self.param.stat().st_size + self.bin.stat().st_size

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "bin": self.bin.name,
            "inputs": [asdict(b) for b in self.inputs],
            "outputs": [asdict(b) for b in self.outputs],
            **self.info,
        }


def sidecar_path(param: Path) -> Path:
    """``model.ncnn.param`` -> ``model.ncnn.json``."""
    return Path(param).with_suffix(".json")


def bin_path(param: Path) -> Path:
    return Path(param).with_suffix(".bin")


def load_ncnn_model(param: str | Path) -> NcnnModel:
    """The model at ``param`` with its name mapping; without a sidecar, ncnn's own blob names are used."""
    param = Path(param)
    if not param.is_file():
        raise OcrQuantError("ncnn .param file not found", param)
    side = sidecar_path(param)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
            inputs = [BlobMap(**b) for b in data["inputs"]]
            outputs = [BlobMap(**b) for b in data["outputs"]]
            binf = param.parent / data.get("bin", bin_path(param).name)
        except (ValueError, KeyError, TypeError) as exc:
            raise OcrQuantError(f"unreadable ncnn sidecar ({exc})", side) from None
        info = {k: v for k, v in data.items() if k not in ("inputs", "outputs", "bin", "format")}
        return NcnnModel(param, binf, inputs, outputs, info)
    # a bare .param (converted elsewhere): ncnn's input/output blob names double as the names
    ncnn = require_ncnn()
    net = ncnn.Net()
    if net.load_param(str(param)) != 0:
        raise OcrQuantError("ncnn cannot parse the .param file", param)
    ins = [BlobMap(n, n, 4) for n in net.input_names()]
    outs = [BlobMap(n, n, 4) for n in net.output_names()]
    return NcnnModel(param, bin_path(param), ins, outs, {})


def layer_types(param: Path) -> list[tuple[str, str]]:
    """(type, name) of every layer in a ``.param`` file (text format)."""
    lines = Path(param).read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise OcrQuantError("not an ncnn text .param file (magic 7767517 missing)", param)
    out = []
    for line in lines[2:]:
        parts = line.split()
        if len(parts) >= 2:
            out.append((parts[0], parts[1]))
    return out


def check_layers_known(param: Path) -> None:
    """Fail with the offending op names when the .param holds layer types ncnn does not have."""
    ncnn = require_ncnn()
    unknown: dict[str, list[str]] = {}
    for kind, name in layer_types(param):
        if ncnn.layer_to_index(kind) < 0:
            unknown.setdefault(kind, []).append(name)
    if unknown:
        desc = "; ".join(
            f"{k} ({', '.join(v[:3])}{' ...' if len(v) > 3 else ''})" for k, v in unknown.items()
        )
        raise OcrQuantError(f"pnnx left layer types ncnn cannot run: {desc}", param)


# ------------------------------------------------------------------------------------------ ONNX fixes


def drop_unused_resize_roi(model: onnx.ModelProto) -> int:
    """Replace the ``roi`` input of every Resize whose mode ignores it by an empty tensor, in place.

    Returns how many nodes were changed. See the module docstring: pnnx only converts a Resize to
    ncnn ``Interp`` when ``roi`` is empty, and ONNX defines ``roi`` as unused unless the
    coordinate transformation mode is ``tf_crop_and_resize``.
    """
    changed = 0
    empty = None
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 2 or not node.input[1]:
            continue
        mode = next(
            (a.s.decode() for a in node.attribute if a.name == "coordinate_transformation_mode"), "half_pixel"
        )
        if mode == "tf_crop_and_resize":
            continue
        if empty is None:
            empty = "ocrquant_ncnn_empty_roi"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), empty))
        node.input[1] = empty
        changed += 1
    return changed


ONNX_FIXES = {"resize_roi": drop_unused_resize_roi}


# ------------------------------------------------------------------------------------------ shapes/inputs


def _input_shapes(dims: list[int | str | None]) -> tuple[list[int], list[int], list[int], bool]:
    """(probe, probe2, verify) shapes for one NCHW-like input, and whether any dim is dynamic."""
    if len(dims) != 4:
        raise OcrQuantError(f"ncnn conversion supports one rank-4 image input, got rank {len(dims)}")
    dynamic = False
    shapes: list[list[int]] = []
    for hw in (PROBE_HW, PROBE2_HW, None):
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d if axis != 0 else 1)
                continue
            dynamic = True
            if axis == 0:
                shape.append(1)
            elif axis == 1:
                raise OcrQuantError("the channel dimension of the model input must be fixed")
            else:
                shape.append(hw[axis - 2] if hw else -1)
        shapes.append(shape)
    return shapes[0], shapes[1], shapes[2], dynamic


def verification_input(shape: list[int]) -> np.ndarray:
    """A real image (the embedded sample's first det image), resized to ``shape`` and normalised.

    Dynamic (-1) height/width become the image's size at max side 480, rounded to multiples of 32:
    a size neither pnnx probe used. Real pixels rather than noise, so activations are realistic.
    """

    image = load_image(open_dataset(sample_root() / "det", "det").samples[0])
    n, c, h, w = shape
    if h < 0 or w < 0:
        ih, iw = image.shape[:2]
        r = VERIFY_MAX_SIDE / max(ih, iw)
        h = h if h > 0 else max(32, int(round(ih * r / 32)) * 32)
        w = w if w > 0 else max(32, int(round(iw * r / 32)) * 32)
    rgb = cv2.cvtColor(cv2.resize(image, (w, h)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    x = ((rgb - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)
    if c != 3:
        x = np.repeat(x.mean(axis=0, keepdims=True), c, axis=0)
    return np.ascontiguousarray(np.broadcast_to(x[None], (n, c, h, w)), dtype=np.float32)


# ------------------------------------------------------------------------------------------ pnnx


def _shape_arg(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def run_pnnx(source: Path, workdir: Path, probe: list[int], probe2: list[int] | None) -> tuple[Path, Path]:
    """Run pnnx on ``source`` (inside ``workdir``, where it writes its side files); return param, bin."""
    args = [str(pnnx_executable()), source.name, f"inputshape={_shape_arg(probe)}", "fp16=0"]
    if probe2 is not None:
        args.append(f"inputshape2={_shape_arg(probe2)}")
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=1800)
    (workdir / "pnnx.log").write_text(proc.stdout + proc.stderr)
    stem = source.stem
    param, binf = workdir / f"{stem}.ncnn.param", workdir / f"{stem}.ncnn.bin"
    if proc.returncode != 0 or not param.is_file() or not binf.is_file():
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-1:] or ["no output"]
        raise OcrQuantError(f"pnnx failed (exit {proc.returncode}): {tail[0][:200]}", source)
    return param, binf


def run_ncnn(
    param: Path, binf: Path, feeds: list[tuple[str, np.ndarray]], outputs: list[BlobMap], threads: int = 0
) -> list[np.ndarray]:
    """One fp32 ncnn inference (batch 1) returning outputs reshaped to their ONNX rank."""
    ncnn = require_ncnn()
    net = ncnn.Net()
    configure_options(net.opt, threads)
    if net.load_param(str(param)) != 0 or net.load_model(str(binf)) != 0:
        raise OcrQuantError("ncnn cannot load the converted model", param)
    with net.create_extractor() as ex:
        for blob, x in feeds:
            item = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat borrows it: keep it alive
            ex.input(blob, ncnn.Mat(item).clone())
        outs = []
        for o in outputs:
            ret, mat = ex.extract(o.blob)
            if ret != 0:
                raise OcrQuantError(f"ncnn could not compute output blob '{o.blob}'", param)
            outs.append(to_rank(np.array(mat), o.rank))
    net.clear()
    return outs


def configure_options(opt: Any, threads: int = 0, lightmode: bool = True, spinning: bool = False) -> None:
    """Float32 everywhere (no fp16/bf16 storage or arithmetic): the ncnn model must compute what the ONNX
    model computes; INT8 layers still run INT8 (``use_int8_inference`` stays on).

    Without ``spinning`` the OpenMP block time is 0: ncnn's default (20 ms of busy-waiting after each
    parallel region) steals the cores of whatever runs next, as onnxruntime's spinning does.
    """
    opt.lightmode = lightmode
    if threads:
        opt.num_threads = threads
    if not spinning and hasattr(opt, "openmp_blocktime"):
        opt.openmp_blocktime = 0
    for flag in (
        "use_fp16_storage",
        "use_fp16_arithmetic",
        "use_fp16_packed",
        "use_bf16_storage",
        "use_bf16_packed",
    ):
        if hasattr(opt, flag):
            setattr(opt, flag, False)
    opt.use_int8_inference = True


def to_rank(arr: np.ndarray, rank: int) -> np.ndarray:
    """ncnn drops the batch axis (and leading unit axes); restore the ONNX rank."""
    while arr.ndim < rank:
        arr = arr[None]
    return arr


def max_abs_diff(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(reference, other, strict=True):
        if a.shape != b.shape:
            raise OcrQuantError(f"ncnn output shape {list(b.shape)} differs from ONNX {list(a.shape)}")
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


@dataclass
class OrtReference:
    """onnxruntime's outputs of the source ONNX model on the verification input ``x``."""

    input_names: list[str]
    output_names: list[str]
    x: np.ndarray
    outputs: list[np.ndarray]


def _ort_outputs(onnx_path: Path, x: np.ndarray) -> OrtReference:

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    return OrtReference(ins, outs, x, sess.run(None, {ins[0]: x}))


def _finish(
    param: Path,
    binf: Path,
    onnx_path: Path,
    reference: OrtReference,
    target_param: Path,
    info: dict[str, Any],
    tolerance: float,
) -> NcnnModel:
    """Check, verify against onnxruntime, and move param/bin/sidecar to their destination atomically."""
    check_layers_known(param)
    ref_in, ref_out, x, ref = reference.input_names, reference.output_names, reference.x, reference.outputs
    inputs = [BlobMap(n, f"in{i}", 4) for i, n in enumerate(ref_in)]
    outputs = [BlobMap(n, f"out{i}", r.ndim) for i, (n, r) in enumerate(zip(ref_out, ref, strict=True))]
    got = run_ncnn(param, binf, [(inputs[0].blob, x)], outputs)
    diff = max_abs_diff(ref, got)
    if not diff <= tolerance:
        raise OcrQuantError(
            f"ncnn conversion differs from onnxruntime by {diff:.3g} (max abs, input {list(x.shape)}), above "
            f"the tolerance {tolerance:g}; nothing written",
            onnx_path,
        )
    info = {
        **info,
        "source": onnx_path.name,
        "source_sha256": sha256_file(onnx_path),
        "verify_input_shape": list(x.shape),
        "max_abs_diff_vs_onnxruntime": diff,
        "precision": "fp32",
        "ncnn": _version("ncnn"),
        "pnnx": _version("pnnx"),
    }
    model = NcnnModel(target_param, bin_path(target_param), inputs, outputs, info)
    with atomic_path(model.bin) as tmp:
        shutil.copyfile(binf, tmp)
    with atomic_path(model.param) as tmp:
        shutil.copyfile(param, tmp)
    write_json_atomic(model.sidecar, model.to_json())
    return model


def convert_onnx(
    onnx_path: str | Path, output: str | Path | None = None, *, tolerance: float = DEFAULT_TOLERANCE
) -> NcnnModel:
    """Convert an ONNX model with pnnx's ONNX importer (after :data:`ONNX_FIXES`), verified.

    ``output`` is the ``.param`` path (default: ``<stem>.ncnn.param`` beside the ONNX file).
    """
    onnx_path = Path(onnx_path)
    target = Path(output) if output else default_param_path(onnx_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception:
        raise OcrQuantError("not a readable ONNX model", onnx_path) from None
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise OcrQuantError(f"ncnn conversion expects one model input, found {len(graph_inputs)}", onnx_path)
    probe, probe2, verify, dynamic = _input_shapes(declared_dims(graph_inputs[0], None))
    fixes = {name: fix(model) for name, fix in ONNX_FIXES.items()}
    x = verification_input(verify)
    reference = _ort_outputs(onnx_path, x)
    with scratch_dir("pnnx") as tmp:
        work = Path(tmp)
        src = work / "model.onnx"
        onnx.save(model, str(src))
        param, binf = run_pnnx(src, work, probe, probe2 if dynamic else None)
        return _finish(
            param,
            binf,
            onnx_path,
            reference,
            target,
            {"route": "onnx", "onnx_fixes": {k: v for k, v in fixes.items() if v}},
            tolerance,
        )


def convert_torch_checkpoint(
    checkpoint: str | Path,
    onnx_reference: str | Path,
    arch: str = "craft",
    output: str | Path | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> NcnnModel:
    """Convert a PyTorch checkpoint through TorchScript (a trace of ``arch`` with the weights loaded
    strictly by the torch frontend), verified against ``onnx_reference`` (the same network's ONNX)."""

    torch = require_torch()
    checkpoint, onnx_reference = Path(checkpoint), Path(onnx_reference)
    target = Path(output) if output else default_param_path(onnx_reference)
    spec = resolve_arch(arch)
    net = select_outputs(load_network(spec, checkpoint), spec)
    ref_model = onnx.load(str(onnx_reference), load_external_data=False)
    probe, probe2, verify, dynamic = _input_shapes(declared_dims(ref_model.graph.input[0], None))
    x = verification_input(verify)
    reference = _ort_outputs(onnx_reference, x)
    with scratch_dir("pnnx") as tmp:
        work = Path(tmp)
        src = work / "model.pt"
        with torch.no_grad():
            traced = torch.jit.trace(net, torch.zeros(*probe))
        traced.save(str(src))
        param, binf = run_pnnx(src, work, probe, probe2 if dynamic else None)
        return _finish(
            param,
            binf,
            onnx_reference,
            reference,
            target,
            {"route": "torchscript", "arch": spec.name, "checkpoint": checkpoint.name},
            tolerance,
        )


def default_param_path(onnx_path: Path) -> Path:
    """Where the ncnn conversion of ``model.onnx`` is cached: ``model.ncnn.param`` beside it."""
    return Path(onnx_path).with_suffix(".ncnn.param")


def torch_source(onnx_path: Path) -> tuple[Path, str] | None:
    """(checkpoint, arch) when ``onnx_path`` was exported by the torch frontend and its checkpoint is
    beside it (the zoo layout), so the TorchScript route can be taken."""
    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception:
        raise OcrQuantError("not a readable ONNX model", onnx_path) from None
    if meta.get("source_framework") != "torch" or not meta.get("source_model"):
        return None

    ckpt = onnx_path.parent / meta["source_model"]
    arch = meta.get("arch", "")
    if arch not in ARCHS or not ckpt.is_file():
        return None
    return ckpt, arch


def ncnn_model_for(onnx_path: str | Path, *, refresh: bool = False) -> NcnnModel:
    """The cached ncnn conversion of ``onnx_path`` (converted now if absent or stale).

    The cache is valid while its sidecar's ``source_sha256`` matches the ONNX file.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise OcrQuantError("model file not found", onnx_path)
    param = default_param_path(onnx_path)
    if not refresh and param.is_file() and sidecar_path(param).is_file():
        cached = load_ncnn_model(param)
        if cached.bin.is_file() and cached.info.get("source_sha256") == sha256_file(onnx_path):
            return cached
    source = torch_source(onnx_path)
    log.info("converting %s to ncnn with pnnx (%s route)", onnx_path, "TorchScript" if source else "ONNX")
    if source is not None:
        model = convert_torch_checkpoint(source[0], onnx_path, source[1], param)
    else:
        model = convert_onnx(onnx_path, param)
    log.info(
        "ncnn model %s: max abs diff vs onnxruntime %.3g at input %s",
        model.param,
        model.info["max_abs_diff_vs_onnxruntime"],
        model.info["verify_input_shape"],
    )
    return model


__all__ = [
    "EXTRA",
    "NCNN_REQUIREMENT",
    "PNNX_REQUIREMENT",
    "BlobMap",
    "NcnnModel",
    "check_layers_known",
    "configure_options",
    "convert_onnx",
    "convert_torch_checkpoint",
    "drop_unused_resize_roi",
    "load_ncnn_model",
    "ncnn_model_for",
    "pnnx_executable",
    "require_ncnn",
    "run_ncnn",
    "to_rank",
    "verification_input",
]
