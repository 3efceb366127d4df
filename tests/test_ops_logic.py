"""ops/logic.py (And/Or/Xor, Bitwise*, BitShift, Mod, IsInf/IsNaN, CastLike) and Round/Sign:
against onnxruntime on the host, the C path under clang's UB sanitizer, one model on
cortex-a76 under QEMU, numpy's rules where onnxruntime has none (remainder by zero, over-wide
shifts, opset-28 forms onnxruntime does not run), and the bad attributes."""
import re

import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError

T = "x86-64-v3"
rng = np.random.default_rng(21)
UBSAN = ["-fsanitize=undefined", "-fsanitize-trap=undefined"]



# the front end's schema check (frontend/validate.py) may refuse a bad input before the op's
# own check does: its messages name the node, the op and the offending type or flag
SCHEMA_REFUSAL = re.compile(r"is tensor\(\w+\); \w+ takes \w+ in \{|it is a flag, 0 or 1|is tensor\(\w+\) but ")

def ints(dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=dtype)


def nonzero(dtype, shape):
    x = ints(dtype, shape)
    return np.where(x == 0, 1, x).astype(dtype)


def binary_model(op, a, b, out_dtype=None, opset=18, **attrs):
    shape = np.broadcast_shapes(a.shape, b.shape)
    return make_model([helper.make_node(op, ["a", "b"], ["y"], **attrs)],
                      {"a": (a.dtype, a.shape), "b": (b.dtype, b.shape)},
                      {"y": (out_dtype or a.dtype, shape)}, opset=opset)


B = rng.random((2, 3, 4)) < 0.5
B2 = rng.random((3, 1)) < 0.5
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.5, 3e38, -1e-40], np.float32)

# id: (op, a, b, attrs, opset)
BINARY_CASES = {
    "and-bcast": ("And", B, B2, {}, 18),
    "or-bcast": ("Or", B, B2, {}, 18),
    "xor": ("Xor", B, ~B, {}, 18),
    "bitand-int8": ("BitwiseAnd", ints(np.int8, (3, 5)), ints(np.int8, (5,)), {}, 18),
    "bitor-uint8": ("BitwiseOr", ints(np.uint8, (3, 5)), ints(np.uint8, (3, 5)), {}, 18),
    "bitxor-int64": ("BitwiseXor", ints(np.int64, (4, 2)), ints(np.int64, (1, 2)), {}, 18),
    "shl-uint8": ("BitShift", ints(np.uint8, (4, 8)), ints(np.uint8, (8,), 0, 7), {"direction": "LEFT"}, 18),
    "shr-uint8": ("BitShift", ints(np.uint8, (4, 8)), ints(np.uint8, (8,), 0, 7), {"direction": "RIGHT"}, 18),
    "mod-int8": ("Mod", ints(np.int8, (6, 7)), nonzero(np.int8, (7,)), {}, 13),
    "fmod-int8": ("Mod", ints(np.int8, (6, 7)), nonzero(np.int8, (7,)), {"fmod": 1}, 13),
    "mod-uint8": ("Mod", ints(np.uint8, (6, 7)), nonzero(np.uint8, (6, 7)), {}, 13),
    "mod-int32": ("Mod", ints(np.int32, (5, 9), -1000, 1000), ints(np.int32, (5, 9), 1, 60) * np.where(rng.random((5, 9)) < 0.5, -1, 1).astype(np.int32), {}, 13),
    "fmod-int64": ("Mod", ints(np.int64, (5, 9)), np.array([-7, 3, -1, 1, 5, 2, -9, 11, 13], np.int64),
                   {"fmod": 1}, 13),
    "fmod-float32": ("Mod", (rng.standard_normal((4, 50)) * 1e4).astype(np.float32),
                     (rng.standard_normal((4, 50)) * 3).astype(np.float32), {"fmod": 1}, 13),
    "fmod-float64": ("Mod", rng.standard_normal((4, 50)) * 100, rng.standard_normal(50) * 3, {"fmod": 1}, 13),
}


@pytest.mark.parametrize("case", list(BINARY_CASES))
def test_binary_against_onnxruntime(case, workdir):
    op, a, b, attrs, opset = BINARY_CASES[case]
    check_against_onnxruntime(binary_model(op, a, b, opset=opset, **attrs), {"a": a, "b": b}, T, workdir)


def test_fmod_is_exact(workdir):
    """fmod is exact in IEEE arithmetic; ours too, over the whole float32 range (subnormals,
    quotients up to 2^280) and on the special values."""
    a = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-44, 38, 3000), SPECIAL]).astype(np.float32)
    b = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-44, 38, 3000),
                        np.array([1, 1, 1, 0, 2, np.inf, -np.inf, 7, 0.5])]).astype(np.float32)
    got = compile_and_run(binary_model("Mod", a, b, opset=13, fmod=1), T, {"a": a, "b": b}, workdir)[0][0]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got, np.fmod(a, b))


def test_mod_float_fmod0_opset28_follows_the_spec(workdir):
    """Opset 28 allows fmod=0 on floats: the sign of the divisor, ±0 with the divisor's sign,
    x for an infinite divisor of x's sign, else that infinity (Python's float %)."""
    a = np.array([5.5, -5.5, 5.5, -5.5, 0.0, -0.0, 3.0, 3.0, -3.0, np.inf, 1.0, 6.0], np.float32)
    b = np.array([2.0, 2.0, -2.0, -2.0, -3.0, 3.0, np.inf, -np.inf, np.inf, 2.0, 0.0, 3.0], np.float32)
    got = compile_and_run(binary_model("Mod", a, b, opset=28), T, {"a": a, "b": b}, workdir)[0][0]
    inf, nan = np.inf, np.nan
    want = np.array([1.5, 0.5, -0.5, -1.5, -0.0, 0.0, 3.0, -inf, inf, nan, nan, 0.0], np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got[[4, 5, 11]]), [True, False, False])


def test_integer_remainder_by_zero_is_zero_and_no_trap(workdir):
    """numpy's rule (onnxruntime dies of SIGFPE here); INT_MIN % -1 does not trap either.
    Run on the LLVM path and on the C path under the UB sanitizer."""
    a = np.array([7, -7, -128, -128, 5, 0], np.int8)
    b = np.array([0, 0, -1, 3, -1, 0], np.int8)
    for fmod, want in ((0, np.mod), (1, np.fmod)):
        m = binary_model("Mod", a, b, opset=13, fmod=fmod)
        with np.errstate(all="ignore"):
            expect = np.where(b == 0, 0, want(a, np.where(b == 0, 1, b))).astype(np.int8)
        np.testing.assert_array_equal(compile_and_run(m, T, {"a": a, "b": b}, workdir)[0][0], expect)
        got = run_c_path(m, T, {"a": a, "b": b}, workdir, flags=UBSAN, tag=f"-mod{fmod}")[0][0]
        np.testing.assert_array_equal(got, expect)


def test_bitshift_over_width_and_signed_opset28(workdir):
    """Shifts by >= the width give the sign fill (no UB in either backend); signed types
    from opset 28 (onnxruntime does not run it: numpy is the reference)."""
    a = np.array([1, 255, 128, 3, 200, 1], np.uint8)
    n = np.array([8, 9, 7, 0, 255, 1], np.uint8)
    for d, shift in (("LEFT", np.left_shift), ("RIGHT", np.right_shift)):
        m = binary_model("BitShift", a, n, direction=d)
        want = np.where(n >= 8, 0, shift(a, np.minimum(n, 7))).astype(np.uint8)
        np.testing.assert_array_equal(compile_and_run(m, T, {"a": a, "b": n}, workdir)[0][0], want)
    s = np.array([-100, 100, -1, -128, 127, 5, -5, 64], np.int8)
    k = np.array([1, 1, 7, 8, -1, 20, 100, 1], np.int8)
    for d in ("LEFT", "RIGHT"):
        m = binary_model("BitShift", s, k, opset=28, direction=d)
        kk = np.clip(k, 0, 7).astype(np.int8)
        if d == "LEFT":
            want = np.where((k < 0) | (k >= 8), 0, np.left_shift(s, kk))
        else:
            want = np.where((k < 0) | (k >= 8), np.where(s < 0, -1, 0), np.right_shift(s, kk))
        np.testing.assert_array_equal(compile_and_run(m, T, {"a": s, "b": k}, workdir)[0][0], want.astype(np.int8))
        got = run_c_path(m, T, {"a": s, "b": k}, workdir, flags=UBSAN, tag=f"-shift{d}")[0][0]
        np.testing.assert_array_equal(got, want.astype(np.int8))


# id: (op, x, attrs, out dtype, opset)
UNARY_CASES = {
    "bitnot-int32": ("BitwiseNot", ints(np.int32, (3, 7)), {}, None, 18),
    "bitnot-uint8": ("BitwiseNot", ints(np.uint8, (3, 7)), {}, None, 18),
    "not": ("Not", B, {}, None, 18),
    "isnan": ("IsNaN", SPECIAL, {}, np.bool_, 18),
    "isinf": ("IsInf", SPECIAL, {}, np.bool_, 18),
    "isinf-pos": ("IsInf", SPECIAL, {"detect_negative": 0}, np.bool_, 18),
    "isinf-neg": ("IsInf", SPECIAL.astype(np.float64), {"detect_positive": 0}, np.bool_, 18),
    "sign-int32": ("Sign", ints(np.int32, (20,), -3, 3), {}, None, 18),
    "sign-float64": ("Sign", rng.standard_normal(20), {}, None, 18),
    "round": ("Round", np.concatenate([np.arange(-4.5, 5, 0.5), [4194304.5, -4194305.5, 0.49999997, 3e9]])
              .astype(np.float32), {}, None, 18),
    "round-float64": ("Round", np.array([2.5, -0.5, 1.5, 4503599627370495.5, 1e300, -3.4999]), {}, None, 18),
}


@pytest.mark.parametrize("case", list(UNARY_CASES))
def test_unary_against_onnxruntime(case, workdir):
    op, x, attrs, out, opset = UNARY_CASES[case]
    m = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (x.dtype, x.shape)},
                   {"y": (out or x.dtype, x.shape)}, opset=opset)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_round_is_half_to_even_like_numpy(workdir):
    x = np.concatenate([(rng.standard_normal(5000) * 10.0 ** rng.integers(0, 8, 5000)),
                        np.arange(-100, 100) + 0.5, [np.nan, np.inf, -np.inf, -0.0]]).astype(np.float32)
    m = make_model([helper.make_node("Round", ["x"], ["y"])], {"x": (x.dtype, x.shape)}, {"y": (x.dtype, x.shape)})
    got = compile_and_run(m, T, {"x": x}, workdir)[0][0]
    np.testing.assert_array_equal(got, np.round(x))


@pytest.mark.parametrize("src,like", [(np.float32, np.int32), (np.int64, np.float32), (np.float64, np.float32),
                                      (np.uint8, np.bool_)])
def test_castlike(src, like, workdir):
    x = (rng.standard_normal((3, 4)) * 50).astype(src)
    lk = np.zeros((1,), like)
    m = make_model([helper.make_node("CastLike", ["x", "l"], ["y"])], {"x": (src, x.shape), "l": (like, (1,))},
                   {"y": (like, x.shape)}, opset=19)
    check_against_onnxruntime(m, {"x": x, "l": lk}, T, workdir)


def mixed_model():
    a = ints(np.int32, (4, 6), -50, 50)
    b = np.where(a[::-1] == 0, 3, a[::-1]).astype(np.int32)
    f = (rng.standard_normal((4, 6)) * 20).astype(np.float32)
    f[0, :3] = [np.nan, np.inf, 2.5]
    u = ints(np.uint8, (4, 6))
    nodes = [
        helper.make_node("Mod", ["a", "b"], ["mod"]),
        helper.make_node("Mod", ["f", "g"], ["fm"], fmod=1),
        helper.make_node("Round", ["f"], ["r"]),
        helper.make_node("IsNaN", ["f"], ["nan"]),
        helper.make_node("IsInf", ["f"], ["inf"]),
        helper.make_node("Or", ["nan", "inf"], ["bad"]),
        helper.make_node("Xor", ["bad", "nan"], ["onlyinf"]),
        helper.make_node("BitShift", ["u", "s"], ["shl"], direction="LEFT"),
        helper.make_node("BitShift", ["u", "s"], ["shr"], direction="RIGHT"),
        helper.make_node("BitwiseXor", ["shl", "u"], ["bx"]),
        helper.make_node("CastLike", ["mod", "f"], ["modf"]),
        helper.make_node("Mul", ["modf", "r"], ["y"]),
    ]
    feeds = {"a": a, "b": b, "f": f, "g": np.float32([1.5, -2, 3, 0.25, -7, 11]), "u": u,
             "s": np.uint8([0, 1, 3, 5, 7, 2])}
    outs = {"y": (np.float32, (4, 6)), "onlyinf": (np.bool_, (4, 6)), "bx": (np.uint8, (4, 6)),
            "fm": (np.float32, (4, 6)), "shr": (np.uint8, (4, 6))}
    m = make_model(nodes, {k: (v.dtype, v.shape) for k, v in feeds.items()}, outs, opset=18)
    return m, feeds


def test_mixed_model_on_cortex_a76(workdir):
    m, feeds = mixed_model()
    check_against_onnxruntime(m, feeds, "cortex-a76", workdir)


def test_mixed_model_c_path_under_ubsan(workdir):
    m, feeds = mixed_model()
    got = run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-logic")[0]
    for g, w in zip(got, onnxruntime_outputs(m, feeds)):
        assert_close(g, w)


# -- bad inputs -------------------------------------------------------------------------------
def compile_fails(op, a, b=None, opset=18, **attrs):
    names = ["a"] if b is None else ["a", "b"]
    ins = {"a": (a.dtype, a.shape)} if b is None else {"a": (a.dtype, a.shape), "b": (b.dtype, b.shape)}
    m = make_model([helper.make_node(op, names, ["y"], name="bad", **attrs)], ins, {"y": (a.dtype, None)}, opset=opset)
    with pytest.raises((InvalidModelError, UnsupportedError)) as e:
        compile_onnx(m, T)
    assert "node 'bad'" in str(e.value) and f"({op})" in str(e.value)
    return e


F4 = np.zeros(4, np.float32)
I4 = np.zeros(4, np.int32)


@pytest.mark.parametrize("op,a,b,opset,attrs,kind,text", [
    ("Mod", I4, I4, 13, {"fmod": 2}, InvalidModelError, "fmod must be 0 or 1"),
    ("Mod", F4, F4, 13, {}, InvalidModelError, "fmod must be 1 for float32"),
    ("Mod", I4, F4, 13, {}, InvalidModelError, "mixed element types"),
    ("BitShift", np.zeros(4, np.uint8), np.zeros(4, np.uint8), 18, {}, InvalidModelError, "direction"),
    ("BitShift", np.zeros(4, np.uint8), np.zeros(4, np.uint8), 18, {"direction": "UP"}, InvalidModelError,
     "direction"),
    ("BitShift", I4, I4, 18, {"direction": "LEFT"}, InvalidModelError, "needs opset 28"),
    ("BitShift", F4, F4, 28, {"direction": "LEFT"}, InvalidModelError, "needs integer"),
    ("And", F4, F4, 18, {}, InvalidModelError, "needs bool"),
    ("BitwiseAnd", F4, F4, 18, {}, InvalidModelError, "needs integer"),
    ("IsInf", F4, None, 18, {"detect_positive": 2}, InvalidModelError, "detect_positive must be 0 or 1"),
    ("IsNaN", I4, None, 18, {}, InvalidModelError, "needs float"),
    ("BitwiseNot", F4, None, 18, {}, InvalidModelError, "needs integer"),
])
def test_bad_inputs(op, a, b, opset, attrs, kind, text):
    e = compile_fails(op, a, b, opset, **attrs)
    assert e.type is kind and (text in str(e.value) or SCHEMA_REFUSAL.search(str(e.value))), str(e.value)


# -- the wider integer types: int16, uint16, uint32, uint64 ----------------------------------------
WIDE = [np.int16, np.uint16, np.uint32, np.uint64]
WIDE_OPS = {  # op: (numpy, output dtype or None for the input's, attrs)
    "Add": (np.add, None, {}), "Sub": (np.subtract, None, {}), "Mul": (np.multiply, None, {}),
    "Div": (lambda a, b: (a // b if a.dtype.kind == "u" else np.trunc(a / b)).astype(a.dtype), None, {}),
    "Max": (np.maximum, None, {}), "Min": (np.minimum, None, {}),
    "Greater": (np.greater, np.bool_, {}), "LessOrEqual": (np.less_equal, np.bool_, {}),
    "Equal": (np.equal, np.bool_, {}), "Mod": (np.mod, None, {}), "BitwiseOr": (np.bitwise_or, None, {}),
}


@pytest.mark.parametrize("dtype", WIDE, ids=[np.dtype(d).name for d in WIDE])
def test_wide_integer_types_follow_numpy(dtype, workdir):
    """numpy's integer semantics (wrapping arithmetic, unsigned division and comparisons on
    values above the signed range): the LLVM object and the C path, and Cast to/from float."""
    a = ints(dtype, (3, 40))
    b = nonzero(dtype, (3, 40))
    b[0, :10] = 3  # small divisors too
    a[1, :4] = np.iinfo(dtype).max
    nodes = [helper.make_node(op, ["a", "b"], [f"y_{op}"], **attrs) for op, (_, _, attrs) in WIDE_OPS.items()]
    nodes += [helper.make_node("Cast", ["a"], ["y_f"], to=11), helper.make_node("Cast", ["y_f"], ["y_back"], to=7)]
    outs = {f"y_{op}": (out or dtype, a.shape) for op, (_, out, _) in WIDE_OPS.items()}
    outs |= {"y_f": (np.float64, a.shape), "y_back": (np.int64, a.shape)}
    m = make_model(nodes, {"a": (dtype, a.shape), "b": (dtype, b.shape)}, outs, opset=18)
    with np.errstate(over="ignore", invalid="ignore"):  # uint64 above 2^63 as int64: skipped below
        want = [fn(a, b).astype(out or dtype) for fn, out, _ in WIDE_OPS.values()]
        want += [a.astype(np.float64), a.astype(np.float64).astype(np.int64)]
    feeds = {"a": a, "b": b}
    for got in (compile_and_run(m, T, feeds, workdir)[0], run_c_path(m, T, feeds, workdir, tag="-wide")[0]):
        for name, g, w in zip(list(WIDE_OPS) + ["Cast", "Cast back"], got, want):
            if dtype == np.uint64 and name == "Cast back":
                continue  # above 2^63 the float64 -> int64 conversion is out of range
            np.testing.assert_array_equal(g, w, err_msg=f"{np.dtype(dtype).name} {name}")


@pytest.mark.parametrize("src,to,code", [(np.float32, np.int32, 6), (np.int64, np.float64, 11),
                                         (np.uint16, np.int16, 5), (np.bool_, np.uint8, 2)])
def test_bitcast_keeps_the_bits(src, to, code, workdir):
    """Opset 26 (onnxruntime does not run it): numpy's view of the same bytes is the reference."""
    x = np.concatenate([SPECIAL.astype(np.float64), rng.standard_normal(7) * 1e5])
    x = x.astype(src) if src in (np.float32, np.bool_) else np.clip(np.nan_to_num(x), -3e4, 3e4).astype(np.int64).astype(src)
    m = make_model([helper.make_node("BitCast", ["x"], ["y"], to=code)], {"x": (src, x.shape)}, {"y": (to, x.shape)},
                   opset=26)
    want = x.view(to)
    np.testing.assert_array_equal(compile_and_run(m, T, {"x": x}, workdir)[0][0].view(np.uint8), want.view(np.uint8))
    np.testing.assert_array_equal(run_c_path(m, T, {"x": x}, workdir, tag="-bitcast")[0][0].view(np.uint8),
                                  want.view(np.uint8))


def test_bitcast_to_another_width_is_invalid():
    m = make_model([helper.make_node("BitCast", ["x"], ["y"], to=7, name="bad")], {"x": (np.float32, (3,))},
                   {"y": (np.int64, (3,))}, opset=26)
    with pytest.raises(InvalidModelError, match=r"node 'bad' \(BitCast\): 'to' must be a type as wide as float32"):
        compile_onnx(m, T)
