"""Transcendental functions written out in arithmetic, so generated code never calls libm.

Every function is straight-line (selects, no branches) so the loop vectorizer can
widen it. Coefficients are Cephes' single-precision minimax polynomials. Maximum
errors against numpy in float64, in float32 ulp, measured over the whole useful range
(tests/test_mathfns.py holds the bounds; measured on x86-64-v3 and cortex-a76 alike):

    exp 0.93 (bound 2)   log 0.76 (2)   tanh 1.20 (2)   sigmoid 2.22 (3)   erf 2.93 (4)
    sin 1.49 (2)   cos 1.48 (2)   tan 2.55 (3)   (|x| up to 6.5e6; beyond, see _octant)
    atan 2.65 (3)   asin 2.21 (3)   acos 1.24 (2)   sinh 2.30 (3)   cosh 2.30 (3)
    asinh 3.01 (4)   acosh 1.95 (3)   atanh 1.30 (2)

NaN propagates; exp overflows to inf and underflows to 0 (no denormal results).
round_even and the float32 fmod are exact. The trigonometric range reduction and the
float fmod work in float64 (every profile in targets/ has a double-precision FPU).

float64 (exp, log, tanh, erf from Cephes' double-precision rationals; sigmoid from exp):
maximum errors in float64 ulp against long-double references (tests/test_ops_f64.py):

    exp 1.62 (bound 2)   log 0.87 (1.5)   tanh 1.27 (2)   sigmoid 2.14 (3)   erf 2.0 (3)

exp's results near overflow and in the subnormal range are right (rounded once); log takes
subnormal inputs. Nothing converts between float64 and int64 (a libcall on 32-bit cores).
"""
from __future__ import annotations

from .llvm import F32, F64, I32, I64, Expr, Kernel

LOG2E = 1.44269504088896341
EXP_HI = 88.3762626647949
EXP_LO = -87.3365447504
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: x + it - it rounds x (|x| < 2^22) to an integer, in float32


def _poly(x: Expr, coeffs) -> Expr:
    acc = x.k.lift(coeffs[0], like=x)
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def _bits(x: Expr) -> Expr:
    return x.k.bitcast(x, I32)


def _float(i: Expr) -> Expr:
    return i.k.bitcast(i, F32)


def _is64(x: Expr) -> bool:
    ty = x.v.type
    return getattr(ty, "element", ty) == F64


def floor(k: Kernel, x: Expr) -> Expr:
    """floor without a libcall (RISC-V F has no rounding instruction): truncate and
    correct; values of magnitude >= 2^23 are already integers. float64: round to nearest
    (no float64 -> int64 conversion, a libcall on 32-bit cores) and correct."""
    if _is64(x):
        r = round_even(k, x)
        return r - k.select(r > x, k.lift(1.0, like=x), 0.0)
    t = k.cast(k.cast(x, I32), F32)
    t = t - k.select(t > x, 1.0, 0.0)
    return k.select(k.abs(x) < 8388608.0, t, x)


def ceil(k: Kernel, x: Expr) -> Expr:
    return -floor(k, -x)


def exp(k: Kernel, x: Expr, nonpositive: bool = False) -> Expr:
    """Cephes expf: n = round(x/ln2), r = x - n ln2 in two parts, e^r by polynomial,
    2^n assembled in the exponent bits. Max rel. error ~2 ulp on the clamped range;
    overflow gives inf, underflow 0 (not denormals), NaN stays NaN. float64: _exp_f64.
    nonpositive: the caller knows x <= 0 or NaN (softmax's x - max): no overflow side."""
    if _is64(x):
        return _exp_f64(k, x)
    with k.precise():
        arg = x
        x = k.max(x, EXP_LO) if nonpositive else k.min(k.max(x, EXP_LO), EXP_HI)
        # n = round(x / ln2) by adding and subtracting 1.5 * 2^23 (strict evaluation keeps
        # both): t's low mantissa bits then hold n, which the shift moves into the exponent
        t = x * LOG2E + ROUND_MAGIC
        nf = t - ROUND_MAGIC
        r = x - nf * LN2_HI
        r = r - nf * LN2_LO
        p = _poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                      4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
        p = p * (r * r) + r + 1.0
        scale = _float((_bits(t) << 23) + (127 << 23))
        # a NaN passes the clamps (Kernel.min/max keep a NaN first operand) and both
        # compares below are false for it: p, and so the result, is NaN
        r = p * scale if nonpositive else k.select(arg > EXP_HI, float("inf"), p * scale)
        return k.select(arg < EXP_LO, 0.0, r)


def log(k: Kernel, x: Expr) -> Expr:
    """Cephes logf: split mantissa and exponent from the bits, polynomial on the mantissa.
    log(0) = -inf, log(negative) = NaN. float64: _log_f64."""
    if _is64(x):
        return _log_f64(k, x)
    with k.precise():
        bits = _bits(x)
        e = k.cast((bits >> 23) & 0xFF, F32) - 126.0
        m = _float((bits & 0x807FFFFF) | 0x3F000000)
        small = m < 0.707106781186547524
        e = e - k.select(small, 1.0, 0.0)
        m = k.select(small, m + m - 1.0, m - 1.0)
        z = m * m
        y = _poly(m, [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                      1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                      3.3333331174e-1])
        y = y * m * z
        y = y + e * LN2_LO
        y = y - z * 0.5
        r = m + y + e * LN2_HI
        r = k.select(x.eq(0.0), float("-inf"), r)
        r = k.select(x < 0.0, float("nan"), r)
        r = k.select(x.eq(float("inf")), float("inf"), r)
        return k.select(x.eq(x), r, x)


def sigmoid(k: Kernel, x: Expr) -> Expr:
    """float64: from e = e^-|x|, 1/(1 + e) or e/(1 + e), so that far below zero the result
    keeps its relative accuracy down to the subnormals (e^-x would overflow)."""
    if _is64(x):
        e = _exp_f64(k, -k.abs(x))
        r = 1.0 / (e + 1.0)
        return k.select(x >= 0.0, r, e * r)
    return 1.0 / (exp(k, -x) + 1.0)


def softplus(k: Kernel, x: Expr) -> Expr:
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|). float64: the last term as log1p (below), so
    far below zero the result is e^x to full relative precision, not 0."""
    e = exp(k, -k.abs(x))
    if _is64(x):
        return k.max(x, 0.0) + _log1p_f64(k, e)
    return k.max(x, 0.0) + log(k, e + 1.0)


def tanh(k: Kernel, x: Expr) -> Expr:
    """Cephes tanhf: an odd polynomial below |x| = 0.625 (where (e^2x - 1)/(e^2x + 1)
    would cancel), the exp form above, clamped where tanh is 1 to float precision."""
    if _is64(x):
        return _tanh_f64(k, x)
    a = k.min(k.abs(x), 9.0)
    e = exp(k, a * 2.0)
    big = 1.0 - 2.0 / (e + 1.0)
    z = a * a
    small = a + a * z * _poly(z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                  1.33314422036e-1, -3.33332819422e-1])
    t = k.select(a < 0.625, small, big)
    return k.select(x < 0.0, -t, t)  # NaN: a is NaN (max/min propagate it), so is t


def erf(k: Kernel, x: Expr) -> Expr:
    """Cephes erff's odd polynomial below |x| = 1 (relative error near 1 ulp, also near
    zero), Abramowitz & Stegun 7.1.26 above (absolute error <= 1.5e-7 where erf > 0.84)."""
    if _is64(x):
        return _erf_f64(k, x)
    a = k.abs(x)
    t = 1.0 / (a * 0.3275911 + 1.0)
    p = _poly(t, [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592]) * t
    tail = 1.0 - p * exp(k, -(a * a))
    near = a * _poly(a * a, [7.853861353153693e-5, -8.010193625184903e-4, 5.188327685732524e-3,
                             -2.685381193529856e-2, 1.128358514861418e-1, -3.761262582423300e-1,
                             1.128379165726710])
    y = k.select(a < 1.0, near, tail)
    return k.select(x < 0.0, -y, y)


def pow(k: Kernel, a: Expr, b: Expr) -> Expr:
    """a**b as exp(b log|a|), with C pow's sign and zero rules for integer exponents. The
    rounding error of b log|a| is magnified by exp: about (2 + |b log a|) ulp (float64 included,
    where that is up to ~750 ulp, 1.7e-13 relative, for results near the ends of the range)."""
    one = k.lift(1.0, like=a)
    mag = exp(k, b * log(k, k.abs(a)))
    b_int = floor(k, b).eq(b)
    b_odd = b_int & floor(k, b * 0.5).ne(b * 0.5)
    neg = a < 0.0
    res = k.select(neg & b_odd, -mag, mag)
    res = k.select(neg & ~b_int, float("nan"), res)
    zero_base = a.eq(0.0)
    # a zero base keeps its sign under an odd integer exponent: (-0)^3 = -0, (-0)^-1 = -inf
    zero_pow = k.select(b > 0.0, k.select(b_odd, a, one * 0.0), k.select(b_odd, one / a, one * float("inf")))
    res = k.select(zero_base, k.select(b.eq(b), zero_pow, b), res)
    return k.select(b.eq(0.0) | a.eq(1.0), one, res)  # 1^y = 1 and x^0 = 1, NaNs included


# -- rounding and remainders, for float32 and float64 alike ------------------------------------
def _exact_above(x: Expr) -> float:
    """The magnitude from which every value of x's type is an integer."""
    return 4503599627370496.0 if x.v.type == F64 else 8388608.0


def trunc(k: Kernel, x: Expr) -> Expr:
    """Round toward zero: float32 through an int32; large values, infinities and NaN are
    already integral (or NaN) and pass unchanged. float64: |x| rounded to nearest and
    corrected down, the sign put back (a float64 -> int64 conversion is a libcall,
    __aeabi_d2lz, on 32-bit cores)."""
    if x.v.type == F64:
        a = k.abs(x)
        r = round_even(k, a)
        r = r - k.select(r > a, k.lift(1.0, like=x), 0.0)
        return k.select(x < 0.0, -r, r)  # -0.5 -> -0; NaN and infinities: round_even passes them
    t = k.cast(k.cast(x, I32), x.v.type)
    return k.select(k.abs(x) < _exact_above(x), t, x)


def round_even(k: Kernel, x: Expr) -> Expr:
    """Round half to even (numpy.round, ONNX Round): adding and removing 2^23 (2^52) makes the
    FPU round in its default mode, round-to-nearest-even; exact, under strict evaluation."""
    big = _exact_above(x)
    with k.precise():
        a = k.abs(x)
        r = (a + big) - big
        r = k.select(x < 0.0, -r, r)
        return k.select(a < big, r, x)


def fmod(k: Kernel, a: Expr, b: Expr) -> Expr:
    """C fmod, the sign of a; fmod(x, 0), fmod(inf, y) and NaNs give NaN, fmod(x, inf) = x.
    float32: exact over the whole range, by integer long division of the mantissas
    (|a| = ma 2^ea, |b| = mb 2^eb: the result is (ma 2^(ea-eb) mod mb) 2^eb, the power worked
    32 bits at a time in 8 straight-line steps). float64: a - trunc(a/b) b, exact while the
    quotient stays below about 2^53 / 2^(bits of b's mantissa), approximate beyond."""
    if a.v.type == F64:
        return _fmod_f64(k, a, b)
    with k.precise():
        ma, ea = _mantissa_exponent(k, a)
        mb, eb = _mantissa_exponent(k, b)
        m64 = k.cast(k.select(mb.eq(0), k.lift(1, like=mb), mb), I64)
        r = k.unsigned("%", k.cast(ma, I64), m64)
        d = k.max(ea - eb, 0)
        for _ in range(8):  # exponents differ by at most 253
            step = k.min(d, 32)
            r = k.unsigned("%", r << k.cast(step, I64), m64)
            d = d - step
        scale = k.bitcast((k.cast(eb, I64) + (1023 - 150)) << 52, F64)  # 2^(eb - 150), a normal double
        res = k.cast(k.cast(r, F64) * scale, F32)  # exact: r < 2^24
        res = k.select(ea < eb, k.abs(a), res)
        res = k.select(_bits(a) < 0, -res, res)  # the sign of a, -0 included
        nan = ~(k.abs(a) < float("inf")) | ~b.eq(b) | b.eq(0.0)
        return k.select(nan, float("nan"), res)


def _mantissa_exponent(k: Kernel, x: Expr):
    """|x| = m * 2^(e - 150) with integer m < 2^24 and e >= 1 (subnormals: e = 1)."""
    bits = _bits(x) & 0x7FFFFFFF
    e = bits >> 23
    m = bits & 0x7FFFFF
    return k.select(e.eq(0), m, m | 0x800000), k.max(e, 1)


def _fmod_f64(k: Kernel, x: Expr, y: Expr) -> Expr:
    with k.precise():
        ay = k.abs(y)
        r = x - trunc(k, x / y) * y
        s = k.select(x < 0.0, k.lift(-1.0, like=x), 1.0)
        r = k.select(r * s < 0.0, r + s * ay, r)  # the quotient was rounded up
        r = k.select(k.abs(r) >= ay, r - s * ay, r)  # ... or down
        return k.select(ay.eq(float("inf")) & k.abs(x).ne(float("inf")), x, r)


# -- trigonometric and hyperbolic functions (float32; Cephes' sinf/tanf/atanf/asinf/sinhf/
# asinhf/acoshf/atanhf, made straight-line with selects) ---------------------------------------
FOPI = 1.27323954473516  # 4/pi
PIO4_HI, PIO4_LO = 0.7853981629014015, 4.960467898402702e-10  # pi/4: 30 bits, then the next 53
PIO2, PI = 1.5707963267948966, 3.141592653589793
ROUND52 = 6755399441055744.0  # 1.5 * 2^52: x + ROUND52 keeps an ulp of 1 for |x| < 2^51
LOGE2 = 0.693147180559945309


def _floor_f64(k: Kernel, v: Expr):
    """floor(v) as a float64 and as an int32, for |v| < 2^31, without a float -> int
    conversion (a libcall on 32-bit cores; qemu-riscv64 7.2 asserts on the vectorized one):
    adding 1.5 * 2^52 rounds v to an integer held in the low mantissa bits (two's complement
    for negative v: 1.5 * 2^52 is a multiple of 2^32). Inside k.precise()."""
    rounded = (v + ROUND52) - ROUND52
    fl = rounded - k.select(rounded > v, k.lift(1.0, like=v), 0.0)
    return fl, k.cast(k.bitcast(fl + ROUND52, I64), I32)


def _octant(k: Kernel, a: Expr):
    """(j, r) with |x| = j pi/4 + r, j even, |r| <= pi/4, r rounded once to float32. Worked in
    float64 (every profile has a double-precision FPU), Cody-Waite with pi/4 in two parts:
    y*PIO4_HI is exact while j < 2^23, so r is accurate to ~2^-60 absolute for |x| < 6.5e6
    (sin near its zeros keeps its relative accuracy). Beyond, the reduction is not exact and
    the result not accurate (libm's exact reduction, Payne-Hanek, is not done): r is clamped to
    [-pi/4, pi/4] so sin and cos stay in [-1, 1] and tan finite."""
    with k.precise():
        d = k.cast(a, F64)
        v = k.min(d * FOPI, 1073741824.0)  # no huge j for huge |x|
        floor_v, j = _floor_f64(k, v)
        odd = (j & 1).ne(0)
        j = j + (j & 1)
        y = floor_v + k.select(odd, k.lift(1.0, like=v), 0.0)
        r = k.cast((d - y * PIO4_HI) - y * PIO4_LO, F32)
        return j, k.max(k.min(r, 0.7853982), -0.7853982)  # a no-op in the exact range; NaN stays


def _sin_poly(r, z):
    return _poly(z, [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1]) * z * r + r


def _cos_poly(z):
    return _poly(z, [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2]) * z * z - z * 0.5 + 1.0


def _sincos(k: Kernel, x: Expr, cosine: bool) -> Expr:
    with k.precise():
        a = k.abs(x)
        j, r = _octant(k, a)
        z = r * r
        q = j & 7  # 0, 2, 4, 6: quadrant 0..3
        if cosine:
            q = (q + 2) & 7  # cos x = sin(x + pi/2)
        s, c = _sin_poly(r, z), _cos_poly(z)
        v = k.select((q & 2).eq(0), s, c)
        neg = (q & 4).ne(0)
        if not cosine:
            neg = neg ^ (x < 0.0)
        v = k.select(neg, -v, v)
        return k.select(a < float("inf"), v, float("nan"))  # NaN and infinities: NaN


def sin(k: Kernel, x: Expr) -> Expr:
    return _sincos(k, x, False)


def cos(k: Kernel, x: Expr) -> Expr:
    return _sincos(k, x, True)


def tan(k: Kernel, x: Expr) -> Expr:
    with k.precise():
        a = k.abs(x)
        j, r = _octant(k, a)
        z = r * r
        t = _poly(z, [9.38540185543e-3, 3.11992232697e-3, 2.44301354525e-2, 5.34112807005e-2,
                      1.33387994085e-1, 3.33331568548e-1]) * z * r + r
        t = k.select((j & 2).ne(0), -1.0 / t, t)
        t = k.select(x < 0.0, -t, t)
        return k.select(a < float("inf"), t, float("nan"))


def atan(k: Kernel, x: Expr) -> Expr:
    a = k.abs(x)
    big, mid = a > 2.414213562373095, a > 0.4142135623730950
    t = k.select(big, -1.0 / a, k.select(mid, (a - 1.0) / (a + 1.0), a))
    y0 = k.select(big, PIO2, k.select(mid, PIO2 / 2, 0.0))
    z = t * t
    y = y0 + (_poly(z, [8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1]) * z * t + t)
    return k.select(x < 0.0, -y, y)


def _asin_core(k: Kernel, a: Expr):
    """(big, p): for |x| = a <= 0.5, p = asin(a); above, p = asin(sqrt((1 - a)/2)) (big)."""
    big = a > 0.5
    z = k.select(big, (1.0 - a) * 0.5, a * a)
    s = k.select(big, k.sqrt(z), a)
    p = _poly(z, [4.2163199048e-2, 2.4181311049e-2, 4.5470025998e-2, 7.4953002686e-2,
                  1.6666752422e-1]) * z * s + s
    return big, p


def asin(k: Kernel, x: Expr) -> Expr:
    """|x| > 1: NaN (the square root of a negative number)."""
    big, p = _asin_core(k, k.abs(x))
    y = k.select(big, PIO2 - (p + p), p)
    return k.select(x < 0.0, -y, y)


def acos(k: Kernel, x: Expr) -> Expr:
    big, p = _asin_core(k, k.abs(x))
    small = PIO2 - k.select(x < 0.0, -p, p)
    return k.select(big, k.select(x < 0.0, PI - (p + p), p + p), small)


def sinh(k: Kernel, x: Expr) -> Expr:
    """Odd polynomial below |x| = 1, (e^|x| - e^-|x|)/2 above; from |x| = 88 (where e^|x|
    overflows) (e^(|x|/2) / 2) e^(|x|/2), finite up to sinh's own overflow."""
    a = k.abs(x)
    z = x * x
    small = _poly(z, [2.03721912945e-4, 8.33028376239e-3, 1.66667160211e-1]) * z * a + a
    e = exp(k, k.min(a, 88.0))
    mid = e * 0.5 - 0.5 / e
    h = exp(k, a * 0.5)
    with k.precise():  # (h/2) h, not h h / 2, which overflows
        y = k.select(a > 1.0, k.select(a > 88.0, (h * 0.5) * h, mid), small)
    return k.select(x < 0.0, -y, y)


def cosh(k: Kernel, x: Expr) -> Expr:
    a = k.abs(x)
    e = exp(k, k.min(a, 88.0))
    h = exp(k, a * 0.5)
    with k.precise():
        return k.select(a > 88.0, (h * 0.5) * h, e * 0.5 + 0.5 / e)


def asinh(k: Kernel, x: Expr) -> Expr:
    a = k.abs(x)
    z = a * a
    small = _poly(z, [2.0122003309e-2, -4.2699340972e-2, 7.4847586088e-2, -1.6666288134e-1]) * z * a + a
    mid = log(k, a + k.sqrt(z + 1.0))
    big = log(k, a) + LOGE2
    y = k.select(a > 1500.0, big, k.select(a < 0.5, small, mid))
    return k.select(x < 0.0, -y, y)


def acosh(k: Kernel, x: Expr) -> Expr:
    """x < 1: NaN."""
    z = x - 1.0
    near = _poly(z, [1.7596881071e-3, -7.5272886713e-3, 2.6454905019e-2, -1.1784741703e-1,
                     1.4142135263]) * k.sqrt(z)
    mid = log(k, x + k.sqrt(z * (x + 1.0)))
    big = log(k, x) + LOGE2
    y = k.select(x > 1500.0, big, k.select(z < 0.5, near, mid))
    return k.select(x < 1.0, float("nan"), y)


def atanh(k: Kernel, x: Expr) -> Expr:
    """atanh(+-1) = +-inf, |x| > 1: NaN."""
    a = k.abs(x)
    z = x * x
    small = _poly(z, [1.81740078349e-1, 8.24370301058e-2, 1.46691431730e-1, 1.99782164500e-1,
                      3.33337300303e-1]) * z * x + x
    big = log(k, (1.0 + x) / (1.0 - x)) * 0.5
    return k.select(a < 0.5, small, big)


# -- float64: Cephes' double-precision exp, log, tanh and erf, straight-line -------------------
# No float64 <-> int64 conversion anywhere (a libcall on 32-bit cores): exponents go through
# int32, and 2^n is assembled in the exponent bits with 64-bit integer shifts.
EXP64_HI = 709.782712893383973096  # ln(DBL_MAX): above, inf
EXP64_LO = -745.1332191019412076235  # ln(2^-1075): below, 0
LN2_C1, LN2_C2 = 6.93145751953125e-1, 1.42860682030941723212e-6  # ln 2 = C1 + C2, C1 with 15 bits


def _poly1(x: Expr, coeffs) -> Expr:
    """The polynomial with leading coefficient 1 and then `coeffs` (Cephes' p1evl)."""
    acc = x + coeffs[0]
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def _pow2_f64(k: Kernel, n: Expr) -> Expr:
    """2^n as a float64, for int32 n in the normal range [-1022, 1023]."""
    return k.bitcast((k.cast(n, I64) + 1023) << 52, F64)


def _exp_f64(k: Kernel, x: Expr) -> Expr:
    """Cephes exp: n = round(x/ln2), r = x - n ln2 in two parts (exact: n has 11 bits, C1 15),
    e^r = 1 + 2r P(r^2) / (Q(r^2) - r P(r^2)), times 2^n applied as 2^(n/2) 2^(n - n/2) so
    both factors are normal: results near overflow and subnormal results (gradual underflow,
    rounded once by the last product) come out right."""
    with k.precise():
        arg = x
        x = k.min(k.max(x, -746.0), 710.0)
        t = x * LOG2E + 0.5
        nf, n = _floor_f64(k, t)
        r = x - nf * LN2_C1
        r = r - nf * LN2_C2
        rr = r * r
        p = r * _poly(rr, [1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1])
        q = _poly(rr, [3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
                       2.00000000000000000009e0])
        y = p / (q - p)
        y = y + y + 1.0
        half = n >> 1
        y = (y * _pow2_f64(k, half)) * _pow2_f64(k, n - half)
        y = k.select(arg > EXP64_HI, float("inf"), y)
        y = k.select(arg < EXP64_LO, 0.0, y)
        return k.select(arg.eq(arg), y, arg)


def _log_f64(k: Kernel, x: Expr) -> Expr:
    """Cephes log: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(1 + f) = f - f^2/2 +
    f^3 P(f)/Q(f), e ln2 added in two parts. Subnormal x is scaled by 2^54 first.
    log(0) = -inf, log(negative) = NaN, log(inf) = inf."""
    with k.precise():
        sub = x < 2.2250738585072014e-308
        xs = k.select(sub, x * 18014398509481984.0, x)
        bits = k.bitcast(xs, I64)
        e = k.cast((bits >> 52) & 0x7FF, I32) - k.select(sub, k.lift(1022 + 54, like=I32), 1022)
        f = k.bitcast((bits & 0x000FFFFFFFFFFFFF) | 0x3FE0000000000000, F64)  # [0.5, 1)
        small = f < 0.70710678118654752440
        ef = k.cast(e, F64) - k.select(small, k.lift(1.0, like=x), 0.0)
        f = k.select(small, f + f - 1.0, f - 1.0)
        z = f * f
        p = _poly(f, [1.01875663804580931796e-4, 4.97494994976747001425e-1, 4.70579119878881725854e0,
                      1.44989225341610930846e1, 1.79368678507819816313e1, 7.70838733755885391666e0])
        q = _poly1(f, [1.12873587189167450590e1, 4.52279145837532221105e1, 8.29875266912776603211e1,
                       7.11544750618563894466e1, 2.31251620126765340583e1])
        y = f * (z * p / q)
        y = y - ef * 2.121944400546905827679e-4
        y = y - z * 0.5
        r = f + y
        r = r + ef * 0.693359375
        r = k.select(x.eq(0.0), float("-inf"), r)
        r = k.select(x < 0.0, float("nan"), r)
        r = k.select(x.eq(float("inf")), float("inf"), r)
        return k.select(x.eq(x), r, x)


def _log1p_f64(k: Kernel, e: Expr) -> Expr:
    """log(1 + e) for e >= 0 to a few ulp also where 1 + e rounds (Goldberg's correction:
    log(u) e / (u - 1) with u = fl(1 + e), and e itself where u is 1)."""
    with k.precise():
        u = e + 1.0
        d = u - 1.0
        return k.select(d.eq(0.0), e, _log_f64(k, u) * (e / k.select(d.eq(0.0), k.lift(1.0, like=e), d)))


def _tanh_f64(k: Kernel, x: Expr) -> Expr:
    """Cephes tanh: x + x^3 P(x^2)/Q(x^2) below |x| = 0.625, 1 - 2/(e^2|x| + 1) above,
    clamped at |x| = 22 (tanh is 1 to double precision)."""
    a = k.min(k.abs(x), 22.0)
    big = 1.0 - 2.0 / (_exp_f64(k, a * 2.0) + 1.0)
    z = a * a
    small = a + a * z * (_poly(z, [-9.64399179425052238628e-1, -9.92877231001918586564e1,
                                   -1.61468768441708447952e3])
                         / _poly1(z, [1.12811678491632931402e2, 2.23548839060100448583e3,
                                      4.84406305325125486048e3]))
    t = k.select(a < 0.625, small, big)
    return k.select(x < 0.0, -t, t)  # NaN: a is NaN, so is t


def _erf_f64(k: Kernel, x: Expr) -> Expr:
    """Cephes erf: x T(x^2)/U(x^2) for |x| <= 1; above, 1 - erfc with erfc(a) =
    e^(-a^2) P(a)/Q(a), a clamped at 6 (erf is 1 to double precision)."""
    a = k.abs(x)
    z = x * x
    near = x * _poly(z, [9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
                         7.00332514112805075473e3, 5.55923013010394962768e4]) \
        / _poly1(z, [3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
                     2.26290000613890934246e4, 4.92673942608635921086e4])
    c = k.min(a, 6.0)
    p = _poly(c, [2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
                  4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
                  9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2])
    q = _poly1(c, [1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
                   9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
                   1.65666309194161350182e3, 5.57535340817727675546e2])
    tail = 1.0 - _exp_f64(k, -(c * c)) * p / q
    return k.select(a <= 1.0, near, k.select(x < 0.0, -tail, tail))
