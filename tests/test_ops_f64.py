"""float64 transcendentals (toolchain/kernel/mathfns.py: Cephes' double-precision exp, log,
tanh, erf; sigmoid from exp) against numpy, in units in the last place of the float64
result, with extended-precision (long double) references where numpy has them; their edges
(overflow, subnormal results and inputs, NaN, infinities); the ops that take float64 with
them (Exp, Log, Tanh, Sigmoid, Erf, Softmax, LogSoftmax, the reductions, MatMul, fmod) against
onnxruntime, the activations built from them and Pow against numpy; the C backend; ReduceMax/ReduceMin over bool (any/all) against numpy; an emulated 64-bit
target and a 32-bit one (build only: no undefined symbols, i.e. no libm or compiler-rt
conversion call); the inputs still refused, with the node and op named."""
import math
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model
from test_c_backend import run_c_path
from toolchain.compiler import build, compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.inspect.elf import read_object

T = "x86-64-v3"
D = np.float64
L = np.longdouble  # 64-bit mantissa on x86: a reference ~2^11 times finer than float64
rng = np.random.default_rng(64)


def grid(lo, hi, n=40001):
    return np.linspace(lo, hi, n)


def unary(op, shape, dtype=D, opset=13, **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (dtype, shape)}, {"y": (dtype, shape)},
                      opset=opset)


erf64 = np.vectorize(math.erf, otypes=[D])
# op: (inputs, reference, bound in float64 ulp; measured on x86-64-v3 in the comment)
ACCURACY = {
    "Exp": (np.concatenate([grid(-745.1, 709.78), grid(-1, 1)]), lambda x: np.exp(x.astype(L)), 2.0),  # 1.62
    "Log": (np.concatenate([np.geomspace(5e-324, 1.7e308, 40000), grid(0.5, 2.0)]),
            lambda x: np.log(x.astype(L)), 1.5),  # 0.87, subnormal inputs included
    "Tanh": (grid(-25, 25), lambda x: np.tanh(x.astype(L)), 2.0),  # 1.27
    "Sigmoid": (grid(-745, 40), lambda x: 1 / (1 + np.exp(-x.astype(L))), 3.0),  # 2.14, subnormal results
    "Erf": (grid(-7, 7), erf64, 3.0),  # 2.0 against libm's erf (itself < 1 ulp)
}


@pytest.mark.parametrize("op", list(ACCURACY))
def test_float64_max_error_in_ulp(op, workdir):
    x, ref, bound = ACCURACY[op]
    got = compile_and_run(unary(op, x.shape), T, {"x": x}, workdir)[0][0]
    assert got.dtype == D
    with np.errstate(all="ignore"):
        want = ref(x)
        err = (np.abs(got.astype(L) - want) / np.spacing(np.abs(want.astype(D))).astype(L)).astype(D)
    worst = int(np.argmax(err))
    print(f"{op}: max {err[worst]:.3f} ulp at x={x[worst]!r}")
    assert err[worst] <= bound, f"{op}: {err[worst]:.2f} ulp at x={x[worst]!r} (bound {bound})"


# beyond float32's range everywhere: a float32 computation would overflow or flush these
EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-310, 5e-324, 1e-300, 100.0, -100.0,
                  700.0, 709.78, 709.79, -708.5, -744.0, -745.0, -745.2, -1000.0, 1000.0, 1e300, -1e300], D)


@pytest.mark.parametrize("op,ref", [
    ("Exp", np.exp), ("Log", np.log), ("Tanh", np.tanh), ("Erf", erf64),
    ("Sigmoid", lambda x: np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(x) / (1 + np.exp(x)))),
])
def test_float64_edges(op, ref, workdir):
    """NaN propagates, infinities and zeros land where numpy puts them, overflow is inf exactly
    at numpy's threshold, results and inputs in the subnormal range are not flushed."""
    got = compile_and_run(unary(op, EDGES.shape), T, {"x": EDGES}, workdir)[0][0]
    with np.errstate(all="ignore"):
        want = ref(EDGES)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=op)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=op)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0, equal_nan=True, err_msg=op)
    if op == "Exp":
        assert 0 < got[list(EDGES).index(-745.0)] < 1e-323  # the smallest subnormal, not 0
        assert got[list(EDGES).index(709.78)] > 1.79e308 and got[list(EDGES).index(709.79)] == np.inf


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


# the ops built from those functions and arithmetic: numpy float64 references written here
# (rtol 1e-14; atol where exp(x) - 1 or 1 + erf(x) cancels as in float32: Elu, Selu, Gelu). Float
# attributes are float32 in ONNX: the ones here are exact in float32. op: (reference,
# attributes, atol, opset)
DERIVED = {
    "Softplus": (_softplus, {}, 0.0, 13),
    "Mish": (lambda x: x * np.tanh(_softplus(x)), {}, 0.0, 18),
    "Elu": (lambda x: np.where(x >= 0, x, 0.75 * (np.exp(x) - 1)), {"alpha": 0.75}, 1e-16, 13),
    "Selu": (lambda x: 1.25 * np.where(x > 0, x, 1.5 * (np.exp(x) - 1)), {"alpha": 1.5, "gamma": 1.25}, 1e-16, 13),
    "Gelu": (lambda x: 0.5 * x * (1 + erf64(x / np.sqrt(2))), {}, 1e-15, 20),  # 1 + erf(x) cancels below 0
    "Swish": (lambda x: x / (1 + np.exp(-0.5 * x)), {"alpha": 0.5}, 0.0, 24),
    "LeakyRelu": (lambda x: np.where(x >= 0, x, 0.125 * x), {"alpha": 0.125}, 0.0, 13),
    "HardSigmoid": (lambda x: np.clip(0.25 * x + 0.375, 0, 1), {"alpha": 0.25, "beta": 0.375}, 1e-16, 13),
    "HardSwish": (lambda x: x * np.clip(x / 6 + 0.5, 0, 1), {}, 1e-16, 14),
    "Softsign": (lambda x: x / (1 + np.abs(x)), {}, 0.0, 13),
    "Shrink": (lambda x: np.where(x < -0.5, x + 0.25, np.where(x > 0.5, x - 0.25, 0)), {"bias": 0.25}, 1e-16, 13),
    "ThresholdedRelu": (lambda x: np.where(x > 1.0, x, 0), {}, 0.0, 13),
    "Sqrt": (np.sqrt, {}, 0.0, 13),
    "Reciprocal": (lambda x: 1 / x, {}, 0.0, 13),
    "Floor": (np.floor, {}, 0.0, 13),
    "Ceil": (np.ceil, {}, 0.0, 13),
}


@pytest.mark.parametrize("op", list(DERIVED))
def test_float64_derived_ops(op, workdir):
    ref, attrs, atol, opset = DERIVED[op]
    x = np.concatenate([grid(-40, 40, 4001), [-800.0, -1e-300, 0.0, 1e-300, 800.0, 2.5e15 + 0.5, -2.5e15 - 0.5,
                                               5e15, np.inf, -np.inf, np.nan]])
    if op == "Sqrt":
        x = np.abs(x)
    if op == "Gelu":
        x = x[np.abs(x) < 1e300]  # x * erf: inf * 1 and 0 * -inf are numpy's business, not Gelu's
    got = compile_and_run(unary(op, x.shape, opset=opset, **attrs), T, {"x": x}, workdir)[0][0]
    assert got.dtype == D
    with np.errstate(all="ignore"):
        want = ref(x)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=atol, equal_nan=True, err_msg=op)
    if op in ("Softplus", "Mish"):  # far below zero: e^x (times x), not 0 (log(1 + tiny) would be)
        i = 0
        assert x[i] == -40 and got[i] != 0 and abs(got[i] / want[i] - 1) < 1e-14


@pytest.mark.parametrize("where", ["cortex-a76", "rv64gcv"])
def test_float64_exp_log_on_emulated_target(where, workdir):
    """Under qemu: other FMA contraction and vector widths, the same accuracy (rv64gcv: no
    vectorized float -> int conversion, on which qemu-riscv64 7.2 asserts)."""
    x = np.concatenate([grid(-745.1, 709.78, 2001), EDGES])
    m = make_model([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Log", ["p"], ["l"])],
                   {"x": (D, x.shape), "p": (D, x.shape)}, {"e": (D, x.shape), "l": (D, x.shape)})
    p = np.abs(x)
    (e, lg), _, _ = compile_and_run(m, where, {"x": x, "p": p}, workdir)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(e, np.exp(x), rtol=3e-16, atol=0, equal_nan=True)
        np.testing.assert_allclose(lg, np.log(p), rtol=3e-16, atol=0, equal_nan=True)


def _everything_f64(erf=True):
    """One graph with every float64 lowering this file is about (onnxruntime has no float64 Erf)."""
    unaries = ("Exp", "Log", "Tanh", "Sigmoid") + (("Erf",) if erf else ())
    nodes = [helper.make_node(op, ["x"], [op.lower()]) for op in unaries]
    nodes += [helper.make_node("Softmax", ["x"], ["sm"]), helper.make_node("LogSoftmax", ["x"], ["lsm"]),
              helper.make_node("ReduceLogSumExp", ["x", "axes"], ["rlse"], keepdims=0),
              helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Mod", ["x", "d"], ["fmod"], fmod=1)]
    outs = {o: (D, (4, 6)) for o in [u.lower() for u in unaries] + ["sm", "lsm", "fmod"]}
    outs.update(rlse=(D, (4,)), mm=(D, (4, 3)))
    return make_model(nodes, {"x": (D, (4, 6))}, outs, {"axes": np.array([1], np.int64),
                                                       "w": rng.standard_normal((6, 3)),
                                                       "d": np.array([0.3, -0.7, 1.1, -2.5, 0.125, 7.0])}, opset=18)


def test_float64_is_self_contained_on_a_32_bit_core(workdir):
    """cortex-m7 (32-bit, double-precision FPU): the build's self-containment check passes (no
    undefined symbol: no libm, no float64 <-> int64 conversion helper, __aeabi_d2lz/__aeabi_l2d,
    which float64 fmod's truncation used to need); checked again here."""
    path = workdir / "f64_m7.onnx"
    path.write_bytes(_everything_f64().SerializeToString())
    res = build(path, "cortex-m7", "f64m7", workdir / "build-f64-m7")
    obj = next(p for k, p in res.paths.items() if str(p).endswith(".o"))
    assert read_object(Path(obj).read_bytes()).undefined == []


def test_float64_through_the_c_backend(workdir):
    """emit="c" runs the same lowerings as C99 (bit casts through helpers): the edges and the
    graph of everything agree with numpy and with the LLVM object."""
    x = np.abs(rng.standard_normal((4, 6)) * 3)
    x[0, :4] = [1e-310, 700.0, 709.78, 5e-324]
    m = _everything_f64()
    got, _ = run_c_path(m, T, {"x": x}, workdir, tag="f64")
    want, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    for g, w in zip(got, want):  # FMA contraction may differ (MatMul's sums)
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-12)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got[0], np.exp(x), rtol=3e-16, atol=0)
        np.testing.assert_allclose(got[1], np.log(x), rtol=3e-16, atol=0)


def test_float64_pow(workdir):
    """exp(b log|a|): within 2 (2 + |b ln a|) ulp (the rounding of b log|a|, magnified by exp;
    measured 1.63 times), and C's rules for signs, zeros, ones, infinities and NaN."""
    a = np.concatenate([rng.uniform(0, 10, 20000), -rng.uniform(0, 10, 2000)])
    b = np.concatenate([rng.uniform(-30, 30, 20000), np.round(rng.uniform(-10, 10, 2000))])
    sa = np.array([0.0, -0.0, -0.0, -0.0, 0.0, 0.0, 2.0, -2.0, np.inf, -np.inf, np.nan, 1.0, 1e300, -8.0, -8.0, 0.0])
    sb = np.array([2.0, 3.0, -1.0, -2.0, -0.5, np.nan, -1.0, 3.0, 0.5, 3.0, 0.0, np.nan, 1.0, 1 / 3, 2.0, 0.0])
    a, b = np.concatenate([a, sa]), np.concatenate([b, sb])
    m = make_model([helper.make_node("Pow", ["a", "b"], ["y"])], {"a": (D, a.shape), "b": (D, b.shape)},
                   {"y": (D, a.shape)})
    got = compile_and_run(m, T, {"a": a, "b": b}, workdir)[0][0]
    with np.errstate(all="ignore"):
        want = np.power(a.astype(L), b.astype(L))
        err = (np.abs(got - want) / np.spacing(np.abs(want.astype(D)))).astype(D)
        bound = 2 * (2 + np.abs(b * np.log(np.abs(a))))
    exact = (got == want) | (np.isnan(got) & np.isnan(want))
    rules = got[-len(sa):]  # signs of zeros and infinities, NaN and 1 exactly as numpy (C pow)
    with np.errstate(all="ignore"):
        c_pow = np.power(sa, sb)
    np.testing.assert_allclose(rules, c_pow, rtol=1e-13, atol=0, equal_nan=True)
    num = ~np.isnan(rules)  # (a NaN's sign bit means nothing)
    np.testing.assert_array_equal(np.signbit(rules[num]), np.signbit(c_pow[num]))
    assert np.all(exact | (err <= bound)), f"worst {np.max(np.where(exact, 0, err / bound)):.2f} of the bound"


def test_float64_ops_against_onnxruntime(workdir):
    x = rng.standard_normal((4, 6)) * 3
    x[0, 0], x[1, :] = 1e-300, 400.0  # log of a tiny value; a row whose exp overflows float32
    m = _everything_f64(erf=False)
    feeds = {"x": np.abs(x) + 0.0}
    check_against_onnxruntime(m, feeds, T, workdir)


@pytest.mark.parametrize("op", ["ReduceLogSumExp", "ReduceLogSum", "ReduceMean", "ReduceMax", "ReduceL2",
                                "ReduceProd"])
def test_float64_reductions(op, workdir):
    x = rng.uniform(0.5, 2.0, (3, 4, 5)) * np.array([1.0, 1e-200, 1e200])[:, None, None]
    if op == "ReduceLogSumExp":
        x = rng.standard_normal((3, 4, 5)) + np.array([0.0, 700.0, -800.0])[:, None, None]
    m = make_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)], {"x": (D, x.shape)},
                   {"y": (D, (3, 1, 1))}, {"axes": np.array([-1, 1], np.int64)}, opset=18)
    want = {"ReduceLogSumExp": lambda: np.log(np.exp(x.astype(L)).sum(axis=(1, 2), keepdims=True)),
            "ReduceLogSum": lambda: np.log(x.astype(L).sum(axis=(1, 2), keepdims=True)),
            "ReduceMean": lambda: x.mean(axis=(1, 2), keepdims=True),
            "ReduceMax": lambda: x.max(axis=(1, 2), keepdims=True),
            # float64's own range: 1e-200 squared is 0, (1e200)^20 inf
            "ReduceL2": lambda: np.sqrt((x ** 2).sum(axis=(1, 2), keepdims=True)),
            "ReduceProd": lambda: x.prod(axis=(1, 2), keepdims=True)}
    with np.errstate(over="ignore", under="ignore"):
        want = want[op]()
    got = compile_and_run(m, T, {"x": x}, workdir)[0][0]
    assert got.dtype == D
    if op == "ReduceLogSumExp":  # e^-800 underflows whatever the precision: log(0) of that row
        want = want.astype(D)
        want[2] = -np.inf
        assert_close(got[:2], want[:2], rtol=1e-13, atol=0)
        assert got[2] == -np.inf
    else:  # values far beyond float32's range stay precise
        np.testing.assert_allclose(got, want.astype(D), rtol=1e-13)


def test_float64_softmax_wide_range(workdir):
    """Logits spread wider than float32 holds (e^-1000 relative to the max: 0 either way,
    but e^-700 is a normal float64)."""
    x = np.array([[0.0, -700.0, -1000.0, 3.0], [1e5, 1e5 - 1, 1e5 - 700, -1e5]], D)
    m = make_model([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("LogSoftmax", ["x"], ["l"])],
                   {"x": (D, x.shape)}, {"s": (D, x.shape), "l": (D, x.shape)})
    s, lg = compile_and_run(m, T, {"x": x}, workdir)[0]
    z = x.astype(L) - x.max(axis=1, keepdims=True)
    want_l = (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(D)
    np.testing.assert_allclose(lg, want_l, rtol=1e-14)
    np.testing.assert_allclose(s, (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(D), rtol=1e-14, atol=0)
    assert 0 < s[0, 1] < 1e-300


def test_float64_and_int64_matmul(workdir):
    """Batched, broadcast: the plain loop nest for types the float32 register tiles do not take."""
    a, b = rng.standard_normal((2, 3, 5, 7)), rng.standard_normal((3, 7, 4))
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": (D, a.shape), "b": (D, b.shape)},
                   {"y": (D, (2, 3, 5, 4))})
    got = compile_and_run(m, T, {"a": a, "b": b}, workdir)[0][0]
    np.testing.assert_allclose(got, (a.astype(L) @ b.astype(L)).astype(D), rtol=1e-13, atol=1e-14)
    ai, bi = rng.integers(-2**20, 2**20, (5, 7)), rng.integers(-2**20, 2**20, (7, 4))
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": (np.int64, ai.shape)},
                   {"y": (np.int64, (5, 4))}, {"b": bi})
    got = compile_and_run(m, T, {"a": ai}, workdir)[0][0]
    np.testing.assert_array_equal(got, ai @ bi)  # products up to 2^40 * 7: int64, no float rounding


@pytest.mark.parametrize("op,shape,axes", [
    ("ReduceMax", (3, 4, 2), [1]), ("ReduceMin", (3, 4, 2), [1]), ("ReduceMax", (3, 4, 2), [0, 2]),
    ("ReduceMin", (3, 4, 2), [0, 2]), ("ReduceMax", (2, 0, 4), [1]), ("ReduceMin", (2, 0, 4), [1]),
])
def test_bool_reduce_max_min(op, shape, axes, workdir):
    """max is any, min is all; over an empty axis false and true (the identities)."""
    x = rng.random(shape) < 0.3
    if x.size:
        x[0] = True  # an all-true slice
        x[-1] = False  # and an all-false one
    want = (np.any if op == "ReduceMax" else np.all)(x, axis=tuple(axes), keepdims=False)
    m = make_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)], {"x": (np.bool_, shape)},
                   {"y": (np.bool_, want.shape)}, {"axes": np.array(axes, np.int64)}, opset=20)
    got = compile_and_run(m, T, {"x": x}, workdir)[0][0]
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op,dtype,kind,why", [
    ("ReduceMax", np.int32, UnsupportedError, "needs float32 or float64 or bool input, got int32"),
    ("ReduceSum", np.int64, UnsupportedError, "needs float32 or float64 input, got int64"),
    ("ReduceLogSumExp", np.int32, UnsupportedError, "needs float32 or float64 input, got int32"),
    ("Sin", D, UnsupportedError, "needs float32 input, got float64"),  # the trigonometric ones: not yet
    ("ReduceSum", np.bool_, InvalidModelError, "ReduceSum takes T in"),  # not ONNX: the schema check says so
    ("Softmax", np.int64, InvalidModelError, "Softmax takes T in"),
    ("ReduceLogSumExp", np.float16, None, None),  # float16 is computed as float32: accepted
])
def test_refused_dtypes_name_node_and_op(op, dtype, kind, why):
    shape = (2, 3)
    node = helper.make_node(op, ["x"], ["y"], name="the_node", **({"keepdims": 1} if op.startswith("Reduce") else {}))
    out_shape = (1, 1) if op.startswith("Reduce") else shape
    m = make_model([node], {"x": (dtype, shape)}, {"y": (dtype, out_shape)}, opset=18)
    if kind is None:
        compile_onnx(m, T)
        return
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    msg = str(e.value)
    assert why in msg and "the_node" in msg and op in msg, msg
