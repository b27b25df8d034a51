"""Weight scales that cannot saturate onnxruntime's AVX2 u8 x s8 kernels.

Why: without VNNI, MLAS multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which adds
the two products of each *pair* of reduction indices (k = 2i, 2i+1) into a saturating int16. A pair
of large same-sign weights meeting large activations overflows (255 * 127 * 2 = 64770 > 32767) and
the output is silently wrong. The classic fix, 7-bit weights everywhere (onnxruntime's
``reduce_range``), halves every channel's precision although only channels with two large same-sign
weights *in one pair* can overflow. Here the per-channel scale is the smallest that keeps every
pair's worst case inside int16 for any uint8 input:

    sum over the pair of max(q_k, 0)  <= 128   and   sum of min(q_k, 0) >= -128   (255 * 128 = 32640)

which is 8-bit precision for a channel whose large weights are not paired, 7-bit only for the worst.

Pair layout, measured on onnxruntime 1.31 CPU (x86 AVX2, QLinearConv in NHWC; see
``tests/test_saturation.py``, which checks it against the real kernel): the reduction index of a
Conv is ordered (kh, kw, cin) within a group, so pairs are adjacent input channels at one tap and
cross taps when cin is odd; MatMul pairs adjacent rows of its (K, N) weight. Depthwise convs run in
a separate int32 kernel and never saturate.
"""

from __future__ import annotations

import numpy as np

# The largest pair sum, in weight integer units, that stays inside int16 for any uint8 input.
PAIR_LIMIT = 128
QMAX = 127
PAIR_LAYOUT_OPS = ("Conv", "MatMul")


def reduction_major(w: np.ndarray, op_type: str) -> np.ndarray:
    """The weight as (output channels, K) with K in the kernel's reduction order."""
    if op_type == "Conv":
        cout = w.shape[0]
        return np.moveaxis(w, 1, -1).reshape(cout, -1)  # (cout, kh, kw, cin) -> (cout, K)
    if op_type == "MatMul" and w.ndim == 2:
        return w.T  # (K, N) -> (N, K)
    raise ValueError(f"no pair layout for {op_type} weight of shape {w.shape}")


def from_reduction_major(rows: np.ndarray, shape: tuple[int, ...], op_type: str) -> np.ndarray:
    """Inverse of :func:`reduction_major`: (output channels, K) back to the weight's own layout."""
    if op_type == "Conv":
        cout, cin, kh, kw = shape
        return np.moveaxis(rows.reshape(cout, kh, kw, cin), -1, 1)
    return rows.T.reshape(shape)


def pair_extremes(w: np.ndarray, op_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel: the largest pair sum of positive parts and of negative parts (magnitude)."""
    m = reduction_major(np.asarray(w, dtype=np.float64), op_type)
    if m.shape[1] % 2:
        m = np.concatenate([m, np.zeros((m.shape[0], 1))], axis=1)
    pairs = m.reshape(m.shape[0], -1, 2)
    pos = np.clip(pairs, 0, None).sum(axis=2).max(axis=1)
    neg = -np.clip(pairs, None, 0).sum(axis=2).min(axis=1)
    return pos, neg


def pair_safe_scale(w: np.ndarray, op_type: str) -> np.ndarray:
    """Per-output-channel symmetric int8 scale with no saturating pair for any uint8 input.

    With ``s = max pair sum / 127`` a pair's rounded sum is at most 127 + 2 * 0.5 = 128.
    """
    pos, neg = pair_extremes(w, op_type)
    bound = np.maximum(pos, neg)
    scale = bound / QMAX
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def worst_pair_sum(q: np.ndarray, op_type: str) -> int:
    """The largest |pair sum| of an integer weight, positive and negative parts (for checks)."""
    pos, neg = pair_extremes(q, op_type)
    return int(max(pos.max(initial=0), neg.max(initial=0)))
