"""ops/indexing.py (Size, ArgMax/ArgMin, Hardmax, Trilu, GatherElements, ScatterElements,
CumSum, OneHot, EyeLike): against onnxruntime on the host, the C path under clang's UB
sanitizer, one model on cortex-a76 under QEMU, out-of-range indices kept inside the buffers,
and the bad attributes."""
import re

import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(22)
UBSAN = ["-fsanitize=undefined", "-fsanitize-trap=undefined"]



# the front end's schema check (frontend/validate.py) may refuse a bad input before the op's
# own check does: its messages name the node, the op and the offending type or flag
SCHEMA_REFUSAL = re.compile(r"is tensor\(\w+\); \w+ takes \w+ in \{|it is a flag, 0 or 1|is tensor\(\w+\) but ")

def I(*v):  # noqa: E743
    return np.array(v, np.int64)


def model(op, feeds, out_shape, out_dtype=None, inits=None, opset=18, inputs=None, **attrs):
    names = inputs or list(feeds) + list(inits or {})
    first = next(iter(feeds.values()))
    return make_model([helper.make_node(op, names, ["y"], **attrs)], {k: (v.dtype, v.shape) for k, v in feeds.items()},
                      {"y": (out_dtype or first.dtype, out_shape)}, inits, opset=opset)


X = rng.standard_normal((3, 4, 5)).astype(F)
X[1, 2, :2] = X[1, 2, 3]  # ties: the first or the last index
XI = rng.integers(-5, 5, (3, 4, 5)).astype(np.int32)
XU = rng.integers(0, 255, (3, 4, 5)).astype(np.uint8)
GI = rng.integers(-4, 4, (3, 2, 5)).astype(np.int64)  # indices along axis 1 of X, negative too

# id: (op, feeds, inits, out shape, out dtype, attrs, opset)
CASES = {
    "size": ("Size", {"x": X}, None, (), np.int64, {}, 18),
    "argmax": ("ArgMax", {"x": X}, None, (3, 1, 5), np.int64, {"axis": 1}, 18),
    "argmax-last-nokeep": ("ArgMax", {"x": X}, None, (3, 4), np.int64,
                           {"axis": -1, "keepdims": 0, "select_last_index": 1}, 18),
    "argmin-int32": ("ArgMin", {"x": XI}, None, (1, 4, 5), np.int64, {}, 18),
    "argmin-last-int32": ("ArgMin", {"x": XI}, None, (3, 4, 1), np.int64, {"axis": 2, "select_last_index": 1}, 18),
    "argmax-uint8": ("ArgMax", {"x": XU}, None, (3, 4, 1), np.int64, {"axis": 2}, 18),
    "hardmax": ("Hardmax", {"x": X}, None, X.shape, None, {}, 18),
    "hardmax-axis0": ("Hardmax", {"x": X}, None, X.shape, None, {"axis": 0}, 18),
    "hardmax-opset11": ("Hardmax", {"x": X}, None, X.shape, None, {"axis": 1}, 11),
    "triu": ("Trilu", {"x": X}, None, X.shape, None, {}, 18),
    "tril-k": ("Trilu", {"x": X}, {"k": I(-1)}, X.shape, None, {"upper": 0}, 18),
    "triu-k-int32": ("Trilu", {"x": XI}, {"k": I(2)}, XI.shape, None, {}, 18),
    "gather-elements": ("GatherElements", {"x": X, "i": GI}, None, GI.shape, None, {"axis": 1}, 18),
    "gather-elements-int32": ("GatherElements", {"x": XI, "i": rng.integers(-5, 5, (3, 4, 2)).astype(np.int32)},
                              None, (3, 4, 2), None, {"axis": -1}, 18),
    "cumsum": ("CumSum", {"x": X}, {"a": I(1)}, X.shape, None, {}, 18),
    "cumsum-excl-rev": ("CumSum", {"x": X}, {"a": I(-1)}, X.shape, None, {"exclusive": 1, "reverse": 1}, 18),
    "cumsum-int32-rev": ("CumSum", {"x": XI}, {"a": np.array(0, np.int32)}, XI.shape, None, {"reverse": 1}, 18),
    "onehot": ("OneHot", {"i": I(0, 3, -1, 9, -5)}, {"d": I(5), "v": np.array([-1.0, 2.0], F)}, (5, 5), F, {}, 18),
    "onehot-axis0": ("OneHot", {"i": rng.integers(-3, 3, (2, 3)).astype(np.int32)},
                     {"d": np.array(4.0, F), "v": np.array([0, 7], F)}, (4, 2, 3), F, {"axis": 0}, 18),
    "onehot-float-idx": ("OneHot", {"i": np.array([[1.9, -1.2], [0.0, 2.5]], F)},
                         {"d": np.array(3, F), "v": np.array([0, 1], F)}, (2, 3, 2), F, {"axis": 1}, 18),
    "eyelike": ("EyeLike", {"x": X[0]}, None, (4, 5), None, {"k": 1}, 18),
    "eyelike-dtype": ("EyeLike", {"x": X[0]}, None, (4, 5), np.int32, {"k": -2, "dtype": 6}, 18),
}


@pytest.mark.parametrize("case", list(CASES))
def test_against_onnxruntime(case, workdir):
    op, feeds, inits, shape, dtype, attrs, opset = CASES[case]
    m = model(op, feeds, shape, dtype, inits, opset, **attrs)
    check_against_onnxruntime(m, feeds, T, workdir)


def scatter_model(reduction, data, idx, upd, axis):
    feeds = {"x": data, "i": idx, "u": upd}
    return model("ScatterElements", feeds, data.shape, axis=axis, reduction=reduction), feeds


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements(reduction, workdir):
    data = rng.standard_normal((4, 6)).astype(F)
    # distinct indices per row for "none" (duplicates leave the order to the implementation)
    idx = np.stack([rng.permutation(6)[:3] - (6 if r % 2 else 0) for r in range(4)]).astype(np.int64)
    if reduction != "none":
        idx[:, 1] = idx[:, 0]  # duplicates accumulate
    upd = rng.standard_normal((4, 3)).astype(F)
    m, feeds = scatter_model(reduction, data, idx, upd, axis=1)
    check_against_onnxruntime(m, feeds, T, workdir)


def test_scatter_old_op_and_axis0(workdir):
    data = rng.standard_normal((3, 3)).astype(F)
    feeds = {"x": data, "i": np.array([[1, 0, 2], [0, 2, 1]], np.int64), "u": rng.standard_normal((2, 3)).astype(F)}
    check_against_onnxruntime(model("Scatter", feeds, data.shape, opset=10, axis=0), feeds, T, workdir)


def test_out_of_range_indices_stay_inside_the_buffers(workdir):
    """Invalid per the spec (onnxruntime refuses them): GatherElements reads the nearest
    element, ScatterElements skips the update; neither backend touches memory outside its
    buffers (the harness's arena guard, and the C path under the UB sanitizer)."""
    data = np.arange(12, dtype=F).reshape(3, 4)
    idx = np.array([[0, 9, -9, 3]] * 3, np.int64)
    feeds = {"x": data, "i": idx}
    m = model("GatherElements", feeds, idx.shape, axis=1)
    want = np.take_along_axis(data, np.array([[0, 3, 0, 3]] * 3), axis=1)
    np.testing.assert_array_equal(compile_and_run(m, T, feeds, workdir)[0][0], want)
    np.testing.assert_array_equal(run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-ge")[0][0], want)
    upd = -np.ones((3, 4), F)
    m, sfeeds = scatter_model("none", data, idx, upd, axis=1)
    want = data.copy()
    want[:, [0, 3]] = -1
    np.testing.assert_array_equal(compile_and_run(m, T, sfeeds, workdir)[0][0], want)
    np.testing.assert_array_equal(run_c_path(m, T, sfeeds, workdir, flags=UBSAN, tag="-se")[0][0], want)


def test_gather_nd(workdir):
    data = rng.standard_normal((2, 3, 4)).astype(F)
    idx = np.array([[[0, 1], [1, -1]], [[1, 2], [0, 0]]], np.int64)
    feeds = {"x": data, "i": idx}
    check_against_onnxruntime(model("GatherND", feeds, (2, 2, 4)), feeds, T, workdir)
    bidx = np.array([[[2, 3], [0, 1]], [[1, 0], [2, 2]]], np.int64)
    feeds = {"x": data, "i": bidx}
    check_against_onnxruntime(model("GatherND", feeds, (2, 2), batch_dims=1), feeds, T, workdir)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction, workdir):
    data = rng.standard_normal((4, 3, 5)).astype(F)
    idx = np.array([[0, 1], [3, -1], [2, 0]] + ([[0, 1]] if reduction != "none" else []), np.int64)
    upd = rng.standard_normal((len(idx), 5)).astype(F)
    feeds = {"x": data, "i": idx, "u": upd}
    check_against_onnxruntime(model("ScatterND", feeds, data.shape, reduction=reduction), feeds, T, workdir)


def mixed_model():
    x = rng.standard_normal((2, 5, 6)).astype(F)
    nodes = [
        helper.make_node("CumSum", ["x", "ax"], ["cs"], exclusive=1),
        helper.make_node("Trilu", ["cs"], ["tr"], upper=0),
        helper.make_node("ArgMax", ["tr"], ["am"], axis=2, keepdims=1),
        helper.make_node("GatherElements", ["x", "am"], ["g"], axis=2),
        helper.make_node("Hardmax", ["x"], ["hm"]),
        helper.make_node("ScatterElements", ["hm", "am", "g"], ["sc"], axis=2, reduction="add"),
        helper.make_node("ArgMin", ["x"], ["amin"], axis=1, keepdims=0),
        helper.make_node("OneHot", ["amin", "depth", "vals"], ["oh"], axis=1),
        helper.make_node("Size", ["x"], ["n"]),
    ]
    inits = {"ax": I(1), "depth": I(5), "vals": np.array([0.5, 3.0], F)}
    outs = {"sc": (F, (2, 5, 6)), "oh": (F, (2, 5, 6)), "n": (np.int64, ())}
    return make_model(nodes, {"x": (F, x.shape)}, outs, inits, opset=18), {"x": x}


def test_mixed_model_on_cortex_a76(workdir):
    m, feeds = mixed_model()
    check_against_onnxruntime(m, feeds, "cortex-a76", workdir)


def test_mixed_model_c_path_under_ubsan(workdir):
    m, feeds = mixed_model()
    got = run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-indexing")[0]
    for g, w in zip(got, onnxruntime_outputs(m, feeds)):
        assert_close(g, w)


# -- bad inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("op,feeds,inits,attrs,kind,text", [
    ("ArgMax", {"x": X}, None, {"axis": 3}, InvalidModelError, "axis 3 out of range"),
    ("ArgMin", {"x": X}, None, {"select_last_index": 2}, InvalidModelError, "select_last_index must be 0 or 1"),
    ("ArgMax", {"x": X > 0}, None, {}, InvalidModelError, "must be"),
    ("Hardmax", {"x": XI}, None, {}, InvalidModelError, "must be float32, float64"),
    ("Trilu", {"x": X[0, 0]}, None, {}, InvalidModelError, "needs rank >= 2"),
    ("Trilu", {"x": X}, {"k": I(1, 2)}, {}, InvalidModelError, "must be a scalar"),
    ("Trilu", {"x": X, "k": I(1, 2)}, None, {}, InvalidModelError, "must be a single int64"),  # k at run time
    ("GatherElements", {"x": X, "i": GI.astype(F)}, None, {"axis": 1}, InvalidModelError, "indices must be"),
    ("GatherElements", {"x": X, "i": GI[0]}, None, {"axis": 1}, InvalidModelError, "rank"),
    ("CumSum", {"x": X}, {"a": I(3)}, {}, InvalidModelError, "out of range"),
    ("CumSum", {"x": X}, {"a": I(0)}, {"exclusive": 3}, InvalidModelError, "exclusive must be 0 or 1"),
    ("CumSum", {"x": XU}, {"a": I(0)}, {}, InvalidModelError, "must be"),
    ("OneHot", {"i": I(1, 2)}, {"d": I(0), "v": I(0, 1)}, {}, InvalidModelError, "depth must be positive"),
    ("OneHot", {"i": I(1, 2)}, {"d": I(3), "v": I(0, 1, 2)}, {}, InvalidModelError, "2 elements"),
    ("OneHot", {"i": I(1, 2)}, {"d": I(3), "v": I(0, 1)}, {"axis": 3}, InvalidModelError, "out of range"),
    ("EyeLike", {"x": X}, None, {}, InvalidModelError, "2-D"),
    ("ScatterElements", {"x": X, "i": GI, "u": GI.astype(F)}, None, {"reduction": "avg"}, InvalidModelError,
     "reduction must be"),
    ("ScatterElements", {"x": X, "i": GI, "u": GI}, None, {}, InvalidModelError, "updates"),
    ("GatherND", {"x": X, "i": GI[..., :4]}, None, {}, InvalidModelError, "do not fit"),
    ("GatherND", {"x": X, "i": GI[:2, :, :2]}, None, {"batch_dims": 1}, InvalidModelError, "batch dims"),
    ("ScatterND", {"x": X, "i": I(0, 1)[None], "u": X[0, 0, :4].copy()[None]}, None, {}, InvalidModelError,
     "updates"),
    ("ScatterND", {"x": X, "i": I(0)[None], "u": X[:1]}, None, {"reduction": "xor"}, InvalidModelError,
     "reduction must be"),
])
def test_bad_inputs(op, feeds, inits, attrs, kind, text):
    names = list(feeds) + list(inits or {})
    m = make_model([helper.make_node(op, names, ["y"], name="bad", **attrs)],
                   {k: (v.dtype, v.shape) for k, v in feeds.items()}, {"y": (F, None)}, inits, opset=18)
    with pytest.raises((InvalidModelError, UnsupportedError)) as e:
        compile_onnx(m, T)
    msg = str(e.value)
    assert e.type is kind and (text in msg or SCHEMA_REFUSAL.search(msg)) and "node 'bad'" in msg and f"({op})" in msg, \
        str(e.value)
