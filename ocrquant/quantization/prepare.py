"""Graph preparation: turn an exported OCR model into the float graph the quantizer should see.

Why each step:

* **opset >= 13** - per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) only exists
  from opset 13; quantizing a PP-OCR opset 11/12 export per-channel writes an invalid model.
* **ONNX Runtime BASIC offline optimisation** - constant folding, BatchNorm folded into the Conv
  weights, Identity/Dropout removal. Folding BN before calibration matters: the quantizer must see the
  weights that will actually run, or per-channel weight scales are computed on the wrong tensors.
  We let ORT write the folded model (``optimized_model_filepath``) instead of hand-rewriting graphs.
* **Scalar affine folding** - PP-LCNetV3 (PP-OCRv4 rec) follows convolutions and activations with
  "learnable affine blocks", ``Add(Mul(x, a), b)`` with learned scalars, which onnxruntime does not
  fold. Each is two more per-tensor requantisations per block in an INT8 graph. Folded into the
  Conv before it (always exact) or after it (exact when that Conv has no padding), they cost nothing.
* **HardSwish recognition** - PaddleOCR exports HardSwish decomposed as ``Div(Mul(x, Clip(Add(x, 3),
  0, 6)), 6)``. Left alone, a quantizer puts Q/DQ pairs on three intermediate tensors of one
  activation (accuracy cost) and ORT runs four float kernels instead of one (speed cost). Fused into
  the ONNX ``HardSwish`` op (opset 14) it is one tensor and one kernel. HardSigmoid is already one op.
* **Denormal weights to zero** - PP-OCRv6 small det ships 255,958 float weights below float32's
  smallest normal number (1.2e-38), most of them in the two 768 -> 384 pointwise convs of its last
  stage. On Intel cores every multiply with a denormal takes a microcode assist: onnxruntime FP32
  spends 207 + 86 ms of 475 in those two 1x1 convs at 1/32 resolution, and the model runs 2.89x
  faster with them zeroed, outputs equal on real images (2-core AMX Xeon; ``python
  benchmarks/denormals.py``, docs/results.md). The prepared model is what calibration, bias
  correction and distillation run again and again, so that is where it pays. A denormal times any
  activation below 1e30 is below float32's resolution of the sum it joins, so this is exact for OCR
  networks.

The prepared model must compute the same function as the original: :func:`max_abs_diff` checks that
on real inputs (float reassociation from BN folding gives differences around 1e-5, not more).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, scratch_dir
from ocrquant.quantization.graph import (
    clean_opset_imports,
    const_value,
    consumers,
    default_opset,
    hardsigmoid_params,
    initializers,
    is_quantized,
    load_model,
    op_histogram,
    other_input,
    producers,
    single_reader,
)
from ocrquant.quantization.rewrites import apply_rewrites

log = logging.getLogger("ocrquant")

HARDSWISH_OPSET = 14


@dataclass
class PrepareReport:
    """What preparation changed, for the sidecar and the CLI summary."""

    opset_before: int
    opset_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    fused: dict[str, int] = field(default_factory=dict)


def prepare_model(
    src: str | Path,
    dst: str | Path,
    *,
    opset: int = 13,
    fuse_hardswish: bool = True,
    rewrites: tuple[str, ...] = (),
) -> PrepareReport:
    """Write the prepared float model of ``src`` to ``dst`` (atomically) and say what changed.
    ``rewrites`` names the target's exact layout rewrites (:mod:`ocrquant.quantization.rewrites`)."""
    src, dst = Path(src), Path(dst)
    model = load_model(src)
    if is_quantized(model):
        raise OcrQuantError(
            "model is already quantized (has QuantizeLinear/DequantizeLinear or QLinear* "
            "nodes); pass the float model",
            src,
        )
    before_opset, before_ops = default_opset(model), op_histogram(model)
    metadata = {p.key: p.value for p in model.metadata_props}
    if before_opset < opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:
            raise OcrQuantError(f"cannot convert opset {before_opset} -> {opset}: {exc}", src) from None
    model = onnx.shape_inference.infer_shapes(model)

    with scratch_dir("prep") as tmp:
        staged, folded = Path(tmp) / "staged.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(staged))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        try:
            ort.InferenceSession(str(staged), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OcrQuantError(
                f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}", src
            ) from None
        model = onnx.load(str(folded))

    fused = apply_rewrites(model, rewrites)  # first: affine folding would take GELU's 0.5 into a Conv
    n_affine = fold_scalar_affine(model)
    if n_affine:
        fused["scalar affine -> Conv"] = n_affine
    n_bias = fold_convtranspose_bias(model)
    if n_bias:
        fused["ConvTranspose + Add -> bias"] = n_bias
    n_div = div_to_mul(model)
    if n_div:
        fused["Div->Mul"] = n_div
    n_denormal = flush_denormal_weights(model)
    if n_denormal:
        fused["denormal weights -> 0"] = n_denormal
    if fuse_hardswish:
        n = fuse_hardswish_patterns(model)
        if n:
            fused["HardSwish"] = n
    clean_opset_imports(model)
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    model = onnx.shape_inference.infer_shapes(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OcrQuantError(f"prepared model is invalid: {str(exc).splitlines()[0]}", src) from None
    with atomic_path(dst) as tmp_path:
        onnx.save(model, str(tmp_path))
    report = PrepareReport(before_opset, default_opset(model), before_ops, op_histogram(model), fused)
    log.debug("prepared %s: %s", src, report)
    return report


def _scalar(model: onnx.ModelProto, name: str, inits: dict) -> float | None:
    v = const_value(model, name, inits)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def fuse_hardswish_patterns(model: onnx.ModelProto) -> int:
    """Replace ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` (any operand order, or ``Mul(., 1/6)``) and
    ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` by one ``HardSwish(x)``; return how many.

    Every matched intermediate must have exactly one consumer, so no other node loses its input. The
    default-domain opset is raised to 14 when a fusion happens (HardSwish was added in 14; none of the
    ops these models use changed meaning between 13 and 14).
    """
    g = model.graph
    inits = initializers(model)
    cons, prod = consumers(model), producers(model)
    only_consumer = single_reader(model, cons)

    remove: list[onnx.NodeProto] = []
    new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (anchor to replace, HardSwish)
    for clip in [n for n in g.node if n.op_type == "Clip"]:
        if (
            len(clip.input) < 3
            or _scalar(model, clip.input[1], inits) != 0.0
            or _scalar(model, clip.input[2], inits) != 6.0
        ):
            continue
        add = prod.get(clip.input[0])
        if add is None or add.op_type != "Add" or only_consumer(add.output[0]) is None:
            continue
        consts = [i for i in add.input if _scalar(model, i, inits) == 3.0]
        if not consts:
            continue
        x = other_input(add, consts[0])
        mul = only_consumer(clip.output[0])
        if x is None or mul is None or mul.op_type != "Mul" or other_input(mul, clip.output[0]) != x:
            continue
        last = only_consumer(mul.output[0])
        if last is None:
            continue
        if (
            last.op_type == "Div"
            and last.input[0] == mul.output[0]
            and _scalar(model, last.input[1], inits) == 6.0
        ):
            pass
        elif (
            last.op_type == "Mul"
            and abs((_scalar(model, other_input(last, mul.output[0]) or "", inits) or 0.0) - 1 / 6) < 1e-6
        ):
            pass
        else:
            continue
        hs = helper.make_node("HardSwish", [x], [last.output[0]], name=f"{mul.name or last.name}_hardswish")
        remove += [add, clip, mul]
        new_nodes.append((last, hs))
    for hsig in [n for n in g.node if n.op_type == "HardSigmoid"]:
        alpha, beta = hardsigmoid_params(hsig)
        mul = only_consumer(hsig.output[0])
        if (
            abs(alpha - 1 / 6) > 1e-6
            or abs(beta - 0.5) > 1e-6
            or mul is None
            or mul.op_type != "Mul"
            or other_input(mul, hsig.output[0]) != hsig.input[0]
        ):
            continue
        remove.append(hsig)
        new_nodes.append(
            (
                mul,
                helper.make_node(
                    "HardSwish", [hsig.input[0]], [mul.output[0]], name=f"{hsig.name}_hardswish"
                ),
            )
        )
    if not new_nodes:
        return 0
    removed = {id(n) for n in remove}
    anchors = {id(a): hs for a, hs in new_nodes}
    kept = []
    for node in g.node:
        if id(node) in anchors:
            kept.append(anchors[id(node)])
        elif id(node) not in removed:
            kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    used = {i for n in g.node for i in n.input}
    dead = [i for i in g.initializer if i.name not in used]
    for i in dead:
        g.initializer.remove(i)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < HARDSWISH_OPSET:
            imp.version = HARDSWISH_OPSET
    return len(new_nodes)


def affine_chain(
    model: onnx.ModelProto, start: str, cons: dict, inits: dict, outputs: set[str]
) -> tuple[list[onnx.NodeProto], float, float]:
    """Scalar ``Mul``/``Add``/``Sub`` nodes applied one after another to ``start`` (each the only reader
    of the tensor before it): the nodes and the map ``x -> a * x + b`` they compute together."""
    chain: list[onnx.NodeProto] = []
    a, b, t = 1.0, 0.0, start
    while t not in outputs:
        users = cons.get(t, [])
        if len(users) != 1 or users[0].op_type not in ("Mul", "Add", "Sub") or len(users[0].input) != 2:
            break
        node = users[0]
        other = node.input[1] if node.input[0] == t else node.input[0]
        c = _scalar(model, other, inits)
        if c is None or node.input[0] == node.input[1] or (node.op_type == "Sub" and node.input[0] != t):
            break
        if node.op_type == "Mul":
            a, b = a * c, b * c
        else:
            b = b + c if node.op_type == "Add" else b - c
        chain.append(node)
        t = node.output[0]
    return chain, a, b


def _conv_weights(node: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return None
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    else:
        bias = np.zeros(w.shape[0])
    return w, bias


def _set_conv(
    model: onnx.ModelProto, inits: dict, node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray
) -> None:
    """New initializers (the old ones may be shared with another Conv)."""
    names = []
    for kind, value in (("w", w), ("b", bias)):
        base = name = f"{node.name or node.output[0]}_affine_{kind}"
        k = 1
        while name in inits:
            name, k = f"{base}{k}", k + 1
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        inits[name] = model.graph.initializer[-1]
        names.append(name)
    del node.input[1:]
    node.input.extend(names)


def _unpadded(node: onnx.NodeProto) -> bool:
    attrs = {a.name: a for a in node.attribute}
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    return auto_pad in ("NOTSET", "VALID") and not any(pads)


def fold_scalar_affine(model: onnx.ModelProto) -> int:
    """Fold chains of scalar ``Mul``/``Add``/``Sub`` into a neighbouring Conv; return how many chains.

    After a Conv: ``a * (W x + c) + b = (a W) x + (a c + b)``, exact. Before a Conv that reads nothing
    else: ``W (a x + b) + c = (a W) x + (c + b * sum W)``, exact only without zero padding (a padded
    border would see ``b`` where it saw 0), so only then.
    """
    inits = initializers(model)
    cons, prod = consumers(model), producers(model)
    outputs = {o.name for o in model.graph.output}
    drop: set[int] = set()
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Conv" or id(node) in drop:
            continue
        wb = _conv_weights(node, inits)
        chain, a, b = affine_chain(model, node.output[0], cons, inits, outputs)
        if wb is not None and chain:
            w, bias = wb
            _set_conv(model, inits, node, w * a, bias * a + b)
            node.output[0] = chain[-1].output[0]
            drop.update(id(n) for n in chain)
            count += 1
    for node in list(model.graph.node):
        if node.op_type not in ("Mul", "Add", "Sub") or id(node) in drop:
            continue
        data = [t for t in node.input if _scalar(model, t, inits) is None]
        if len(data) != 1:
            continue
        start = data[0]
        head = prod.get(start)
        if head is not None and head.op_type in ("Mul", "Add", "Sub"):
            if any(_scalar(model, t, inits) is not None for t in head.input):
                continue  # not the head of its chain
        chain, a, b = affine_chain(model, start, cons, inits, outputs)
        if not chain or chain[0] is not node:
            continue
        users = cons.get(chain[-1].output[0], [])
        conv = users[0] if len(users) == 1 else None
        wb = _conv_weights(conv, inits) if conv is not None else None
        if wb is None or conv.input[0] != chain[-1].output[0] or not _unpadded(conv) or a == 0:
            continue
        w, bias = wb
        # b reaches every input an output channel reads (its group's channels, every tap)
        _set_conv(model, inits, conv, w * a, bias + b * w.reshape(w.shape[0], -1).sum(axis=1))
        conv.input[0] = start
        drop.update(id(n) for n in chain)
        count += 1
    if drop:
        kept = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return count


def fold_convtranspose_bias(model: onnx.ModelProto) -> int:
    """Fold a per-channel constant ``Add`` after a ``ConvTranspose`` into its bias input; return how many.

    paddle2onnx writes a DB head's transposed convolutions without a bias and adds it in a separate
    ``Add`` of shape [1, C, 1, 1], which onnxruntime does not fuse (it fuses Conv + Add, not
    ConvTranspose + Add): one more float pass over the head's full-resolution maps, FP32 and INT8 alike
    (PP-OCRv6 small det at 544x960, INT8: 1.6 ms of 57 on a 2-core AMX Xeon, ``ocrquant profile``).
    The kernel adds its bias to the same sums, so the output is the same.
    """
    inits = initializers(model)
    cons = consumers(model)
    outputs = {o.name for o in model.graph.output}
    drop: set[int] = set()
    constants: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        users = cons.get(node.output[0], [])
        add = users[0] if len(users) == 1 and node.output[0] not in outputs else None
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other == node.output[0] or other not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        channels = w.shape[1] * group
        value = numpy_helper.to_array(inits[other]).astype(np.float64)
        if value.ndim > w.ndim:
            continue
        # per output channel: broadcast to the output's rank, every axis but the channel axis is 1
        shape = (1,) * (w.ndim - value.ndim) + value.shape
        if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
            continue
        bias = np.zeros(channels)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        name = f"{node.name or node.output[0]}_bias"
        total = bias + np.broadcast_to(value.reshape(-1), channels)
        model.graph.initializer.append(numpy_helper.from_array(total.astype(np.float32), name))
        inits[name] = model.graph.initializer[-1]
        del node.input[2:]
        node.input.append(name)
        node.output[0] = add.output[0]
        drop.add(id(add))
        constants.add(other)
    if drop:
        kept = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        # the Adds' constants, where nothing else reads them (onnxruntime warns of unused initializers)
        read = {i for n in kept for i in n.input}
        for init in [t for t in model.graph.initializer if t.name in constants - read]:
            model.graph.initializer.remove(init)
    return len(drop)


def _denormals(init: onnx.TensorProto) -> tuple[np.ndarray, np.ndarray] | None:
    """A loaded float32 initializer's values and the mask of its denormals (below the smallest normal
    float32, not zero); None for other types and for data not loaded (external)."""
    if init.data_type != onnx.TensorProto.FLOAT or init.data_location == onnx.TensorProto.EXTERNAL:
        return None
    values = numpy_helper.to_array(init)
    return values, (values != 0) & (np.abs(values) < np.finfo(np.float32).tiny)


def denormal_weights(model: onnx.ModelProto) -> dict[str, int]:
    """How many denormal values each float32 initializer holds (those with any)."""
    found = ((init.name, _denormals(init)) for init in model.graph.initializer)
    return {name: n for name, d in found if d is not None and (n := int(d[1].sum()))}


def flush_denormal_weights(model: onnx.ModelProto) -> int:
    """Set every denormal float32 initializer value to zero, in place; return how many changed (why:
    the module docstring, "Denormal weights")."""
    count = 0
    for init in model.graph.initializer:
        found = _denormals(init)
        if found is not None and found[1].any():
            values, mask = found
            init.CopyFrom(numpy_helper.from_array(np.where(mask, np.float32(0), values), init.name))
            count += int(mask.sum())
    return count


def div_to_mul(model: onnx.ModelProto) -> int:
    """``Div(x, c)`` by a constant becomes ``Mul(x, 1/c)``: the same value (to one ulp), but Mul has
    integer kernels (QLinearMul) on ORT CPU and Div has none, so a decomposed HardSwish
    (``Mul(x, Clip(x + 3, 0, 6)) / 6``) can run in int8 end to end."""
    inits = initializers(model)
    count = 0
    for node in model.graph.node:
        if node.op_type != "Div" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        c = numpy_helper.to_array(inits[node.input[1]])
        if c.dtype != np.float32 or np.any(c == 0):
            continue
        name = f"{node.input[1]}_reciprocal"
        if name not in inits:
            model.graph.initializer.append(numpy_helper.from_array((1.0 / c).astype(np.float32), name))
            inits[name] = model.graph.initializer[-1]
        node.op_type = "Mul"
        node.input[1] = name
        count += 1
    return count


def max_abs_diff(
    model_a: str | Path,
    model_b: str | Path,
    inputs: list[np.ndarray],
) -> float:
    """Largest absolute difference over all outputs of two models fed the same inputs.

    Used to prove that preparation (and any float-equivalent algorithm such as cross-layer
    equalisation) did not change what the model computes.
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sa = ort.InferenceSession(str(model_a), so, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(model_b), so, providers=["CPUExecutionProvider"])
    name_a, name_b = sa.get_inputs()[0].name, sb.get_inputs()[0].name
    worst = 0.0
    for x in inputs:
        outs_a = sa.run(None, {name_a: x})
        outs_b = sb.run(None, {name_b: x})
        if len(outs_a) != len(outs_b):
            raise OcrQuantError(f"models have different output counts ({len(outs_a)} vs {len(outs_b)})")
        for a, b in zip(outs_a, outs_b, strict=True):
            if a.shape != b.shape:
                raise OcrQuantError(f"output shapes differ: {a.shape} vs {b.shape}")
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst
