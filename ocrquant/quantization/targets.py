"""Deployment targets: what a backend can run in integer arithmetic, expressed as data.

A profile says which op types get Q/DQ, the integer types, symmetry, per-channel weights and a scale
constraint. The passes read these fields; nothing else in the library branches on a target's name, so
adding a backend is one more :class:`TargetProfile` in :data:`TARGETS`.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ocrquant.errors import OcrQuantError

# Integer types a Q/DQ pair can use: name -> (numpy dtype, qmin, qmax).
QTYPES: dict[str, tuple[type, int, int]] = {
    "int8": (np.int8, -128, 127),
    # int8 storage, 7-bit grid: keeps u8 x s8 pair sums inside int16 for AVX2 kernels without VNNI.
    "int7": (np.int8, -64, 63),
    # int8 grid whose per-channel scales keep every pair sum inside int16 (quantization/saturation.py):
    # 8-bit precision where a channel's large weights are not paired, 7-bit only where they are.
    "int8p": (np.int8, -128, 127),
    "uint8": (np.uint8, 0, 255),
    "int16": (np.int16, -32768, 32767),
    "uint16": (np.uint16, 0, 65535),
}


def _no_constraint(scale: np.ndarray) -> np.ndarray:
    return scale


def _pow2_ceil(scale: np.ndarray) -> np.ndarray:
    """Round scales *up* to a power of two: the range only grows, so nothing calibrated gets clipped;
    integer-only NPUs then rescale with a shift instead of a multiplier."""
    return np.exp2(np.ceil(np.log2(np.maximum(scale, np.finfo(np.float32).tiny)))).astype(np.float32)


SCALE_CONSTRAINTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _no_constraint,
    "pow2": _pow2_ceil,
}


@dataclass(frozen=True)
class TargetProfile:
    """How one backend quantizes. ``op_types`` are the ops given Q/DQ on their inputs (and outputs)."""

    name: str
    description: str
    op_types: tuple[str, ...]
    activation_dtype: str = "int8"
    weight_dtype: str = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    scale_constraint: str = "none"
    # Ops without an integer kernel on this target that still get Q/DQ on their boundary, so that their
    # neighbours (the Conv before a HardSwish) see a Q on their output and fuse into integer kernels.
    # They compute in float and are counted as float.
    boundary_ops: tuple[str, ...] = ()
    # Ops that only move values and that this target runs faster in float than in its integer kernel,
    # except where a Conv feeds them (then the runtime's NHWC kernel takes them: see the ort-cpu
    # notes). They stay float, and the Q after one reuses its input's quantization with the scale
    # raised by 2**-12 (:data:`PASSTHROUGH_SCALE_NUDGE`): different enough that the runtime does not
    # fuse DQ -> op -> Q back into its integer kernel, small enough that requantizing is exact.
    float_passthrough_ops: tuple[str, ...] = ()
    # Model outputs (probability maps, class scores) stay float unless the backend needs integer
    # outputs: postprocessing thresholds them, and 1/255 steps cost accuracy for no speed.
    quantize_graph_outputs: bool = False
    # onnxruntime QDQQuantizer extra_options that shape the graph for this backend's fusions.
    ort_extra_options: dict[str, Any] = field(default_factory=dict)
    # Whether preparation fuses PaddleOCR's decomposed HardSwish into the ONNX HardSwish op. Fused is
    # one tensor and one kernel, the right thing for a backend with an integer HardSwish; a backend
    # without one runs it in float between a DQ and a Q, where the decomposed Add/Clip/Mul chain would
    # run in integer kernels instead.
    fuse_hardswish: bool = True
    # Exact float rewrites preparation applies for this target's kernels, by name
    # (quantization/rewrites.py PREPARE_REWRITES), each with its measured reason there.
    prepare_rewrites: tuple[str, ...] = ()
    # per-task replacements of ``prepare_rewrites``, where an approximating rewrite measured harmless
    # for one task and not for another (see :meth:`for_task`)
    task_prepare_rewrites: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Algorithms this target's models get by default (see QuantConfig.algorithms), and per-task
    # replacements of that list where a task measured differently.
    default_algorithms: tuple[str, ...] = ()
    task_algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Algorithms whose effect differs between models, so ``--method auto`` applies each one only where
    # it raises the metric on the held-out calibration-side images (never the test set).
    validated_algorithms: tuple[str, ...] = ()
    # per-task replacements of ``validated_algorithms``, where an algorithm costs too much on that task
    task_validated_algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Weight type on a host CPU without VNNI (see :func:`host_profile`), for the weighted ops in
    # ``narrow_weight_scope``: "input" = the ops reading a model input, "dense" = every non-depthwise
    # one. None: weight_dtype everywhere.
    weight_dtype_without_vnni: str | None = None
    narrow_weight_scope: str = "input"
    # Exact graph rewrites of the final QDQ model (names in quantization/qdq_passes.py QDQ_PASSES), in
    # order; ort-cpu folds a Mul by a positive constant (HardSwish's /6) into the next DQs' scale and pads
    # channel groups to the widths its fast integer Conv kernels take.
    qdq_passes: tuple[str, ...] = ()

    def for_task(self, task: str) -> TargetProfile:
        """This profile as it quantizes ``task``'s model: that task's prepare rewrites in place of the
        default list, so that the profile recorded in a sidecar names what was actually applied."""
        rewrites = self.task_prepare_rewrites.get(task, self.prepare_rewrites)
        return dataclasses.replace(self, prepare_rewrites=rewrites, task_prepare_rewrites={})

    def constrain(self, scale: np.ndarray) -> np.ndarray:
        return SCALE_CONSTRAINTS[self.scale_constraint](np.asarray(scale, dtype=np.float32))


def compute_scale_zp(
    lo: float | np.ndarray,
    hi: float | np.ndarray,
    dtype: str,
    symmetric: bool,
    constrain: Callable[[np.ndarray], np.ndarray] = _no_constraint,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point that map [lo, hi] (widened to contain 0) onto ``dtype``'s integer grid.

    Symmetric signed types use the restricted range [-127, 127] style grid (qmax = -qmin - 1 is not
    used) so that +x and -x quantize to opposite integers, as TensorRT and most NPUs expect.
    """
    np_dtype, qmin, qmax = QTYPES[dtype]
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        if qmin < 0:
            scale = absmax / qmax
            zp = np.zeros_like(scale)
        else:  # symmetric unsigned: zero point in the middle
            scale = absmax * 2 / (qmax - qmin)
            zp = np.full_like(scale, (qmax + qmin + 1) // 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = np.zeros_like(scale)
    # An all-zero tensor: any scale represents it exactly. A range below 127 x float32's smallest
    # normal number (PP-OCRv6 small rec's dead SE channel, weights ~1e-38) is all zeros at that
    # precision; its own scale would be denormal (2.6e-40, and 3e-42 for the bias it scales), which
    # runtimes that flush denormals read as 0 and Intel cores multiply through a microcode assist.
    scale = np.where(scale >= np.finfo(np.float32).tiny, scale, 1.0)
    scale = constrain(scale.astype(np.float32)).astype(np.float64)
    if not symmetric:
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    return scale.astype(np.float32), zp.astype(np_dtype)


# The compute ops an int8 accelerator (TensorRT, NPUs) runs from Q/DQ-wrapped inputs.
ACCELERATOR_OPS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "Concat",
    "Resize",
    "Sigmoid",
)
# Ops onnxruntime's CPU provider turns into integer kernels when wrapped in Q/DQ (QLinearConv,
# QLinearMatMul, QLinearAdd/Mul, QLinearGlobalAveragePool, QLinearSigmoid, QLinearConcat, ...) or
# passes through in int8 (Reshape, Transpose, MaxPool, Resize). HardSwish/HardSigmoid have no integer
# kernel there: they stay float between a DQ and a Q. A MaxPool no Conv feeds stays float on ort-cpu
# (see ORT_CPU_FLOAT_PASSTHROUGH).
ORT_CPU_OPS = ACCELERATOR_OPS + (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Relu",
    "Clip",
    "Gather",
    "Split",
    "Slice",
    "Softmax",
)

#: onnxruntime QDQQuantizer option: Q/DQ on the inputs of the weighted ops, not on their outputs, so the
#: runtime fuses each with what follows it (TensorRT's and OpenVINO's layout)
INPUTS_ONLY_OF_WEIGHTED_OPS = {
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "MatMul", "Gemm"]
}

TARGETS: dict[str, TargetProfile] = {}


def register_target(profile: TargetProfile) -> TargetProfile:
    TARGETS[profile.name] = profile
    return profile


# The ort-cpu layout, measured on onnxruntime 1.31.1 CPU (x86, AVX512-VNNI), PP-OCRv3 det/cls/rec,
# counting kernels in the ORT_ENABLE_ALL-optimised graph and timing interleaved (2 threads):
#
# * Activations **uint8 asymmetric**, weights int8 symmetric per channel. With int8 activations ORT's
#   x86 QDQ fusion leaves most convs as DQ -> float Conv -> Q (rec: 4/36 QLinearConv; cls 42/53 plus
#   42 NHWC Transposes; INT8 slower than FP32); with uint8 activations every Conv becomes QLinearConv.
# * HardSwish **left decomposed** (Add, Clip, Mul, Mul(1/6)): ORT CPU has no integer HardSwish, so the
#   fused op runs in float between DQ and Q; decomposed, it runs as QLinearAdd/QLinearMul with the Clip
#   folded into the requantization. Speed-up vs FP32, fused -> decomposed: rec 1.31x -> 1.50x, det
#   1.02x -> 1.20x (busy machine), cls equal.
# * **ConvTranspose** (DB head) stays float: ORT CPU has no integer ConvTranspose, so Q/DQ around it
#   only adds two full-resolution passes and rounding.
# * Model outputs and the op feeding them (DB's Sigmoid, Softmax) stay float (quantize_graph_outputs).
# * HS-CLE (algorithms/hs_cle.py) rewrites each Conv->HardSwish->Conv HardSwish as a depthwise 1x1
#   gate Conv + QLinearMul: 2 integer kernels per HardSwish instead of 4 (rec 1.43x -> 1.54x).
# * Without VNNI (this project's AVX2 EPYC) MLAS's u8s8 kernels saturate int16 pair sums, so weights
#   get pair-safe int8 scales (quantization/saturation.py: no same-sign pair above 128) where that
#   measurably helps (host_profile + algorithms/weight_width.py). Versus 7-bit weights on the same
#   layers, same settings (mse, 200 det_train images): det hmean 0.4129 vs 0.4099 (full test set).
#   uint8 weights (U8U8 kernels, no saturation) keep accuracy but ran rec at 1.07x only.
# * **MaxPool** runs in float unless a Conv feeds it. ORT drops the Q/DQ around a MaxPool whose input
#   and output share one quantization and runs it on uint8. Next to an NHWC QLinearConv that is the
#   fast NhwcMaxPool; anywhere else it is the NCHW uint8 MaxPool, a scalar loop, while float MaxPool is
#   MLAS's vectorised kernel. VNNI Xeon host, median model call, interleaved:
#   - PP-OCRv3 cls (MaxPool after HardSwish's Mul), 1 thread: 1.61 -> 1.46 ms with it float;
#   - CRAFT (MaxPool after Conv+ReLU), 2 threads, 512x896: 690 ms fused (NhwcMaxPool) vs 836 ms float;
#   - one MaxPool alone between Q/DQ, 1 thread, uint8 vs DQ -> float -> Q: 2x2/2 on 64x368x640
#     86.0 vs 46.9 ms, 3x3/1 on 512x46x80 82.6 vs 10.0 ms.
# * PP-OCRv6's GELU (exported as Div/Erf/Add/Mul/Mul) fused into com.microsoft.Gelu, its SE
#   squeeze (ReduceMean over H, W) as GlobalAveragePool, nearest Resizes by 4/8 as chains of 2s, and
#   every SE gate's HardSigmoid folded into its Conv as a Clip the requantization absorbs: exact
#   rewrites, each measured in quantization/rewrites.py.
#   Gelu has no integer kernel, so it runs in float between a DQ and a Q (boundary op); on det it
#   becomes x * sigmoid(1.702 x), integer QLinearSigmoid + QLinearMul (an approximation, measured there).
ORT_CPU_FLOAT_PASSTHROUGH = ("MaxPool",)
#: the exact prepare rewrites of ort-cpu, GELU fusion first (quantization/rewrites.py)
ORT_CPU_REWRITES = ("gelu", "resize_x2", "reducemean_gap", "hardsigmoid_conv")
ORT_CPU_LAYOUT_OPS = tuple(op for op in ORT_CPU_OPS if op != "ConvTranspose")
#: relative scale raise for the Q after a float pass-through op: a code q (|q - zp| <= 255) comes back
#: as round(q / (1 + 2**-12)) = q, so the requantization is exact, while the scales differ in float32
PASSTHROUGH_SCALE_NUDGE = 2.0**-12

ORT_CPU = register_target(
    TargetProfile(
        name="ort-cpu",
        description="onnxruntime CPU: uint8 asymmetric activations, per-channel symmetric int8 weights "
        "(the combination ORT's x86 QLinearConv fusion takes), HardSwish decomposed into integer "
        "Add/Mul, GELU fused into one float Gelu, HS-CLE scale migration; QDQ laid out for ORT's "
        "QLinear* fusions, depthwise channel groups padded to the widths MLAS's fused int8 kernels take",
        op_types=ORT_CPU_LAYOUT_OPS,
        activation_dtype="uint8",
        activation_symmetric=False,
        per_channel=True,
        boundary_ops=("HardSwish", "HardSigmoid", "Gelu"),
        float_passthrough_ops=ORT_CPU_FLOAT_PASSTHROUGH,
        fuse_hardswish=False,
        prepare_rewrites=ORT_CPU_REWRITES,
        # det's GELUs in integer kernels as x * sigmoid(1.702 x), right after fusing them:
        # quantization/rewrites.py measures the speed and why rec keeps the exact Gelu
        task_prepare_rewrites={"det": ("gelu", "gelu_sigmoid", *ORT_CPU_REWRITES[1:])},
        default_algorithms=("hs_cle", "hs_floor", "weight_width"),
        # det: HS-CLE's gate convs run at full image resolution there; measured first 100 det_test
        # images hmean 0.4266 with vs 0.4232 without (noise level), det kernel time +20% with it.
        # Activation-range CLE through its ReLU pairs instead: exact and free at run time, output
        # SNR vs float on det_train +1.5 dB (13.4 -> 14.9), held-out det_train hmean 0.3404 -> 0.3469.
        task_algorithms={"det": ("act_cle", "hs_floor", "weight_width")},
        # Sequential bias correction: PP-OCRv3 rec full test 0.5888 -> 0.5980 (fp32 0.6086), but on
        # cls logits (embedded sample) it lowered SQNR 28.0 -> 24.9 dB; so it is validated per model.
        validated_algorithms=("adaround", "bias_correction", "distill"),
        # AdaRound collects each layer's input products over every calibration image, one layer at a
        # time: on PP-OCRv6 small det (736x1312 inputs, 140 images) that measured ~4 min per layer of
        # 83 on 2 cores, hours in all (and on PP-OCRv3 det it raised test fidelity 0.8971 -> 0.9176 but
        # not hmean, 0.4192 -> 0.4162: `ocrquant quantize --algorithms adaround`, `ocrquant eval`).
        # rec/cls layers take seconds.
        # distill on rec: rejected by its own held-out check on PP-OCRv3 rec (fidelity 0.8155 -> 0.812)
        # and on PP-OCRv6 small rec (0.884 -> 0.871 after bias correction; 9.7 min of the default
        # run's 22 on 2 cores, ``ocrquant quantize -m ppocrv6-small-rec --calib-data .../rec_train``),
        # so the default does not try it there; ``--algo distill`` still runs it.
        # cls (PP-OCR v2.0 direction classifier, shipped with v3 and v6): both learning trials were
        # rejected by their held-out check -- AdaRound raised fidelity 0.947 -> 0.9475 while labels fell
        # 0.731 -> 0.7285, distill after bias correction 0.949 -> 0.953 with labels 0.739 -> 0.732 (the
        # sidecar's method_search, ``ocrquant quantize -m ppocrv3-cls --calib-data .../rec_train``) --
        # and took 78.6 s and 129.7 s of the 4.4-minute default run (``python benchmarks/quantize_time.py
        # --tasks cls``); ``--algo adaround`` or ``--algo distill`` still runs them.
        task_validated_algorithms={
            "det": ("bias_correction", "distill"),
            "cls": ("bias_correction",),
            "rec": ("adaround", "bias_correction"),
        },
        weight_dtype_without_vnni="int8p",
        # align_channels (`ocrquant bench --rounds 30`, 2 threads): cls 1.02x -> 1.18x FP32 at
        # batch 1, 0.92x -> 1.32x at batch 8; nhwc_upsample: det's nearest Resizes as integer
        # Expands in onnxruntime's NHWC layout (quantization/qdq_passes.py measures it)
        qdq_passes=("fold_scalar_mul", "align_channels", "nhwc_upsample", "fold_constant_qdq"),
    )
)
# OpenVINO (CPU plugin) quantizes the way NNCF lays a model out for it: Q/DQ on the *inputs* of the
# ops with an integer kernel there (Conv, MatMul, Gemm, and the residual Add and Concat, whose int8
# outputs feed the next Conv without a requantize), never on a Conv's output. OpenVINO then runs each
# ``Conv -> bias -> activation -> (per-channel Mul) -> Q`` as one int8 kernel with float post-ops, so
# HardSwish stays one fused op and GELU OpenVINO's own exact kernel; what ort-cpu adds for its QLinear
# fusions only costs here: HS-CLE's gate Conv + Mul per HardSwish, the decomposed HardSwish, Q/DQ on
# activations and SE Muls, padded channel groups, det's sigmoid GELU. HardSwish channel ranges are
# equalised by ``hs_scale`` instead (a per-channel Mul after the HardSwish, a post-op of the producer's
# kernel; without it PP-OCRv3 rec reads nothing, as with no HS-CLE on ort-cpu; docs/quantization.md).
# ConvTranspose stays float (int8 53.0 vs float 53.9 ms on v6 det at 736x1312, within run-to-run
# noise). ``python benchmarks/openvino_target.py`` (docs/results.md), 2-core AMX Xeon, speed-up over
# OpenVINO FP32 of this layout against the ort-cpu file (whose det upsamples are laid out for
# onnxruntime's NHWC data): PP-OCRv6 small det 2.20x vs 1.35x, v6 small rec 1.81x vs 1.66x (batch 1),
# PP-OCRv3 rec 1.42x vs 1.16x, det 1.71x vs 0.93x; every full-test-set metric inside its paired
# interval of the ort-cpu file in onnxruntime, except PP-OCRv3 rec's, higher.
OPENVINO_OPS = ("Conv", "MatMul", "Gemm", "Add", "Concat")
register_target(
    dataclasses.replace(
        ORT_CPU,
        name="openvino",
        description="OpenVINO CPU: uint8 asymmetric activations and per-channel symmetric int8 weights on "
        "the inputs of Conv/MatMul/Gemm/Add/Concat only (OpenVINO fuses each Conv with its activation "
        "and the next Q into one int8 kernel), HardSwish and GELU kept whole, HardSwish ranges equalised "
        "by a fused per-channel Mul",
        op_types=OPENVINO_OPS,
        boundary_ops=(),
        float_passthrough_ops=(),
        fuse_hardswish=True,
        task_prepare_rewrites={},
        ort_extra_options=INPUTS_ONLY_OF_WEIGHTED_OPS,
        default_algorithms=("hs_scale", "weight_width"),
        task_algorithms={"det": ("act_cle", "hs_scale", "weight_width")},
        qdq_passes=("fold_scalar_mul", "fold_constant_qdq"),
    )
)
register_target(
    TargetProfile(
        name="tensorrt",
        description="TensorRT explicit quantization: symmetric per-tensor int8 activations, per-channel "
        "symmetric int8 weights, Q/DQ on the inputs of compute ops, one Q/DQ pair per consumer",
        op_types=ACCELERATOR_OPS,
        activation_dtype="int8",
        activation_symmetric=True,
        per_channel=True,
        ort_extra_options={"DedicatedQDQPair": True, **INPUTS_ONLY_OF_WEIGHTED_OPS},
        # PP-LCNet rec (PP-OCRv3) with per-tensor activations and no scale migration reads nothing:
        # 300 rec_train crops, mse ranges, --keep-all-int8, acc 0.0000 (min_max and percentile 99.99:
        # 0.0000 / 0.0100; FP32 0.7267); its HardSwish outputs span [-0.375, 35] with most channels
        # near 0. HS-CLE + hs_floor: 0.6800. On the cls model they cost labels (1000 rec_train crops,
        # percentile 99.999: 0.7290 -> 0.6990, FP32 0.7540), so only rec gets them.
        task_algorithms={"rec": ("hs_cle", "hs_floor")},
    )
)
register_target(
    TargetProfile(
        name="npu-pow2",
        description="integer-only NPU: symmetric per-tensor int8 everywhere, power-of-two scales (shift "
        "rescaling)",
        # an integer-only NPU also runs the activations and layout ops in int8
        op_types=ACCELERATOR_OPS + ("Relu", "Clip", "Reshape", "Transpose"),
        activation_dtype="int8",
        activation_symmetric=True,
        per_channel=False,
        scale_constraint="pow2",
        # As on tensorrt, PP-LCNet rec reads nothing without scale migration: 300 rec_train crops
        # (FP32 0.7267), --calib-size 300 -b 16 --keep-all-int8, PP-OCRv3 rec mse 0.0000 -> 0.4967 and
        # min_max 0.0000 -> 0.1133 with HS-CLE + hs_floor; PP-OCRv4 rec min_max 0.0000 either way;
        # PP-OCRv6 small rec has no HardSwish (0.0533 with mse either way, FP32 0.8600). Only rec gets them.
        task_algorithms={"rec": ("hs_cle", "hs_floor")},
    )
)


def cpu_has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU has a VNNI int8 dot product (AVX512-VNNI, AVX-VNNI or AMX).

    Without it onnxruntime's (MLAS) u8 x s8 kernels use ``vpmaddubsw``, which adds two u8*s8 products
    into a *saturating* int16: 255 * 127 * 2 > 32767. Measured on this project's AVX2 EPYC: the INT8
    cls model loses 3.8 points with the fused kernels and none at all when the same QDQ model runs
    unfused (ORT_DISABLE_ALL, exact integer emulation). Non-x86 or unreadable: assume no saturation.
    """

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return True
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def host_profile(profile: TargetProfile, has_vnni: bool | None = None) -> TargetProfile:
    """The profile adjusted to the CPU quantizing (and, for ort-cpu, running) the model: the
    ``weight_dtype_without_vnni`` weights (pair-safe int8: every u8 x s8 pair sum inside int16) where
    the int8 kernels would saturate. Depthwise convs keep plain 8 bits: ORT runs them in a separate
    int32-accumulating kernel."""
    if profile.weight_dtype_without_vnni is None:
        return profile
    if has_vnni is None:
        has_vnni = cpu_has_vnni()
    if has_vnni:
        return profile

    return dataclasses.replace(
        profile, weight_dtype=profile.weight_dtype_without_vnni, weight_dtype_without_vnni=None
    )


def get_target(name: str) -> TargetProfile:
    try:
        return TARGETS[name]
    except KeyError:
        raise OcrQuantError(f"unknown target '{name}' (known: {', '.join(sorted(TARGETS))})") from None


def is_pow2(x: float) -> bool:
    m, _ = math.frexp(float(x))
    return x > 0 and m == 0.5
