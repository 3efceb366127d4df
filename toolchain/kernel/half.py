"""float16 <-> float32 in integer arithmetic, for both kernel backends.

float16 is a storage type (ir.DTYPES): its bits travel as an I16 and the arithmetic is
float32 (the importer wraps each op without float16 support in Casts: frontend/float16.py).
These conversions are straight-line integer code (shifts, masks, compares, selects): no
libcall (__extendhfsf2, __truncsfhf2) is ever left for a target without half-precision
hardware, and the C backend needs no _Float16. narrow() rounds to nearest even, with
float16 subnormals, overflow to infinity, infinities and NaN (quieted; sign kept).
"""
from __future__ import annotations

from .llvm import F32, F64, I16, I32, I64, Expr, Kernel


def widen(k: Kernel, h: Expr) -> Expr:
    """The bits of a float16 (I16) -> its float32 value (exact)."""
    u = k.cast(h, I32, unsigned=True)
    sign = (u & 0x8000) << 16
    mag = u & 0x7FFF
    a = mag << 13
    normal = a + 0x38000000  # exponent rebiased from 15 to 127
    special = a + 0x70000000  # exponent 31: infinity or NaN, the payload kept
    m = u & 0x3FF  # a subnormal is m * 2^-24: m as a float (exact), exponent less 24
    sub = k.select(m.eq(0), 0, k.bitcast(k.cast(m, F32), I32) - (24 << 23))
    bits = k.select(mag >= 0x7C00, special, k.select(mag >= 0x0400, normal, sub))
    return k.bitcast(bits | sign, F32)


def narrow(k: Kernel, x: Expr) -> Expr:
    """A float32 -> the bits of the nearest float16 (I16), ties to even."""
    b = k.bitcast(x, I32)
    sign = k.unsigned(">>", b, k.lift(16, like=I32)) & 0x8000
    a = b & 0x7FFFFFFF
    nan = (k.unsigned(">>", a, k.lift(13, like=I32)) & 0x3FF) | 0x7E00
    # normal float16: drop 13 mantissa bits, rounding half to even; a carry into the
    # exponent is the right result (up to 0x7C00 never reached: see the overflow bound)
    lsb = k.unsigned(">>", a, k.lift(13, like=I32)) & 1
    normal = k.unsigned(">>", a + (0xFFF - 0x38000000) + lsb, k.lift(13, like=I32))
    # subnormal float16 (|x| < 2^-14): the 24-bit significand shifted right by s, rounded
    # half to even; s is clamped to 1..25 (25 rounds every smaller value to 0)
    e = k.unsigned(">>", a, k.lift(23, like=I32))
    s = k.min(k.max(126 - e, k.lift(1, like=I32)), k.lift(25, like=I32))
    sig = (a & 0x7FFFFF) | 0x800000
    q = k.unsigned(">>", sig, s)
    rem = sig & ((k.lift(1, like=I32) << s) - 1)
    half = k.lift(1, like=I32) << (s - 1)
    up = (rem > half) | (rem.eq(half) & (q & 1).eq(1))
    sub = q + k.select(up, k.lift(1, like=I32), k.lift(0, like=I32))
    mag = k.select(a > 0x7F800000, nan,
                   k.select(a >= 0x477FF000, k.lift(0x7C00, like=I32),  # 65520 and up: infinity
                            k.select(a >= 0x38800000, normal, sub)))
    return k.cast(mag | sign, I16)


def narrow_f64(k: Kernel, x: Expr) -> Expr:
    """A float64 -> the bits of the nearest float16: through a float32 rounded to odd (the
    low bit records inexactness), which then rounds once, correctly (24 >= 11 + 2 bits)."""
    return narrow(k, round_to_odd_f32(k, x))


def round_to_odd_f32(k: Kernel, x: Expr) -> Expr:
    """A float64 -> float32 rounded toward zero with the low bit set when inexact: rounding
    that float32 again to p <= 22 bits gives the float64's correct rounding. The sign is
    the float64's, NaN's too (RISC-V's fcvt.s.d returns the positive canonical NaN)."""
    r = k.cast(x, F32)
    back = k.cast(r, F64)
    bits = k.bitcast(r, I32)
    toward_zero = bits - k.select(k.abs(back) > k.abs(x), k.lift(1, like=I32), k.lift(0, like=I32))
    odd = k.select(back.ne(x), toward_zero | 1, bits)
    sign = k.cast(k.unsigned(">>", k.bitcast(x, I64), k.lift(63, like=I64)), I32) << 31
    return k.bitcast((odd & 0x7FFFFFFF) | sign, F32)
