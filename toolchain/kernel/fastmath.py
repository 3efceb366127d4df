"""Short forms of float32 functions: fewer instructions for a few more ulp, used where the
op's tolerance allows it (the ops that use them say so; the plain ops keep kernel/mathfns.py).

Recurrent gates (sigmoid_gate, tanh_gate): a recurrent cell applies three to five of these per
hidden unit and step, so their length is most of a GRU's or LSTM's instructions. These keep the accuracy that matters there
(absolute error ~1e-7 or better, relative accuracy near 0 for tanh) with about half the
instructions: no special-case selects (the clamps, Kernel.clamp, give the limits; NaN still
propagates through them), round-to-nearest by the 1.5 * 2^23 shifter instead of an int round trip,
and tanh as one rational function. Measured against numpy in float64 (tests/test_perf_rnn.py,
x86-64-v3 and cortex-a76 alike): sigmoid_gate 8.8e-8 absolute, 1.4e-7 relative; tanh_gate
2.5e-7 absolute (~4 ulp of 1, near |x| = 7), 2.5e-7 relative.

GELU's erf (erf_rational): see its docstring."""
from .llvm import Expr, Kernel
from .mathfns import LN2_HI, LN2_LO, LOG2E, _bits, _erf_f64, _float, _is64, _poly


def erf_rational(k: Kernel, x: Expr) -> Expr:
    """float32 erf as one rational function of x clamped to [-4, 4] (Eigen's / XLA's fast
    erf: an odd degree-13 numerator over an even degree-8 denominator): about a third of
    erf's instructions (no exp, no two branches computed for one select), absolute error
    <= 4.5e-7 (7.5 ulp near +-1; tests/test_perf_transformer.py). For GELU, whose result
    0.5 x (1 + erf(x / sqrt 2)) cannot see the difference at float32 tolerance; the Erf op
    keeps erf. NaN propagates through the clamp (Kernel.min/max keep a NaN first operand).
    float64: erf."""
    if _is64(x):
        return _erf_f64(k, x)
    z = k.min(k.max(x, -4.0), 4.0)
    z2 = z * z
    p = _poly(z2, [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                   -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                   -1.60960333262415e-02]) * z
    q = _poly(z2, [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                   -7.37332916720468e-03, -1.42647390514189e-02])
    return p / q


_SHIFTER = 12582912.0 + 127.0  # 1.5 * 2^23 + the exponent bias: t's low bits hold n + 127


def _exp_clamped(k: Kernel, x: Expr) -> Expr:
    """e^x for x in [-87, 87] (clamped there): Cephes' polynomial, 2^n from t's bits."""
    with k.in_order():  # contraction yes (FMAs), reassociation no: (x L + S) - S is not x L
        x = k.clamp(x, -87.0, 87.0)
        t = x * LOG2E + _SHIFTER
        nf = t - _SHIFTER
        r = x - nf * LN2_HI
        r = r - nf * LN2_LO
        p = _poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                      4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
        p = p * (r * r) + r + 1.0
        return p * _float(_bits(t) << 23)


def sigmoid_gate(k: Kernel, x: Expr) -> Expr:
    """1 / (1 + e^-x), e^-x clamped to [e^-87, e^87]: below x = -87 the result is e^-87
    relative to e^x's tiny value (absolute error < 2e-38), above 87 it is 1."""
    if _is64(x):
        return sigmoid(k, x)
    return 1.0 / (_exp_clamped(k, -x) + 1.0)


# The odd rational minimax approximation of tanh on [-9, 9] that Eigen and onnxruntime's MLAS
# use (numerator degree 13, denominator 6); beyond |x| = 9 tanh is 1 in float32.
_TANH_P = [-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03]
_TANH_Q = [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03]


def tanh_gate(k: Kernel, x: Expr) -> Expr:
    """tanh as p(x) / q(x) with x clamped to [-9, 9]; odd, so small x keep their relative
    accuracy."""
    if _is64(x):
        return tanh(k, x)
    x = k.clamp(x, -9.0, 9.0)
    z = x * x
    return x * _poly(z, _TANH_P) / _poly(z, _TANH_Q)
