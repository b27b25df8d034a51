"""Fixed-point requantisation as integer accelerators do it (gemmlowp / TFLite convention).

A real multiplier ``M = S_in * S_w / S_out`` is stored as an int32 ``M0`` in ``[2^30, 2^31)`` and an
exponent ``e`` with ``M = M0 * 2^(e - 31)``; ``acc * M`` is then one 64-bit product and one rounding
right shift by ``31 - e``. TFLite rounds twice (a "doubling high multiply" then a rounding shift);
here the 64-bit product is shifted once, which is what current NPUs and CMSIS-NN's single-rounding
mode do and differs from a float reference only in rare ties. Rounding modes:

* ``half_away`` (default): ties away from zero (TFLite's ``RoundingDivideByPOT``).
* ``half_up``: ties toward +inf (``(x + 2^(n-1)) >> n``, the cheapest in hardware).
* ``half_even``: ties to even (convergent rounding; what onnxruntime's float QuantizeLinear does, so
  the mode to use when bit-exact agreement with onnxruntime matters more than a given NPU's rule).

When ``M`` is a power of two (``M0 == 2^30``, e.g. every scale a power of two as for ``npu-pow2``) the
multiply disappears and requantisation is a pure rounding shift; the result is bit-identical.
Every result saturates to the output type's range.
"""

from __future__ import annotations

import numpy as np

ROUNDING_MODES = ("half_away", "half_up", "half_even")
#: how an accumulator is brought to the output scale: an int32 multiplier and a shift (integer
#: accelerators, TFLite/gemmlowp) or a float32 multiply rounded half to even (onnxruntime's MLAS
#: kernels on CPU, TensorRT), which differ by one step on near-ties
REQUANT_MODES = ("fixed", "float32")
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


def qrange(dtype: np.dtype | type) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def quantize_multiplier(m: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``m`` (>= 0) into int32 ``M0`` in ``[2^30, 2^31)`` and exponent ``e``: ``m = M0 * 2^(e-31)``.

    ``m == 0`` gives ``M0 = 0``. The mantissa is rounded to 31 bits (relative error <= 2^-31).
    """
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("multiplier must be finite and >= 0")
    mant, exp = np.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    m0 = np.round(mant * (1 << 31)).astype(np.int64)
    carry = m0 == (1 << 31)
    m0 = np.where(carry, 1 << 30, m0)
    exp = np.where(carry, exp + 1, exp).astype(np.int64)
    exp = np.where(m == 0, 0, exp)
    return m0, exp


def is_power_of_two(m: np.ndarray | float) -> np.ndarray:
    m0, _ = quantize_multiplier(m)
    return m0 == (1 << 30)


def rounding_shift_right(x: np.ndarray, n: np.ndarray | int, mode: str = "half_away") -> np.ndarray:
    """``round(x / 2^n)`` in integers; ``n <= 0`` shifts left. Shifts past 62 bits give 0."""
    x = np.asarray(x, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode '{mode}' ({', '.join(ROUNDING_MODES)})")
    n_min, n_max = (int(n.min()), int(n.max())) if n.size else (1, 1)
    if n_min < 1 or n_max > 62:  # rare: left shifts or shifts that empty the value; the general path
        nn = np.clip(n, 1, 62)
        r = _round_shift(x, nn, mode)
        r = np.where(n > 62, 0, r)
        return np.where(n > 0, r, np.left_shift(x, np.maximum(-n, 0)))
    return _round_shift(x, n, mode)


def _round_shift(x: np.ndarray, n: np.ndarray, mode: str) -> np.ndarray:
    """The rounding right shift for 1 <= n <= 62."""
    half = np.left_shift(np.int64(1), n - 1)
    if mode == "half_up":
        return np.right_shift(x + half, n)
    if mode == "half_away":
        r = np.abs(x)
        r += half
        r >>= n
        return np.where(x < 0, -r, r)
    floor = np.right_shift(x, n)
    rem = x - np.left_shift(floor, n)
    return floor + ((rem > half) | ((rem == half) & (floor & 1).astype(bool)))


def rounding_divide(num: np.ndarray, den: np.ndarray | int, mode: str = "half_away") -> np.ndarray:
    """``round(num / den)`` exactly in integers (den > 0), ties by ``mode``: an averaging unit's divider."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q, r = np.divmod(num, den)  # floor division, 0 <= r < den
    twice = 2 * r
    up = twice > den
    tie = twice == den
    if mode == "half_up":
        up |= tie
    elif mode == "half_away":
        up |= tie & (num >= 0)
    elif mode == "half_even":
        up |= tie & (q % 2 == 1)
    else:
        raise ValueError(f"unknown rounding mode '{mode}' ({', '.join(ROUNDING_MODES)})")
    return q + up


def multiply_by_quantized_multiplier(
    acc: np.ndarray, m0: np.ndarray, exp: np.ndarray, mode: str = "half_away"
) -> np.ndarray:
    """``round(acc * M0 * 2^(e-31))``: one int64 product (|acc| < 2^31, M0 < 2^31) and one rounding shift.

    Power-of-two multipliers take the shift-only path (no multiplier in hardware); same result.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    exp = np.asarray(exp, dtype=np.int64)
    if np.all(m0 == (1 << 30)):
        return rounding_shift_right(acc, 1 - exp, mode)
    return rounding_shift_right(acc * m0, 31 - exp, mode)


def saturate(x: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    lo, hi = qrange(dtype)
    return np.clip(x, lo, hi).astype(dtype)


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray | float,
    zero_point: np.ndarray | int,
    dtype: np.dtype | type,
    mode: str = "half_away",
) -> np.ndarray:
    """int32 accumulator -> output integer type: ``saturate(round(acc * M) + zp)``.

    ``multiplier`` and ``zero_point`` must already broadcast against ``acc`` (per-channel shapes).
    """
    m0, exp = quantize_multiplier(multiplier)
    y = multiply_by_quantized_multiplier(acc, m0, exp, mode) + np.asarray(zero_point, dtype=np.int64)
    return saturate(y, dtype)


def requantize_float32(
    acc: np.ndarray, multiplier: np.ndarray | float, zero_point: np.ndarray | int, dtype: np.dtype | type
) -> np.ndarray:
    """``saturate(rint(float32(acc) * float32(M)) + zp)``: MLAS's requantisation, ties to even."""
    y = np.rint(np.asarray(acc).astype(np.float32) * np.asarray(multiplier, dtype=np.float32))
    return saturate(y.astype(np.int64) + np.asarray(zero_point, dtype=np.int64), dtype)


def saturate_int32(acc: np.ndarray) -> tuple[np.ndarray, int]:
    """Clamp an accumulator to int32 (a saturating accumulator); also return how many overflowed."""
    acc = np.asarray(acc, dtype=np.int64)
    over = int(np.count_nonzero((acc > INT32_MAX) | (acc < INT32_MIN)))
    return (np.clip(acc, INT32_MIN, INT32_MAX) if over else acc), over


def round_half_even(x: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear's rounding (ties to even), used where the graph itself quantizes."""
    return np.rint(x)
