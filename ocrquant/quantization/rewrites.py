"""Float-graph rewrites a target asks for before quantization (``TargetProfile.prepare_rewrites``).

Each rewrite below computes the same function as the pattern it replaces and exists because one
runtime's integer graph runs the replacement faster. They run in
:func:`~ocrquant.quantization.prepare.prepare_model` after BatchNorm folding and before
scalar-affine folding and ``Div -> Mul``, so the patterns are still the exporter's.

* ``gelu`` - PaddleOCR exports GELU as ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``. In a QDQ
  graph onnxruntime cannot fuse that back (its GeluFusion needs one tensor feeding Div and Mul, and
  the QDQ graph gives each reader its own DequantizeLinear), so the chain runs as QLinearMul,
  DequantizeLinear, Erf, QuantizeLinear, QLinearAdd, QLinearMul, QLinearMul: five passes over the
  tensor and four 8-bit roundings inside one activation. As one ``com.microsoft.Gelu`` node it is
  DequantizeLinear -> Gelu -> QuantizeLinear with one rounding. Measured on PP-OCRv6 small rec (mse
  ranges, 64 rec_train crops, ``ocrquant bench --task rec --shape "48x320 b1"``, Zen 4 VNNI host,
  2 threads): 1.67x -> 1.79x FP32. One pattern alone, uint8 in and out, as a QDQ quantizer lays the
  decomposed chain out (``benchmarks/layout_ops.py``, same host): 15.3 -> 4.6 ms on 1x96x184x328.
* ``resize_x2`` - a nearest Resize by 4 or 8 (floor, asymmetric: ``out[i] = in[i // k]``) becomes a
  chain of Resizes by 2, exactly the same output. onnxruntime's uint8 Resize, which the QDQ graph
  runs it on, is fast for factor 2 and falls to a slow path for larger ones: 1x24x23x41 by 8,
  2.58 -> 0.17 ms; 1x96x46x82 by 4, 7.20 -> 0.56 ms (``benchmarks/layout_ops.py``). PP-OCRv6 det's
  neck upsamples by 8 and 4 before its Concat.
* ``hardsigmoid_conv`` - an SE block's gate ``HardSigmoid(Conv(x, W, b))`` becomes
  ``Clip(Conv(x, alpha W, alpha b + beta), 0, 1)``, and the Clip folds into the Conv's requantization:
  the gate is the Conv's own integer output, rounded once, where the float HardSigmoid ran as three
  more kernels (DQ, HardSigmoid, Q) on a 1x1 map. PP-OCR v2.0 cls has 9 such gates (155 -> 128 nodes
  in onnxruntime's optimised graph): at 48x192, batch 1, 1.82 -> 1.68 and 1.94 -> 1.81 ms in two runs
  (``ocrquant bench --task cls --rounds 150``, min_max ranges on 16 rec_train crops, Zen 4 VNNI host,
  2 threads), batch 8 about 2 % faster; on PP-OCRv6 small det and rec and PP-OCRv3 det and rec,
  whose maps are larger, the change is inside the run-to-run noise.

One rewrite is an approximation, and a target applies it only to the tasks where it was measured
harmless (``TargetProfile.task_prepare_rewrites``):

* ``gelu_sigmoid`` - ``Gelu(x)`` becomes ``x * Sigmoid(1.702 x)`` (the sigmoid GELU of Hendrycks and
  Gimpel; largest difference 0.0203, at |x| near 2.5). onnxruntime has no integer Gelu, so the exact op
  runs in float between a DequantizeLinear and a QuantizeLinear: three passes over the tensor. The
  sigmoid form quantizes into QLinearSigmoid (a 256-entry table) and QLinearMul, with the Mul by 1.702
  folded into the next DequantizeLinear's scale (``fold_scalar_mul``): two integer passes. At 8 bits it
  moves about half of the 256 output codes by 1-3 steps. ``python benchmarks/gelu_sigmoid.py`` (same
  recipe with either form, calibrated on half of the training set, scored on the other half; 2-core AMX
  Xeon, 2 threads): PP-OCRv6 small det at 544x960 runs 80.5 -> 65.7 ms in onnxruntime, held-out hmean
  0.2733 -> 0.2796 (FP32 0.2674), agreement with FP32's boxes 0.936 -> 0.920; rec at 48x320 10.8 ->
  9.4 ms, held-out accuracy 0.7601 -> 0.7538 (FP32 0.7717), readings equal to FP32's 0.868 -> 0.836.
  So ort-cpu applies it to det only, where the thresholded map keeps its hmean and the speed-up is
  largest. OpenVINO fuses a float Gelu of its own and runs the sigmoid form slower (det 40.2 -> 47.1
  ms), so the ``openvino`` target keeps the exact op.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ocrquant.quantization.graph import (
    consumers,
    hardsigmoid_params,
    initializers,
    nearest_upsample_factor,
    other_input,
    producers,
    single_reader,
)

MS_DOMAIN = "com.microsoft"
PrepareRewrite = Callable[[onnx.ModelProto], int]
PREPARE_REWRITES: dict[str, PrepareRewrite] = {}


def register_rewrite(name: str) -> Callable[[PrepareRewrite], PrepareRewrite]:
    def wrap(fn: PrepareRewrite) -> PrepareRewrite:
        PREPARE_REWRITES[name] = fn
        return fn

    return wrap


def apply_rewrites(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, int]:
    """Run the named rewrites in order on ``model`` (in place); return how many patterns each changed."""
    unknown = [n for n in names if n not in PREPARE_REWRITES]
    if unknown:
        raise KeyError(f"unknown prepare rewrite(s) {unknown}; known: {sorted(PREPARE_REWRITES)}")
    return {name: n for name in names if (n := PREPARE_REWRITES[name](model))}


def _scalar(name: str, inits: dict[str, onnx.TensorProto]) -> float | None:
    if name not in inits:
        return None
    v = numpy_helper.to_array(inits[name])
    return float(v.reshape(-1)[0]) if v.size == 1 else None


def _replace(
    model: onnx.ModelProto,
    anchors: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]],
    removed: list[onnx.NodeProto],
) -> None:
    """Rebuild the node list: each anchor node replaced by its new nodes, ``removed`` dropped.

    Nodes are matched by identity; the caller's lists hold the protobuf wrappers alive, since a freed
    wrapper's id can be reused by another node's."""
    new_at = {id(a): new for a, new in anchors}
    gone = {id(n) for n in removed}
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in new_at:
            kept.extend(new_at[id(node)])
        elif id(node) not in gone:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in kept for i in n.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _close(value: float | None, target: float, tol: float = 1e-5) -> bool:
    return value is not None and abs(value - target) <= tol * max(1.0, abs(target))


@register_rewrite("gelu")
def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace ``0.5 * x * (1 + erf(x / sqrt 2))`` (Div by sqrt 2 or Mul by 1/sqrt 2; the 0.5 on
    either Mul) by one ``com.microsoft.Gelu``; return how many. Every intermediate must have one reader."""
    inits = initializers(model)
    cons, prod = consumers(model), producers(model)
    single, other = single_reader(model, cons), other_input

    nodes = list(model.graph.node)  # one wrapper per node for the whole pass (see _replace)
    anchors: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    removed: list[onnx.NodeProto] = []
    for erf in [n for n in nodes if n.op_type == "Erf"]:
        scale = prod.get(erf.input[0])
        if scale is None or single(scale.output[0]) is not erf:
            continue
        if scale.op_type == "Div" and _close(_scalar(scale.input[1], inits), math.sqrt(2)):
            x = scale.input[0]
        elif scale.op_type == "Mul" and (
            c := [i for i in scale.input if _close(_scalar(i, inits), 1 / math.sqrt(2))]
        ):
            x = other(scale, c[0])
        else:
            continue
        add = single(erf.output[0])
        one = other(add, erf.output[0]) if add is not None else None
        if add is None or add.op_type != "Add" or not _close(_scalar(one or "", inits), 1.0):
            continue
        first = single(add.output[0])
        if first is None or first.op_type != "Mul":
            continue
        second = single(first.output[0])
        if second is None or second.op_type != "Mul":
            continue
        # x * (1 + erf) then * 0.5, or (x * 0.5) * (1 + erf) is not produced by the exporters seen
        half = other(second, first.output[0])
        if x is None or other(first, add.output[0]) != x or not _close(_scalar(half or "", inits), 0.5):
            continue
        gelu = helper.make_node("Gelu", [x], [second.output[0]], name=f"{erf.name}_gelu", domain=MS_DOMAIN)
        anchors.append((second, [gelu]))
        removed += [scale, erf, add, first]
    if not anchors:
        return 0
    _replace(model, anchors, removed)
    if not any(imp.domain == MS_DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(anchors)


#: GELU(x) ~ x * sigmoid(SIGMOID_GELU_ALPHA * x): the slope that minimises the largest difference
SIGMOID_GELU_ALPHA = 1.702


@register_rewrite("gelu_sigmoid")
def gelu_to_sigmoid(model: onnx.ModelProto) -> int:
    """Replace each ``com.microsoft.Gelu`` (what ``gelu`` fused) by ``Mul(x, Sigmoid(Mul(x, 1.702)))``;
    return how many. An approximation: see the module notes for where it is used and what it costs."""
    anchors: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    alpha = "gelu_sigmoid_alpha"
    for node in list(model.graph.node):
        if node.op_type != "Gelu" or node.domain != MS_DOMAIN or len(node.input) != 1:
            continue
        x, name = node.input[0], node.name or node.output[0]
        anchors.append(
            (
                node,
                [
                    helper.make_node("Mul", [x, alpha], [f"{name}_ax"], name=f"{name}_ax"),
                    helper.make_node("Sigmoid", [f"{name}_ax"], [f"{name}_gate"], name=f"{name}_gate"),
                    helper.make_node("Mul", [x, f"{name}_gate"], [node.output[0]], name=f"{name}_mul"),
                ],
            )
        )
    if not anchors:
        return 0
    model.graph.initializer.append(numpy_helper.from_array(np.array(SIGMOID_GELU_ALPHA, np.float32), alpha))
    _replace(model, anchors, [])
    return len(anchors)


@register_rewrite("resize_x2")
def split_nearest_resize(model: onnx.ModelProto) -> int:
    """Rewrite each nearest (floor, asymmetric) Resize whose scales are ``[1, 1, k, k]`` with k = 4
    or 8 as log2(k) Resizes by 2: ``floor(floor(i / 2) / 2) = floor(i / 4)``, so the output is the
    same element for element. Return how many Resizes were split."""
    inits = initializers(model)
    anchors: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for node in list(model.graph.node):
        k = nearest_upsample_factor(node, inits)
        if k not in (4.0, 8.0) or len(node.input) != 3:
            continue
        two = f"{node.name}_scales_x2"
        if two not in inits:
            model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), two))
            inits[two] = model.graph.initializer[-1]
        steps = int(round(math.log2(k)))
        chain, src = [], node.input[0]
        for s in range(steps):
            out = node.output[0] if s == steps - 1 else f"{node.name}_x2_{s}"
            step = helper.make_node("Resize", [src, node.input[1], two], [out], name=f"{node.name}_x2_{s}")
            step.attribute.extend(node.attribute)
            chain.append(step)
            src = out
        anchors.append((node, chain))
    if anchors:
        _replace(model, anchors, [])
    return len(anchors)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in vis
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }


@register_rewrite("reducemean_gap")
def reducemean_to_global_pool(model: onnx.ModelProto) -> int:
    """``ReduceMean(x, axes=[2, 3], keepdims=1)`` on a 4-D tensor (the squeeze step of PP-OCRv6's SE
    blocks) becomes ``GlobalAveragePool(x)``: the same mean. onnxruntime has an integer
    QLinearGlobalAveragePool and no integer ReduceMean, and its float ReduceMean over the two inner
    axes is slow: DQ -> ReduceMean -> Q on 1x96x184x328 1.40 ms, as GlobalAveragePool 0.23 ms
    (``benchmarks/layout_ops.py``); PP-OCRv6 small det has 5 of them, rec 5 smaller ones."""
    ranks = _ranks(model)
    count = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or len(node.input) != 1 or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if sorted(int(a) % 4 for a in attrs.get("axes", [])) != [2, 3] or attrs.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        count += 1
    return count


@register_rewrite("hardsigmoid_conv")
def fold_hardsigmoid_into_conv(model: onnx.ModelProto) -> int:
    """``HardSigmoid(Conv(x, W, b), alpha, beta)`` (the gate of every SE block) becomes
    ``Clip(Conv(x, alpha W, alpha b + beta), 0, 1)``: the same function. Return how many.

    onnxruntime has no integer HardSigmoid, so the gate runs DQ -> HardSigmoid -> Q in float after the
    Conv's integer kernel: three more kernels per SE block, each a dispatch on a 1x1 map. A Clip
    to [0, 1] folds into the Conv's requantization (the range rule of ``adjust_ranges``), so the gate
    becomes the Conv's own integer output, rounded once instead of twice. Only where the Conv's output
    has no other reader and its weights no other user."""
    inits = initializers(model)
    cons = consumers(model)
    single = single_reader(model, cons)
    prod = producers(model)
    zero, one = "hardsigmoid_conv_zero", "hardsigmoid_conv_one"
    anchors: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for hsig in [n for n in model.graph.node if n.op_type == "HardSigmoid"]:
        conv = prod.get(hsig.input[0])
        if conv is None or conv.op_type != "Conv" or single(conv.output[0]) is not hsig:
            continue
        w_name = conv.input[1]
        b_name = conv.input[2] if len(conv.input) > 2 else ""
        if w_name not in inits or (b_name and b_name not in inits):
            continue
        if any(len(cons.get(t, [])) != 1 for t in (w_name, b_name) if t):
            continue
        alpha, beta = hardsigmoid_params(hsig)
        w = numpy_helper.to_array(inits[w_name]).astype(np.float64)
        b = numpy_helper.to_array(inits[b_name]).astype(np.float64) if b_name else np.zeros(w.shape[0])
        inits[w_name].CopyFrom(numpy_helper.from_array((alpha * w).astype(np.float32), w_name))
        new_b = f"{conv.name or conv.output[0]}_hardsigmoid_bias"
        model.graph.initializer.append(numpy_helper.from_array((alpha * b + beta).astype(np.float32), new_b))
        del conv.input[2:]
        conv.input.append(new_b)
        clip = helper.make_node(
            "Clip", [hsig.input[0], zero, one], [hsig.output[0]], name=f"{hsig.name}_clip"
        )
        anchors.append((hsig, [clip]))
    if not anchors:
        return 0
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in ((zero, 0.0), (one, 1.0))]
    )
    _replace(model, anchors, [])
    return len(anchors)
