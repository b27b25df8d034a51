"""onnxruntime's integer graph, one pattern at a time: the measurements behind ort-cpu's prepare
rewrites (ocrquant/quantization/rewrites.py) and its NHWC upsample pass.

Each case builds two uint8 QDQ graphs of the same function and times them interleaved in one loop,
onnxruntime CPU, 2 threads, spinning off. The last column is the largest difference between their
output codes: 0 for the Resize, upsample and ReduceMean pairs (exact rewrites); for GELU the decomposed graph
rounds its four intermediates to 8 bits, which the fused one does not.

* GELU as PaddleOCR exports it (Div, Erf, Add, Mul, Mul, each with its Q/DQ as a QDQ quantizer lays
  it out) vs one ``com.microsoft.Gelu`` between a DQ and a Q, on PP-OCRv6 small det's and rec's
  largest GELU tensors;
* a nearest Resize by 8 and by 4 vs a chain of Resizes by 2, on PP-OCRv6 small det's neck shapes;
* ReduceMean over H and W (PP-OCRv6's SE squeeze) vs GlobalAveragePool;
* a nearest Resize by 2 between two QLinearConvs, which onnxruntime runs on NHWC data, vs the graph
  ort-cpu's ``nhwc_upsample`` pass writes (ocrquant/quantization/qdq_passes.py), on PP-OCRv3 det's
  largest neck upsample at 544x960 and PP-OCRv6 small det's at 736x1312 (the times include the two
  convolutions, which both graphs share).

  python benchmarks/layout_ops.py [--rounds 40]

Prints milliseconds (median) per graph and the ratio old / new, and the host's CPU first.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ocrquant.quantization.qdq_passes import rewrite_nhwc_upsample
from ocrquant.quantization.targets import cpu_has_vnni
from ocrquant.report.table import machine_description

S_IN, Z_IN, S_OUT, Z_OUT = 0.05, 128, 0.03, 10


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _graph(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, out_shape)],
        [
            _const("si", S_IN),
            _const("zi", Z_IN, np.uint8),
            _const("so", S_OUT),
            _const("zo", Z_OUT, np.uint8),
            *inits,
        ],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )


def _qdq(src: str, dst: str, scale: str = "si", zero: str = "zi") -> list[onnx.NodeProto]:
    """Round ``src`` to 8 bits: the Q -> DQ pair a QDQ quantizer puts on an intermediate tensor."""
    return [
        helper.make_node("QuantizeLinear", [src, scale, zero], [f"{dst}_q"]),
        helper.make_node("DequantizeLinear", [f"{dst}_q", scale, zero], [dst]),
    ]


def gelu_cases(shape: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    decomposed = [
        helper.make_node("DequantizeLinear", ["x", "si", "zi"], ["xf"]),
        helper.make_node("Div", ["xf", "sqrt2"], ["a"]),
        *_qdq("a", "ad"),
        helper.make_node("Erf", ["ad"], ["e"]),
        *_qdq("e", "ed", "se", "zi"),
        helper.make_node("Add", ["ed", "one"], ["p"]),
        *_qdq("p", "pd", "sp", "zo"),
        helper.make_node("Mul", ["xf", "pd"], ["m"]),
        *_qdq("m", "md", "sm", "zi"),
        helper.make_node("Mul", ["md", "half"], ["g"]),
        helper.make_node("QuantizeLinear", ["g", "so", "zo"], ["y"]),
    ]
    consts = [_const("sqrt2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5)]
    consts += [_const("se", 1 / 127), _const("sp", 2 / 245), _const("sm", 0.1)]
    fused = [
        helper.make_node("DequantizeLinear", ["x", "si", "zi"], ["xf"]),
        helper.make_node("Gelu", ["xf"], ["g"], domain="com.microsoft"),
        helper.make_node("QuantizeLinear", ["g", "so", "zo"], ["y"]),
    ]
    return _graph(decomposed, consts, shape, shape), _graph(fused, [], shape, shape)


def resize_cases(shape: list[int], factor: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    attrs = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}
    out_shape = [shape[0], shape[1], shape[2] * factor, shape[3] * factor]

    def chain(factors: list[int]) -> onnx.ModelProto:
        nodes, src, inits = [], "x", [_const("roi", [])]
        for i, f in enumerate(factors):
            inits.append(_const(f"sc{i}", [1, 1, f, f]))
            out = "y" if i == len(factors) - 1 else f"r{i}"
            nodes += [
                helper.make_node("DequantizeLinear", [src, "si", "zi"], [f"d{i}"]),
                helper.make_node("Resize", [f"d{i}", "roi", f"sc{i}"], [f"u{i}"], **attrs),
                helper.make_node("QuantizeLinear", [f"u{i}", "si", "zi"], [out]),
            ]
            src = out
        return _graph(nodes, inits, shape, out_shape)

    return chain([factor]), chain([2] * int(round(math.log2(factor))))


def upsample_cases(shape: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A nearest Resize by 2 between two 1x1 QLinearConvs (so onnxruntime runs it on NHWC data, as in
    a det neck) vs the same graph after ort-cpu's ``nhwc_upsample`` pass."""
    attrs = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}
    c = shape[1]
    weights = np.random.default_rng(1).integers(-90, 90, size=(c, c, 1, 1), dtype=np.int8)
    inits = [numpy_helper.from_array(weights, "w"), _const("sw", 0.002), _const("zw", 0, np.int8)]
    inits += [_const("roi", []), _const("by2", [1, 1, 2, 2])]
    nodes = [helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"])]
    for i, (src, dst) in enumerate((("x", "a"), ("u", "y"))):
        nodes += [
            helper.make_node("DequantizeLinear", [src, "si", "zi"], [f"{src}f"]),
            helper.make_node("Conv", [f"{src}f", "wf"], [f"c{i}"]),
            helper.make_node("QuantizeLinear", [f"c{i}", "si", "zi"], [dst]),
        ]
        if i == 0:
            nodes += [
                helper.make_node("DequantizeLinear", ["a", "si", "zi"], ["af"]),
                helper.make_node("Resize", ["af", "roi", "by2"], ["r"], **attrs),
                helper.make_node("QuantizeLinear", ["r", "si", "zi"], ["u"]),
            ]
    out_shape = [shape[0], c, shape[2] * 2, shape[3] * 2]
    old = _graph(nodes, inits, shape, out_shape)
    new = onnx.ModelProto()
    new.CopyFrom(old)
    assert rewrite_nhwc_upsample(new), "the pass found no Resize"
    return old, new


def reducemean_cases(shape: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    out_shape = [shape[0], shape[1], 1, 1]

    def around(op: onnx.NodeProto) -> onnx.ModelProto:
        nodes = [
            helper.make_node("DequantizeLinear", ["x", "si", "zi"], ["xf"]),
            op,
            helper.make_node("QuantizeLinear", ["m", "si", "zi"], ["y"]),
        ]
        return _graph(nodes, [], shape, out_shape)

    return (
        around(helper.make_node("ReduceMean", ["xf"], ["m"], axes=[2, 3], keepdims=1)),
        around(helper.make_node("GlobalAveragePool", ["xf"], ["m"])),
    )


def time_pair(
    old: onnx.ModelProto, new: onnx.ModelProto, shape: list[int], rounds: int
) -> tuple[float, float, int]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = [
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for m in (old, new)
    ]
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    outs = [s.run(None, {"x": x})[0].astype(np.int32) for s in sessions]
    max_code_diff = int(np.abs(outs[0] - outs[1]).max())
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[i].append(time.perf_counter() - t)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3), max_code_diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    print(f"host: {machine_description()} (VNNI: {'yes' if cpu_has_vnni() else 'no'})")
    cases = [
        ("GELU decomposed -> Gelu, det 1x96x184x328", gelu_cases, [1, 96, 184, 328], ()),
        ("GELU decomposed -> Gelu, rec 1x384x6x80", gelu_cases, [1, 384, 6, 80], ()),
        ("Resize x8 -> 3 x Resize x2, 1x24x23x41", resize_cases, [1, 24, 23, 41], (8,)),
        ("Resize x4 -> 2 x Resize x2, 1x96x46x82", resize_cases, [1, 96, 46, 82], (4,)),
        ("NHWC Resize x2 -> Expand (nhwc_upsample), 1x96x68x120", upsample_cases, [1, 96, 68, 120], ()),
        ("NHWC Resize x2 -> Expand (nhwc_upsample), 1x96x92x164", upsample_cases, [1, 96, 92, 164], ()),
        ("ReduceMean(H, W) -> GlobalAveragePool, 1x96x184x328", reducemean_cases, [1, 96, 184, 328], ()),
        ("ReduceMean(H, W) -> GlobalAveragePool, rec 1x96x12x80", reducemean_cases, [1, 96, 12, 80], ()),
    ]
    print(f"{'case':55s} {'old ms':>8s} {'new ms':>8s} {'old/new':>8s} {'max code diff':>14s}")
    for label, build, shape, extra in cases:
        old, new = build(shape, *extra)
        t_old, t_new, diff = time_pair(old, new, shape, args.rounds)
        print(f"{label:55s} {t_old:8.3f} {t_new:8.3f} {t_old / t_new:7.2f}x {diff:14d}")


if __name__ == "__main__":
    main()
