"""float8 e5m2 <-> float32 in integer arithmetic, for both kernel backends.

float8 e5m2 (ONNX FLOAT8E5M2: 1 sign, 5 exponent bits biased by 15, 2 mantissa bits, with
infinities and NaNs; the upper byte of a float16) is a storage type like float16: its bits
travel as an I8 and arithmetic is float32. These conversions are straight-line integer
code (shifts, masks, compares, selects), as kernel/half.py's.

narrow() rounds to nearest even, with e5m2 subnormals (down to 2^-16), and NaN to the
quiet NaN 0x7E (sign kept). Overflow, per ONNX's Cast/QuantizeLinear table for E5M2:
  saturate=1  |x| > 57344 (the largest finite e5m2), infinities included -> +-57344
  saturate=0  |x| >= 61440 (rounds past 57344) and infinities -> +-infinity
which is what onnx's reference computes (ml_dtypes' conversion after a clip to the finite
range when saturating). widen() is exact, every NaN becoming float32's quiet NaN.
"""
from __future__ import annotations

from . import half
from .llvm import F32, I8, I32, Expr, Kernel

MAX_E5M2 = 57344.0
E5M2_NAN, E5M2_INF, E5M2_MAX = 0x7E, 0x7C, 0x7B
FLOAT8 = ("float8_e5m2",)  # the float8 storage types (ir.DTYPES)


def widen(k: Kernel, b: Expr) -> Expr:
    """The bits of a float8 e5m2 (I8) -> its float32 value (exact)."""
    u = k.cast(b, I32, unsigned=True)
    sign = (u & 0x80) << 24
    mag = u & 0x7F
    normal = (mag << 21) + 0x38000000  # exponent rebiased from 15 to 127
    m = u & 0x3  # a subnormal is m * 2^-16: m as a float (exact), exponent less 16
    sub = k.select(m.eq(0), 0, k.bitcast(k.cast(m, F32), I32) - (16 << 23))
    bits = k.select(mag > E5M2_INF, k.lift(0x7FC00000, like=I32),
                    k.select(mag.eq(E5M2_INF), k.lift(0x7F800000, like=I32),
                             k.select(mag >= 4, normal, sub)))
    return k.bitcast(bits | sign, F32)


def narrow(k: Kernel, x: Expr, saturate: bool = True) -> Expr:
    """A float32 -> the bits of the nearest float8 e5m2 (I8), ties to even."""
    one = k.lift(1, like=I32)
    b = k.bitcast(x, I32)
    sign = k.unsigned(">>", b, k.lift(24, like=I32)) & 0x80
    a = b & 0x7FFFFFFF
    # normal e5m2: drop 21 mantissa bits, rounding half to even; a carry into the exponent
    # is the right result (the exponent 31 of infinity is decided by the overflow bound)
    lsb = k.unsigned(">>", a, k.lift(21, like=I32)) & 1
    normal = k.unsigned(">>", a + (0xFFFFF - 0x38000000) + lsb, k.lift(21, like=I32))
    # subnormal e5m2 (|x| < 2^-14): the 24-bit significand shifted right by s = 134 - e
    # (units of 2^-16), rounded half to even; s is clamped to 1..25 (25 rounds every
    # smaller value, float32 subnormals and zero included, to 0)
    e = k.unsigned(">>", a, k.lift(23, like=I32))
    s = k.min(k.max(134 - e, one), k.lift(25, like=I32))
    sig = (a & 0x7FFFFF) | 0x800000
    q = k.unsigned(">>", sig, s)
    rem = sig & ((one << s) - 1)
    halfway = one << (s - 1)
    up = (rem > halfway) | (rem.eq(halfway) & (q & 1).eq(1))
    sub = q + k.select(up, one, k.lift(0, like=I32))
    over = k.lift(E5M2_MAX if saturate else E5M2_INF, like=I32)
    mag = k.select(a > 0x7F800000, k.lift(E5M2_NAN, like=I32),
                   k.select(a >= 0x47700000, over,  # 61440 and up (infinity too)
                            k.select(a >= 0x38800000, normal, sub)))
    return k.cast(mag | sign, I8)


def narrow_f64(k: Kernel, x: Expr, saturate: bool = True) -> Expr:
    """A float64 -> the bits of the nearest float8 e5m2: through a float32 rounded to odd,
    which then rounds once, correctly (24 >= 3 + 2 bits)."""
    return narrow(k, half.round_to_odd_f32(k, x), saturate)


# storage type -> its exact conversion to float32
WIDEN = {"float16": half.widen, "float8_e5m2": widen}
