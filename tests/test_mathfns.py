"""The inline transcendentals against numpy in float64, over their whole useful input
range, on the host and on an emulated target (FMA contraction and vector widths differ).
The bounds are the documented maximum errors of toolchain/kernel/mathfns.py, in units
in the last place of the float32 result."""
import math

import numpy as np
import pytest
from onnx import helper

from helpers import compile_and_run, make_model

F = np.float32


def grid(lo, hi, n=100001):
    return np.linspace(lo, hi, n).astype(F)


erf64 = np.vectorize(math.erf)
# op: (inputs, float64 reference, max error in ulp)
CASES = {
    "Exp": (grid(-87, 88), np.exp, 2.0),
    "Log": (np.concatenate([np.geomspace(1.2e-38, 3e38, 100000), grid(0.5, 2.0)]).astype(F), np.log, 2.0),
    "Tanh": (grid(-12, 12), np.tanh, 2.0),
    "Sigmoid": (grid(-30, 30), lambda x: 1 / (1 + np.exp(-x)), 3.0),
    "Erf": (grid(-6, 6), erf64, 4.0),
    "Sqrt": (np.geomspace(1e-30, 1e30, 100000).astype(F), np.sqrt, 0.5),
    # the trigonometric ones: reduction exact to |x| = 6.5e6 (sin and cos keep their relative
    # accuracy near their zeros too), measured 1.5 ulp (sin, cos), 2.6 (tan)
    "Sin": (np.concatenate([grid(-10, 10), grid(-1e6, 1e6, 200001)]), np.sin, 2.0),
    "Cos": (np.concatenate([grid(-10, 10), grid(-6e6, 6e6, 200001)]), np.cos, 2.0),
    "Tan": (np.concatenate([grid(-10, 10), grid(-1e6, 1e6, 200001)]), np.tan, 3.0),
    "Atan": (np.concatenate([grid(-10, 10), np.geomspace(1e-30, 3e38, 100000).astype(F)]), np.arctan, 3.0),
    "Asin": (grid(-1, 1), np.arcsin, 3.0),
    "Acos": (grid(-1, 1), np.arccos, 2.0),
    "Sinh": (grid(-89, 89), np.sinh, 3.0),
    "Cosh": (grid(-89, 89), np.cosh, 3.0),
    "Asinh": (np.concatenate([grid(-10, 10), -np.geomspace(1e-30, 3e38, 100000).astype(F)]), np.arcsinh, 4.0),
    "Acosh": (np.concatenate([grid(1, 10), np.geomspace(1, 3e38, 100000).astype(F)]), np.arccosh, 3.0),
    "Atanh": (grid(-0.99999, 0.99999), np.arctanh, 2.0),
}


def ulp_error(got, x, ref):
    want = ref(x.astype(np.float64))
    spacing = np.spacing(np.abs(want).astype(F)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.mark.parametrize("where", ["x86-64-v3", "cortex-a76"])
@pytest.mark.parametrize("op", list(CASES))
def test_max_error_in_ulp(op, where, workdir):
    x, ref, bound = CASES[op]
    m = make_model([helper.make_node(op, ["x"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)})
    got = compile_and_run(m, where, {"x": x}, workdir)[0][0]
    err = ulp_error(got, x, ref)
    worst = int(np.argmax(err))
    print(f"{op} on {where}: max {err[worst]:.2f} ulp at x={x[worst]!r}")
    assert err[worst] <= bound, f"{op}: {err[worst]:.2f} ulp at x={x[worst]!r} (bound {bound})"


def test_trig_on_the_rv64gcv_vector_unit(workdir):
    """Sin, Cos, Tan vectorized by RVV under qemu-riscv64 (7.2 asserts on a vectorized float ->
    int conversion: the range reduction must not use one), to the same bounds."""
    ops = ["Sin", "Cos", "Tan"]
    x = grid(-1e4, 1e4, 20001)
    m = make_model([helper.make_node(op, ["x"], [f"y{i}"]) for i, op in enumerate(ops)], {"x": (F, x.shape)},
                   {f"y{i}": (F, x.shape) for i in range(len(ops))})
    outs = compile_and_run(m, "rv64gcv", {"x": x}, workdir)[0]
    for op, got in zip(ops, outs):
        _, ref, bound = CASES[op]
        assert ulp_error(got, x, ref).max() <= bound, op


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0, 1e-30, -1e-30], F)


@pytest.mark.parametrize("op,ref", [
    ("Exp", np.exp), ("Log", np.log), ("Tanh", np.tanh), ("Erf", erf64), ("Sqrt", np.sqrt),
    ("Sigmoid", lambda x: 1 / (1 + np.exp(-x))), ("Relu", lambda x: np.maximum(x, 0)),
])
def test_special_values(op, ref, workdir):
    """NaN propagates, infinities and overflow/underflow land where numpy puts them."""
    m = make_model([helper.make_node(op, ["x"], ["y"])], {"x": (F, SPECIAL.shape)}, {"y": (F, SPECIAL.shape)})
    got = compile_and_run(m, "x86-64-v3", {"x": SPECIAL}, workdir)[0][0]
    with np.errstate(all="ignore"):
        want = ref(SPECIAL.astype(np.float64)).astype(F)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-37, equal_nan=True, err_msg=op)


TRIG = {"Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Atan": np.arctan, "Asin": np.arcsin, "Acos": np.arccos,
        "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh}
TRIG_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0, 1e-30, -1e-30, 1.0, -1.0, 1e30, 2.0], F)


@pytest.mark.parametrize("op", list(TRIG))
def test_trig_special_values(op, workdir):
    """NaN and infinities, outside the domain (NaN), at its edges (atanh(+-1) = +-inf),
    overflow (sinh, cosh), tiny and huge arguments, where numpy puts them."""
    x = TRIG_SPECIAL
    m = make_model([helper.make_node(op, ["x"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)})
    got = compile_and_run(m, "x86-64-v3", {"x": x}, workdir)[0][0]
    with np.errstate(all="ignore"):
        want = TRIG[op](x.astype(np.float64)).astype(F)
    if op in ("Sin", "Cos", "Tan"):  # 1e30: beyond the exact reduction (|x| < 6.5e6): bounded, not accurate
        assert abs(got[10]) <= 1 if op != "Tan" else np.isfinite(got[10])
        got, want = np.delete(got, 10), np.delete(want, 10)
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-37, equal_nan=True, err_msg=op)


def test_trig_c_path_matches_llvm_path(workdir):
    """The same lowerings emitted as C (strict flags, UB sanitizer): the transcendentals agree
    with the LLVM object to a few ulp, Round and Mod's exact float remainder bit for bit."""
    from test_c_backend import run_c_path
    x = np.concatenate([grid(-20, 20, 2001), np.geomspace(1e-20, 1e30, 200).astype(F)])
    ops = list(TRIG) + ["Exp", "Log", "Erf", "Tanh", "Round"]
    nodes = [helper.make_node(op, ["x"], [f"y{i}"]) for i, op in enumerate(ops)]
    nodes.append(helper.make_node("Mod", ["x", "d"], ["ymod"], fmod=1))
    outs = {f"y{i}": (F, x.shape) for i in range(len(ops))} | {"ymod": (F, x.shape)}
    m = make_model(nodes, {"x": (F, x.shape), "d": (F, x.shape)}, outs)
    feeds = {"x": x, "d": np.resize(np.float32([0.7, -3.0, 1e-3, 2.5e7]), x.shape)}
    got_c = run_c_path(m, "x86-64-v3", feeds, workdir, flags=["-fsanitize=undefined", "-fsanitize-trap=undefined"],
                       tag="-trig")[0]
    got_o = compile_and_run(m, "x86-64-v3", feeds, workdir)[0]
    for op, c, o in zip(ops + ["Mod"], got_c, got_o):
        if op in ("Mod", "Round"):  # exact, both
            np.testing.assert_array_equal(c, o, err_msg=op)
        else:  # LLVM may contract into FMAs where the C compiler does not: a few ulp
            np.testing.assert_allclose(c, o, rtol=5e-7, atol=1e-37, equal_nan=True, err_msg=op)
