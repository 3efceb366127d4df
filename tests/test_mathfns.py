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
