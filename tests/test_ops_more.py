"""Pooling, normalization, reductions, ConvTranspose, data movement and Resize against
onnxruntime (natively on x86-64-v3), one mixed model on every target, and the bad inputs.
Output shapes are taken from onnxruntime, so our shape rules are checked too."""
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(3)


def I(*v):  # noqa: E743
    return np.array(v, np.int64)


def S(*v):
    return np.array(v, F)


def model_for(nodes, x, inits, opset, outputs=("y",), oracle=onnxruntime_outputs):
    """The model with output shapes filled in from the oracle's answer."""
    probe = make_model(nodes, {"x": (F, x.shape)}, {o: (F, None) for o in outputs}, inits, opset=opset)
    want = oracle(probe, {"x": x})
    return make_model(nodes, {"x": (F, x.shape)}, {o: (F, w.shape) for o, w in zip(outputs, want)},
                      inits, opset=opset)


def check(nodes, x, workdir, inits=None, opset=17, outputs=("y",)):
    m = model_for(nodes, x, inits or {}, opset, outputs)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


X4 = rng.standard_normal((2, 3, 9, 10)).astype(F)

POOL_CASES = [
    ("MaxPool", dict(kernel_shape=[3, 3])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 2])),
    ("MaxPool", dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[1, 0, 0, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1, pads=[1, 0, 1, 0])),
    ("AveragePool", dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER")),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
]


@pytest.mark.parametrize("op,attrs", POOL_CASES, ids=[f"{o}-{i}" for i, (o, _) in enumerate(POOL_CASES)])
def test_pooling(op, attrs, workdir):
    check([helper.make_node(op, ["x"], ["y"], **attrs)], X4, workdir)


def test_maxpool_same_with_dilation_follows_the_spec(workdir):
    """onnxruntime ignores dilation when it computes SAME pads; the ONNX spec (and its
    reference implementation) does not. We follow the spec."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER")]
    oracle = lambda m, feeds: ReferenceEvaluator(m).run(None, feeds)  # noqa: E731
    m = model_for(nodes, X4, {}, 13, oracle=oracle)
    got = compile_and_run(m, T, {"x": X4}, workdir)[0][0]
    assert got.shape == X4.shape
    assert_close(got, oracle(m, {"x": X4})[0])


C = X4.shape[1]
BN = {"s": rng.standard_normal(C).astype(F), "b": rng.standard_normal(C).astype(F),
      "mu": rng.standard_normal(C).astype(F), "var": np.abs(rng.standard_normal(C)).astype(F) + 0.1}
NORM_CASES = {
    "batchnorm": ([helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"], ["y"], epsilon=1e-3)], BN),
    "layernorm-last": ([helper.make_node("LayerNormalization", ["x", "g", "bb"], ["y"], axis=-1)],
                       {"g": rng.standard_normal(10).astype(F), "bb": rng.standard_normal(10).astype(F)}),
    "layernorm-2axes": ([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-2, epsilon=1e-3)],
                        {"g": rng.standard_normal((9, 10)).astype(F)}),
    "instancenorm": ([helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])],
                     {"s": BN["s"], "b": BN["b"]}),
    "lrn": ([helper.make_node("LRN", ["x"], ["y"], size=3, alpha=1e-2)], {}),
    "lrn5": ([helper.make_node("LRN", ["x"], ["y"], size=5, beta=0.5, bias=2.0)], {}),
    "lpnorm-l2": ([helper.make_node("LpNormalization", ["x"], ["y"])], {}),
    "lpnorm-l1-axis1": ([helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=1)], {}),
}


@pytest.mark.parametrize("case", list(NORM_CASES))
def test_normalization(case, workdir):
    nodes, inits = NORM_CASES[case]
    check(nodes, X4, workdir, inits)


REDUCE_OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_axes_attribute_and_input(op, workdir):
    x = rng.standard_normal((2, 3, 4, 5)).astype(F) * (0.5 if op == "ReduceProd" else 1)
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.1
    old = 11 if op == "ReduceSum" else 13
    check([helper.make_node(op, ["x"], ["y"], axes=[1, -1], keepdims=0)], x, workdir, opset=old)
    check([helper.make_node(op, ["x", "ax"], ["y"], keepdims=1)], x, workdir, {"ax": I(2)}, opset=18)


def test_reduce_defaults(workdir):
    check([helper.make_node("ReduceMean", ["x"], ["y"])], X4, workdir, opset=13)
    check([helper.make_node("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)], X4, workdir, opset=13)


W_CT = rng.standard_normal((3, 2, 3, 3)).astype(F)
CT_CASES = {
    "basic": {},
    "stride2": dict(strides=[2, 2]),
    "pads-output_padding": dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "dilation-asym-pads": dict(strides=[2, 3], dilations=[2, 1], pads=[0, 1, 2, 0]),
    "output_shape": dict(strides=[2, 2], output_shape=[18, 20]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
}


@pytest.mark.parametrize("case", list(CT_CASES))
def test_conv_transpose(case, workdir):
    inits = {"w": W_CT, "b": rng.standard_normal(2).astype(F)}
    check([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **CT_CASES[case])], X4, workdir, inits)


def test_conv_transpose_groups_and_1d(workdir):
    inits = {"w": rng.standard_normal((3, 2, 3, 3)).astype(F)}
    check([helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=3, strides=[2, 2])], X4, workdir, inits)
    x1 = rng.standard_normal((2, 3, 7)).astype(F)
    check([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3])], x1, workdir,
          {"w": rng.standard_normal((3, 2, 4)).astype(F)})


MOVE_CASES = {
    "split13": ([helper.make_node("Split", ["x", "s"], ["y0", "y1"], axis=3)], {"s": I(4, 6)}, 13, 2),
    "split11-attr": ([helper.make_node("Split", ["x"], ["y0", "y1"], axis=1, split=[1, 2])], {}, 11, 2),
    "split18-num_outputs-uneven": ([helper.make_node("Split", ["x"], ["y0", "y1"], axis=2, num_outputs=2)],
                                   {}, 18, 2),
    "slice-negative-step": ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                            {"st": I(1, -1), "en": I(3, -100), "ax": I(1, 3), "sp": I(1, -2)}, 13, 1),
    "slice-int64-max-end": ([helper.make_node("Slice", ["x", "st", "en"], ["y"])],
                            {"st": I(0, 1), "en": I(2 ** 63 - 1, 4)}, 13, 1),
    "slice-opset9-attrs": ([helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[2])], {}, 9, 1),
    "pad-axes18": ([helper.make_node("Pad", ["x", "p", "", "ax"], ["y"])], {"p": I(1, 2, 3, 4), "ax": I(2, 3)},
                   18, 1),
    "pad-negative-crops": ([helper.make_node("Pad", ["x", "p"], ["y"])], {"p": I(0, -1, 1, 0, 0, 1, -2, 0)}, 13, 1),
    "pad-opset10-attrs": ([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=2.0)],
                          {}, 10, 1),
    "expand": ([helper.make_node("Expand", ["x", "s"], ["y"])], {"s": I(2, 2, 1, 1, 1)}, 13, 1),
    "tile": ([helper.make_node("Tile", ["x", "r"], ["y"])], {"r": I(1, 2, 1, 3)}, 13, 1),
    "depth_to_space-crd": ([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=1, mode="CRD")], {}, 13, 1),
    "constant_of_shape": ([helper.make_node("ConstantOfShape", ["s"], ["c"],
                                            value=helper.make_tensor("v", 1, [1], [0.5])),
                           helper.make_node("Add", ["x", "c"], ["y"])], {"s": I(10)}, 13, 1),
    "range": ([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])],
              {"a": np.array(0.5, F), "b": np.array(5.5, F), "d": np.array(0.5, F)}, 13, 1),
}


@pytest.mark.parametrize("case", list(MOVE_CASES))
def test_movement(case, workdir):
    nodes, inits, opset, nout = MOVE_CASES[case]
    outputs = [f"y{i}" for i in range(nout)] if nout > 1 else ["y"]
    check(nodes, X4, workdir, inits, opset, outputs)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode, workdir):
    check([helper.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)], X4, workdir,
          {"p": I(0, 1, 2, 1, 0, 1, 1, 3), "v": np.array(1.5, F)}, opset=19)


def test_depth_space_round_trip(workdir):
    x = rng.standard_normal((1, 8, 3, 4)).astype(F)
    for mode in ("DCR", "CRD"):
        check([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)], x, workdir)
    check([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], rng.standard_normal((1, 2, 4, 6)).astype(F),
          workdir)


RESIZE = [(mode, coord, nearest)
          for mode in ("nearest", "linear")
          for coord in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
          for nearest in (("round_prefer_floor", "round_prefer_ceil", "floor", "ceil") if mode == "nearest"
                          else ("-",))]


@pytest.mark.parametrize("mode,coord,nearest", RESIZE, ids=["-".join(c) for c in RESIZE])
def test_resize(mode, coord, nearest, workdir):
    x = rng.standard_normal((1, 2, 5, 7)).astype(F)
    attrs = dict(mode=mode, coordinate_transformation_mode=coord)
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    check([helper.make_node("Resize", ["x", "", "s"], ["y"], **attrs)], x, workdir, {"s": S(1, 1, 2, 1.5)}, 13)
    check([helper.make_node("Resize", ["x", "", "", "z"], ["y"], **attrs)], x, workdir, {"z": I(1, 2, 3, 11)}, 13)


def test_resize_old_forms_and_axes(workdir):
    x = rng.standard_normal((1, 2, 5, 7)).astype(F)
    check([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], x, workdir, {"s": S(1, 1, 2, 2)}, 9)
    check([helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")], x, workdir, {"s": S(1, 1, 2, 2)}, 10)
    check([helper.make_node("Resize", ["x", "", "", "z"], ["y"], mode="linear", axes=[2, 3])], x, workdir,
          {"z": I(8, 3)}, 18)


# -- a decoder-ish model with these ops on every target ---------------------------------------------
def test_mixed_model_on_target(target, workdir):
    x = rng.standard_normal((1, 4, 8, 8)).astype(F)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "mu", "var"], ["bn"]),
        helper.make_node("Pad", ["bn", "p"], ["pd"], mode="reflect"),
        helper.make_node("MaxPool", ["pd"], ["mp"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Resize", ["mp", "", "sc"], ["rs"], mode="linear"),
        helper.make_node("Slice", ["rs", "st", "en", "ax"], ["sl"]),
        helper.make_node("LayerNormalization", ["sl", "g"], ["ln"], axis=-1),
        helper.make_node("ReduceMean", ["ln", "rax"], ["y"], keepdims=1),
    ]
    c = 3
    inits = {"wt": rng.standard_normal((4, c, 3, 3)).astype(F), "s": S(1, 2, 0.5), "b": S(0, 1, -1),
             "mu": S(0.1, 0.2, 0.3), "var": S(1, 2, 3), "p": I(0, 0, 1, 1, 0, 0, 1, 1), "sc": S(1, 1, 2, 2),
             "st": I(1, 2), "en": I(15, 14), "ax": I(2, 3), "g": rng.standard_normal(12).astype(F),
             "rax": I(1)}
    m = model_for(nodes, x, inits, 18)
    check_against_onnxruntime(m, {"x": x}, target, workdir)


# -- bad inputs -------------------------------------------------------------------------------
def compile_error(nodes, x_shape, inits, opset=17, outputs=("y",)):
    m = make_model(nodes, {"x": (F, x_shape)}, {o: (F, None) for o in outputs}, inits, opset=opset)
    with pytest.raises(CompileError) as e:
        compile_onnx(m, T)
    return str(e.value)


def test_maxpool_indices_output_declared_float_is_refused():
    """MaxPool's Indices output is int64 (computed since tests/test_ops_norm2.py): declared float, refused."""
    msg = compile_error([helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="mp1")],
                        (1, 1, 4, 4), {}, outputs=("y", "idx"))
    assert "'idx'" in msg and "int64" in msg


@pytest.mark.parametrize("what", ["pads", "scales", "axes"])
def test_runtime_shape_parameters_are_refused(what):
    """Shape-determining inputs must be constants: static shapes are the contract."""
    if what == "pads":
        nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["x"], ["xi"], to=7),
                 helper.make_node("Reshape", ["xi", "m1"], ["p"]), helper.make_node("Pad", ["x", "p"], ["y"])]
        msg = compile_error(nodes, (8,), {"m1": I(-1)}, opset=13)
    elif what == "scales":
        nodes = [helper.make_node("Abs", ["x"], ["s"]),
                 helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")]
        msg = compile_error(nodes, (4,), {}, opset=13)
    else:
        nodes = [helper.make_node("Cast", ["x"], ["a"], to=7), helper.make_node("ReduceSum", ["x", "a"], ["y"])]
        msg = compile_error(nodes, (1,), {}, opset=13)
    assert "compile-time constant" in msg


def test_unsupported_resize_mode_is_named():
    msg = compile_error([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="area", name="up")],
                        (1, 1, 4, 4), {"s": S(1, 1, 2, 2)}, opset=13)
    assert "area" in msg and "up" in msg


def test_bad_split_sizes_are_named():
    msg = compile_error([helper.make_node("Split", ["x", "s"], ["y0", "y1"], axis=0, name="sp")], (6,),
                        {"s": I(2, 3)}, opset=13, outputs=("y0", "y1"))
    assert "sp" in msg and "split sizes" in msg


def test_reference_interpreter_agrees_with_onnxruntime():
    """The numpy references of these ops are an oracle too: check them directly."""
    from toolchain.frontend.onnx_import import import_model
    from toolchain.interpreter import interpret
    for nodes, inits in [NORM_CASES["layernorm-2axes"], NORM_CASES["lrn"],
                         ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])], {"w": W_CT}),
                         ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], ceil_mode=1,
                                            strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)], {})]:
        m = model_for(nodes, X4, inits, 17)
        assert_close(interpret(import_model(m), [X4])[0], onnxruntime_outputs(m, {"x": X4})[0],
                     what=nodes[0].op_type)
    assert onnx.checker.check_model(m) is None


def test_lpnormalization_zero_norm_is_zero(workdir):
    x = rng.standard_normal((3, 4)).astype(F)
    x[:, 1] = 0
    x[2] = 0
    for axis, p in ((0, 2), (1, 1)):
        m = make_model([helper.make_node("LpNormalization", ["x"], ["y"], axis=axis, p=p)], {"x": (F, x.shape)},
                       {"y": (F, x.shape)})
        check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_lpnormalization_bad_p():
    from toolchain.errors import InvalidModelError
    m = make_model([helper.make_node("LpNormalization", ["x"], ["y"], p=3, name="lp")], {"x": (F, (2, 3))},
                   {"y": (F, None)})
    with pytest.raises(InvalidModelError, match=r"node 'lp' \(LpNormalization\): p must be 1 or 2"):
        compile_onnx(m, T)


@pytest.mark.parametrize("shape, perm, dtype", [
    ((13, 9), [1, 0], np.float32),  # blocks of 4 and an edge of 1 row and 1 column
    ((2, 6, 3, 5), [0, 2, 3, 1], np.float32),  # channels-last: 2 x (6 x 15)
    ((8, 4, 7), [1, 2, 0], np.int32),  # 8 x 28 -> 28 x 8
    ((5, 12), [1, 0], np.int64),
    ((4, 9), [1, 0], np.int8),
    ((3, 4, 5), [0, 2, 1], np.float32),  # edge rows only
    # axes of size 1 dropped first: a pointwise weight (O, C, 1, 1) -> (C, O, 1, 1), and others
    ((10, 9, 1, 1), [1, 0, 2, 3], np.float32),
    ((1, 6, 1, 7), [3, 2, 1, 0], np.float32),
    ((2, 1, 5, 6), [0, 3, 1, 2], np.float32),
])
def test_transpose_in_blocks_matches_numpy(shape, perm, dtype, target, workdir):
    """A Transpose that swaps two groups of axes runs in 4 x 4 blocks of vectors (edges one by one)."""
    x = (np.arange(np.prod(shape)) * 7 % 251 - 120).reshape(shape).astype(dtype)
    m = make_model([helper.make_node("Transpose", ["x"], ["y"], perm=perm)], {"x": (dtype, list(shape))},
                   {"y": (dtype, [shape[p] for p in perm])})
    got, _, _ = compile_and_run(m, target, {"x": x}, workdir)
    np.testing.assert_array_equal(got[0], np.transpose(x, perm))
