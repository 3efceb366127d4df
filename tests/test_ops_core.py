"""Elementwise, convolution, matrix and softmax ops against onnxruntime (natively on x86-64-v3;
the cross-target run of every op family is in test_targets.py)."""
import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F)


UNARY_CASES = [
    ("Relu", {}, 3), ("LeakyRelu", {"alpha": 0.2}, 3), ("Elu", {"alpha": 0.5}, 3),
    ("Sigmoid", {}, 10), ("HardSigmoid", {}, 5), ("HardSwish", {}, 5), ("Tanh", {}, 5),
    ("Erf", {}, 3), ("Exp", {}, 10), ("Neg", {}, 1), ("Abs", {}, 1), ("Floor", {}, 5),
    ("Ceil", {}, 5), ("Softplus", {}, 5), ("Reciprocal", {}, 1), ("Celu", {"alpha": 0.7}, 3),
    ("Sin", {}, 10), ("Cos", {}, 10), ("Tan", {}, 3), ("Atan", {}, 10), ("Asin", {}, 0.3), ("Acos", {}, 0.3),
    ("Sinh", {}, 5), ("Cosh", {}, 5), ("Asinh", {}, 10), ("Atanh", {}, 0.3), ("Round", {}, 5), ("Sign", {}, 1),
]


@pytest.mark.parametrize("op,attrs,scale", UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_unary(op, attrs, scale, workdir):
    x = randn(2, 3, 17, scale=scale)
    m = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (F, x.shape)}, {"y": (F, x.shape)},
                   opset=14 if op == "HardSwish" else 13)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


@pytest.mark.parametrize("op", ["Log", "Sqrt"])
def test_unary_positive(op, workdir):
    x = np.abs(randn(4, 33, scale=20)) + 1e-3
    m = make_model([helper.make_node(op, ["x"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_gelu_opset20_both_forms(workdir):
    x = randn(64, scale=4)
    for approx in ("none", "tanh"):
        m = make_model([helper.make_node("Gelu", ["x"], ["y"], approximate=approx)],
                       {"x": (F, x.shape)}, {"y": (F, x.shape)}, opset=20)
        check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_clip_with_constant_bounds(workdir):
    x = randn(50, scale=10)
    m = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": (F, x.shape)},
                   {"y": (F, x.shape)}, {"lo": np.array(0, F), "hi": np.array(6, F)})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


BROADCASTS = {"same": ((2, 3, 4), (2, 3, 4)), "trailing": ((2, 3, 4), (4,)), "both": ((2, 1, 4), (3, 1))}
# PRelu's slope broadcasts one way only (unidirectional), so it has no "both" case.
BINARY_CASES = [(op, kind) for op in ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"]
                for kind in BROADCASTS if not (op == "PRelu" and kind == "both")]


@pytest.mark.parametrize("op,kind", BINARY_CASES, ids=[f"{o}-{k}" for o, k in BINARY_CASES])
def test_binary_broadcast(op, kind, workdir):
    shapes = BROADCASTS[kind]
    a, b = randn(*shapes[0]), randn(*shapes[1])
    if op == "Pow":
        a = np.abs(a) + 0.1
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, 0.5, b).astype(F)
    out = np.broadcast_shapes(a.shape, b.shape)
    m = make_model([helper.make_node(op, ["a", "b"], ["y"])], {"a": (F, a.shape), "b": (F, b.shape)},
                   {"y": (F, out)})
    check_against_onnxruntime(m, {"a": a, "b": b}, T, workdir)


def test_pow_by_constant_exponents(workdir):
    x = np.abs(randn(40)) + 0.1
    for e in (2.0, 0.5, 3.0, -1.0, 1.7):
        m = make_model([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)},
                       {"e": np.array(e, F)})
        check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_where_and_compare(workdir):
    a, b = randn(3, 8), randn(3, 8)
    nodes = [helper.make_node("Greater", ["a", "b"], ["c"]), helper.make_node("Where", ["c", "a", "b"], ["y"])]
    m = make_model(nodes, {"a": (F, a.shape), "b": (F, b.shape)}, {"y": (F, a.shape)})
    check_against_onnxruntime(m, {"a": a, "b": b}, T, workdir)


CONV_CASES = {
    "basic": dict(x=(1, 3, 9, 9), w=(4, 3, 3, 3), attrs={}),
    "pads_strides": dict(x=(1, 3, 10, 9), w=(5, 3, 3, 3), attrs=dict(pads=[1, 2, 1, 0], strides=[2, 2])),
    "dilation": dict(x=(1, 2, 12, 12), w=(3, 2, 3, 3), attrs=dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "depthwise": dict(x=(1, 6, 8, 8), w=(6, 1, 3, 3), attrs=dict(group=6, pads=[1, 1, 1, 1])),
    "groups": dict(x=(2, 4, 7, 7), w=(6, 2, 3, 3), attrs=dict(group=2)),
    "same_upper": dict(x=(1, 2, 7, 8), w=(3, 2, 4, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": dict(x=(1, 2, 7, 8), w=(3, 2, 4, 3), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 1])),
    "valid_1d": dict(x=(1, 3, 20), w=(4, 3, 5), attrs=dict(auto_pad="VALID", strides=[3])),
    "pointwise": dict(x=(1, 16, 5, 5), w=(8, 16, 1, 1), attrs={}),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case, workdir):
    c = CONV_CASES[case]
    x, w, b = randn(*c["x"]), randn(*c["w"], scale=0.3), randn(c["w"][0])
    m = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **c["attrs"])], {"x": (F, x.shape)},
                   {"y": (F, None)}, {"w": w, "b": b})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


# The register tiles differ per target (rows of channels or of output rows, vector widths,
# how borders load), so these shapes run on every target: depthwise tiles of several output
# rows with a remainder, narrow and wide rows, strides, dilations, asymmetric pads, a channel
# multiplier, and border vectors loaded from a shifted address. The last three take vectors
# along output channels where the target has no FMA by lane (x86, RVV): KWS's first layer
# (one input channel, 25x5 output), a strided one with a remainder of channel vectors and an
# interior loop of pixel tiles, and a dilated one without bias; then a stride-1 one whose
# 10-wide rows leave column vectors idle (border tiles on both sides). Last, a pointwise one
# whose 35-pixel rows are no whole number of vectors: with FMA by lane (NEON) its weights are
# packed so one vector serves input channels a vector apart. And a pointwise one on a 3x3
# plane, whose vectors run along output channels on every target.
TILE_CASES = [
    dict(x=(1, 4, 25, 5), w=(4, 1, 3, 3), attrs=dict(group=4, pads=[1, 1, 1, 1])),
    dict(x=(1, 3, 11, 37), w=(3, 1, 3, 3), attrs=dict(group=3, strides=[2, 2], pads=[1, 1, 0, 1])),
    dict(x=(1, 2, 13, 21), w=(2, 1, 5, 5), attrs=dict(group=2, dilations=[2, 1], pads=[4, 2, 3, 2])),
    dict(x=(1, 3, 9, 10), w=(6, 1, 3, 3), attrs=dict(group=3, pads=[1, 1, 1, 1])),
    dict(x=(1, 2, 6, 29), w=(5, 2, 5, 5), attrs=dict(pads=[2, 2, 2, 2])),
    dict(x=(1, 1, 49, 10), w=(64, 1, 10, 4), attrs=dict(strides=[2, 2], pads=[4, 1, 5, 1])),
    dict(x=(1, 4, 13, 40), w=(40, 4, 3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    dict(x=(1, 2, 12, 9), w=(16, 2, 4, 4), attrs=dict(dilations=[2, 1], strides=[1, 2], pads=[3, 1, 2, 2]),
         bias=False),
    dict(x=(1, 8, 7, 10), w=(32, 8, 3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    dict(x=(1, 32, 5, 7), w=(10, 32, 1, 1), attrs={}),
    dict(x=(1, 96, 3, 3), w=(40, 96, 1, 1), attrs={}, bias=False),
]


def test_conv_tiles_on_target(target, workdir):
    nodes, inputs, outputs, inits, feeds = [], {}, {}, {}, {}
    for i, c in enumerate(TILE_CASES):
        feeds[f"x{i}"] = randn(*c["x"])
        inputs[f"x{i}"] = (F, c["x"])
        outputs[f"y{i}"] = (F, None)
        inits[f"w{i}"] = randn(*c["w"], scale=0.3)
        if c.get("bias", True):
            inits[f"b{i}"] = randn(c["w"][0])
        operands = [f"x{i}", f"w{i}"] + ([f"b{i}"] if c.get("bias", True) else [])
        nodes.append(helper.make_node("Conv", operands, [f"y{i}"], **c["attrs"]))
    check_against_onnxruntime(make_model(nodes, inputs, outputs, inits), feeds, target, workdir)


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(ta, tb, workdir):
    a = randn(*((7, 5) if ta else (5, 7)))
    b = randn(*((6, 7) if tb else (7, 6)))
    c = randn(6)
    m = make_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=ta, transB=tb, alpha=0.5, beta=2.0)],
                   {"a": (F, a.shape)}, {"y": (F, (5, 6))}, {"b": b, "c": c})
    check_against_onnxruntime(m, {"a": a}, T, workdir)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)),
                                   ((4,), (4, 3)), ((2, 3, 4), (4,))])
def test_matmul(sa, sb, workdir):
    a, b = randn(*sa), randn(*sb)
    out = np.matmul(a, b).shape
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": (F, sa), "b": (F, sb)}, {"y": (F, out)})
    check_against_onnxruntime(m, {"a": a, "b": b}, T, workdir)


@pytest.mark.parametrize("b_known", [True, False], ids=["weights", "input"])
def test_float64_matmul_and_gemm_compute_in_float64(b_known, workdir):
    """Against numpy in float64 with a tolerance only float64 arithmetic meets (packed
    constant panels and the accumulators keep the precision)."""
    a = rng.standard_normal((5, 9))
    b = rng.standard_normal((9, 6)) / 3
    c = rng.standard_normal(6)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]),
             helper.make_node("Gemm", ["a", "b", "c"], ["z"], alpha=0.5, beta=2.0)]
    m = make_model(nodes, {"a": (np.float64, a.shape)} | ({} if b_known else {"b": (np.float64, b.shape)}),
                   {"y": (np.float64, (5, 6)), "z": (np.float64, (5, 6))}, {"c": c} | ({"b": b} if b_known else {}))
    (y, z), _, _ = compile_and_run(m, T, {"a": a} | ({} if b_known else {"b": b}), workdir)
    assert y.dtype == z.dtype == np.float64
    np.testing.assert_allclose(y, a @ b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(z, 0.5 * (a @ b) + 2.0 * c, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis,opset", [(-1, 13), (1, 13), (0, 13), (1, 11)])
def test_softmax(op, axis, opset, workdir):
    x = randn(2, 3, 5, scale=3)
    m = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {"x": (F, x.shape)}, {"y": (F, x.shape)},
                   opset=opset)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_swish_opset24(workdir):
    """x * sigmoid(alpha x); onnxruntime does not run opset 24: the ONNX reference evaluator does."""
    from onnx.reference import ReferenceEvaluator
    x = randn(3, 40, scale=6)
    m = make_model([helper.make_node("Swish", ["x"], ["y"], alpha=0.6)], {"x": (F, x.shape)}, {"y": (F, x.shape)},
                   opset=24)
    assert_close(compile_and_run(m, T, {"x": x}, workdir)[0][0], ReferenceEvaluator(m).run(None, {"x": x})[0])


@pytest.mark.parametrize("base,exp", [(np.int32, np.float32), (np.int64, np.int64), (np.float32, np.int32),
                                      (np.float32, np.int64)])
def test_pow_mixed_types(base, exp, workdir):
    """An integer base truncates like C's (int)pow; an integer exponent is read as a float."""
    x = np.array([[1, 2, 3, -2, 5, 7], [0, 1, -3, 4, 2, 3]], base)
    e = np.array([3, 2, 5, 3, 0, 2], exp)
    m = make_model([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": (base, x.shape), "e": (exp, e.shape)},
                   {"y": (base, x.shape)}, opset=15)
    check_against_onnxruntime(m, {"x": x, "e": e}, T, workdir)


def test_conv_with_a_large_kernel_runs_as_a_loop_nest(tmp_path):
    """A 2-D convolution with more taps than the register tiles unroll (a 12x11 kernel)
    takes the plain loop nest (schedules.MAX_UNROLLED_TAPS) and matches onnxruntime."""
    from helpers import check_against_onnxruntime, make_model
    from onnx import helper as h

    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 12, 11)).astype(np.float32)
    x = rng.standard_normal((1, 3, 20, 18)).astype(np.float32)
    m = make_model([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 2, 1, 2])], {"x": (np.float32, x.shape)},
                   {"y": (np.float32, (1, 4, 11, 12))}, {"w": w})
    check_against_onnxruntime(m, {"x": x}, "x86-64-v3", tmp_path)


def test_unsqueeze_with_a_0d_axes_tensor_is_one_axis(tmp_path):
    """onnx's own AffineGrid function body gives Unsqueeze a 0-d axes tensor (-1): one axis,
    as the reference evaluator reads it."""
    from helpers import compile_and_run, make_model
    from onnx import helper as h

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = make_model([h.make_node("Unsqueeze", ["x", "axes"], ["y"])], {"x": (np.float32, x.shape)},
                   {"y": (np.float32, (2, 3, 1))}, {"axes": np.array(-1, np.int64)})
    got, _, _ = compile_and_run(m, "x86-64-v3", {"x": x}, tmp_path)
    np.testing.assert_array_equal(got[0], np.expand_dims(x, -1))
