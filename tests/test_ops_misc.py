"""Einsum, Det (ops/linalg.py); Col2Im, CenterCropPad, ReverseSequence, Compress, the window
generators, SwiGLU (ops/misc_ops.py); SpaceToDepth CRD; an empty Shape slice. Against
onnxruntime natively on x86-64-v3, against onnx's ReferenceEvaluator where onnxruntime lacks
the opset (SwiGLU, SpaceToDepth CRD: opset 28), numpy where the spec leaves a case to the
implementation (ReverseSequence's out-of-range lengths); one mixed model on every target
and through the C backend; the bad inputs."""
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, without_output_shapes
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(11)


def I(*v):  # noqa: E743
    return np.array(v, np.int64)


def model(nodes, feeds, outs, inits=None, opset=18):
    """outs: name -> array of the expected shape and dtype."""
    return make_model(nodes, {k: (v.dtype, v.shape) for k, v in feeds.items()},
                      {k: (v.dtype, v.shape) for k, v in outs.items()}, inits, opset=opset)


def reference_check(m, feeds, workdir, target=T):
    """Against onnx's ReferenceEvaluator (onnxruntime does not run opset 28)."""
    want = ReferenceEvaluator(m).run(None, feeds)
    got, _, _ = compile_and_run(m, target, feeds, workdir)
    for j, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype
        assert_close(g, w, what=f"output {j}")


def compile_error(m, kind=CompileError):
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    return str(e.value)


# -- Einsum -------------------------------------------------------------------------------
EINSUM_CASES = [
    ("bij,bjk->bik", [(3, 2, 5), (3, 5, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("i,i", [(7,), (7,)]),
    ("ii", [(4, 4)]),                      # trace: implicit scalar output
    ("ii->i", [(4, 4)]),
    ("...ii->...i", [(2, 3, 5, 5)]),
    ("ij,jk", [(3, 4), (4, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (2, 5, 4, 2)]),   # the ellipsis broadcasts
    ("Ab,bA->A", [(3, 4), (4, 3)]),        # upper case precedes lower case
    ("ba,ca", [(2, 3), (4, 3)]),            # implicit output sorted: b, c
    ("ij,jk,kl->li", [(2, 3), (3, 4), (4, 5)]),
    ("i,j->ij", [(3,), (4,)]),
    ("...->...", [(2, 3)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES, ids=[e for e, _ in EINSUM_CASES])
def test_einsum(eq, shapes, workdir):
    names = [f"x{i}" for i in range(len(shapes))]
    feeds = {n: rng.standard_normal(s).astype(F) for n, s in zip(names, shapes)}
    want = np.einsum(eq, *feeds.values())
    m = model([helper.make_node("Einsum", names, ["y"], equation=eq)], feeds, {"y": np.asarray(want)}, opset=12)
    check_against_onnxruntime(m, feeds, T, workdir)


MATMUL_CASES = [("bhqd,bhkd->bhqk", [(2, 3, 5, 8), (2, 3, 6, 8)], True), ("ik,kj->ji", [(5, 7), (7, 9)], True),
                ("bi,bij->bj", [(3, 4), (3, 4, 6)], True), ("i,i->", [(9,), (9,)], True),
                ("...ij,...jk->...ik", [(2, 1, 3, 4), (2, 5, 4, 2)], True), ("ij,ij->i", [(3, 4), (3, 4)], True),
                ("ii,ij->j", [(4, 4), (4, 3)], False), ("ij,kl->il", [(2, 3), (4, 5)], False)]


@pytest.mark.parametrize("eq,shapes,tiled", MATMUL_CASES, ids=[e for e, _, _ in MATMUL_CASES])
def test_einsum_as_matrix_product(eq, shapes, tiled, workdir):
    """Two float32 operands without diagonals or one-sided sums: MatMul's register tiles."""
    feeds = {f"x{i}": rng.standard_normal(s).astype(F) for i, s in enumerate(shapes)}
    want = np.einsum(eq, *feeds.values())
    m = model([helper.make_node("Einsum", list(feeds), ["y"], equation=eq, name="es")], feeds,
              {"y": np.asarray(want)}, opset=12)
    res, _ = check_against_onnxruntime(m, feeds, T, workdir)
    assert ("es" in res.manifest["schedules"]) == tiled


def test_einsum_integers_and_spaces(workdir):
    a = rng.integers(-50, 50, (2, 3, 4)).astype(np.int32)
    b = rng.integers(-50, 50, (2, 4, 3)).astype(np.int32)
    m = model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij, bjk -> bik")], {"a": a, "b": b},
              {"y": np.einsum("bij,bjk->bik", a, b)}, opset=12)
    check_against_onnxruntime(m, {"a": a, "b": b}, T, workdir)


def test_einsum_scalar_float64(workdir):
    x = np.array(2.5)
    m = model([helper.make_node("Einsum", ["x"], ["y"], equation="->")], {"x": x}, {"y": x}, opset=12)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


@pytest.mark.parametrize("eq,why", [("ij,jk->ik", "2 input terms for 1 inputs"), ("ijk->i", "does not fit"),
                                    ("ij->k", "not in any input term"), ("ij->ii", "repeats a label"),
                                    ("i1->i", "bad character")])
def test_einsum_bad_equations_are_invalid(eq, why):
    x = np.zeros((3, 3), F)
    m = model([helper.make_node("Einsum", ["x"], ["y"], equation=eq, name="es")], {"x": x}, {"y": np.zeros(3, F)},
              opset=12)
    msg = compile_error(m)
    assert "es" in msg and "Einsum" in msg and why in msg


def test_einsum_mismatched_sizes_are_invalid():
    a, b = np.zeros((2, 3), F), np.zeros((4, 2), F)
    m = model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="ij,jk->ik", name="es")], {"a": a, "b": b},
              {"y": np.zeros((2, 2), F)}, opset=12)
    msg = compile_error(m)
    assert "es" in msg and "label 'j'" in msg
    a, b = np.zeros((2, 3, 4), F), np.zeros((3, 4), F)  # the spec: one ellipsis width for all terms
    m = model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="...i,...i->...", name="es")],
              {"a": a, "b": b}, {"y": np.zeros((2, 3), F)}, opset=12)
    msg = compile_error(m)
    assert "es" in msg and "ellipsis stands for different numbers" in msg


# -- Det ----------------------------------------------------------------------------------
def test_det(workdir):
    x = rng.standard_normal((3, 2, 5, 5)).astype(F)
    x[0, 0] = 0
    x[0, 0, :, 0] = rng.standard_normal(5)       # needs a pivot search
    x[0, 1, 2] = x[0, 1, 3]                      # singular: 0
    x[1, 0] = np.eye(5)[[1, 0, 2, 4, 3]]         # permutation: +1
    m = model([helper.make_node("Det", ["x"], ["y"])], {"x": x}, {"y": np.zeros((3, 2), F)}, opset=11)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_det_2d_float64_against_numpy(workdir):
    x = rng.standard_normal((4, 4))
    m = model([helper.make_node("Det", ["x"], ["y"])], {"x": x}, {"y": np.array(0.0)}, opset=11)
    got, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    assert got[0].shape == () and abs(got[0] - np.linalg.det(x)) < 1e-12


def test_det_non_square_is_invalid():
    x = np.zeros((2, 3), F)
    m = model([helper.make_node("Det", ["x"], ["y"], name="dt")], {"x": x}, {"y": np.zeros((), F)}, opset=11)
    msg = compile_error(m, InvalidModelError)
    assert "dt" in msg and "square" in msg


# -- Col2Im, CenterCropPad --------------------------------------------------------------------
COL2IM_CASES = [
    ([5, 5], [1, 5], {}),
    ([5, 5], [2, 2], dict(strides=[2, 2])),
    ([6, 6], [2, 3], dict(dilations=[2, 1], pads=[1, 0, 0, 1])),
    ([3, 4, 5], [1, 2, 3], dict(pads=[0, 1, 1, 1, 0, 2])),
]


@pytest.mark.parametrize("image,block,attrs", COL2IM_CASES, ids=range(len(COL2IM_CASES)))
def test_col2im(image, block, attrs, workdir):
    n = len(image)
    st, dl = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    pd = attrs.get("pads", [0] * 2 * n)
    counts = [(image[i] + pd[i] + pd[i + n] - dl[i] * (block[i] - 1) - 1) // st[i] + 1 for i in range(n)]
    x = rng.standard_normal((2, 3 * int(np.prod(block)), int(np.prod(counts)))).astype(F)
    m = model([helper.make_node("Col2Im", ["x", "img", "blk"], ["y"], **attrs)], {"x": x},
              {"y": np.zeros([2, 3] + image, F)}, {"img": I(*image), "blk": I(*block)})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_col2im_inconsistent_shapes_are_invalid():
    x = np.zeros((1, 4, 7), F)
    m = model([helper.make_node("Col2Im", ["x", "img", "blk"], ["y"], name="c2")], {"x": x},
              {"y": np.zeros((1, 1, 4, 4), F)}, {"img": I(4, 4), "blk": I(2, 2)})
    msg = compile_error(m, InvalidModelError)
    assert "c2" in msg and "Col2Im" in msg and "block positions" in msg


CROP_CASES = [((20, 10, 3), (10, 7, 3), None), ((10, 7, 3), (20, 10, 3), None), ((20, 8, 3), (10, 10, 3), None),
              ((3, 20, 8), (10, 9), [1, 2]), ((20, 8, 3), (11, 10), [-3, -2])]


@pytest.mark.parametrize("shape,size,axes", CROP_CASES, ids=range(len(CROP_CASES)))
def test_center_crop_pad(shape, size, axes, workdir):
    x = rng.standard_normal(shape).astype(F)
    attrs = {} if axes is None else {"axes": axes}
    m = model([helper.make_node("CenterCropPad", ["x", "s"], ["y"], **attrs)], {"x": x}, {"y": x},
              {"s": I(*size)})
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]  # output shape
    m = model([helper.make_node("CenterCropPad", ["x", "s"], ["y"], **attrs)], {"x": x}, {"y": want},
              {"s": I(*size)})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_runtime_crop_size_without_a_declared_output_shape_is_refused():
    """(With the output's shape declared the size is taken from it: tests/test_specialize.py.)"""
    x = np.zeros((4, 4), F)
    m = model([helper.make_node("CenterCropPad", ["x", "s"], ["y"], name="cc")], {"x": x, "s": I(2, 2)},
              {"y": np.zeros((2, 2), F)})
    msg = compile_error(without_output_shapes(m), UnsupportedError)
    assert "cc" in msg and "compile-time constant" in msg


# -- ReverseSequence, Compress ----------------------------------------------------------------
@pytest.mark.parametrize("batch_axis,time_axis", [(0, 1), (1, 0)])
def test_reverse_sequence(batch_axis, time_axis, workdir):
    x = rng.standard_normal((4, 5, 3)).astype(F)
    lens = I(1, 3, 4, 2, 4)[:x.shape[batch_axis]]
    m = model([helper.make_node("ReverseSequence", ["x", "n"], ["y"], batch_axis=batch_axis, time_axis=time_axis)],
              {"x": x, "n": lens}, {"y": x}, opset=10)
    check_against_onnxruntime(m, {"x": x, "n": lens}, T, workdir)


def test_reverse_sequence_out_of_range_lengths_are_clamped(workdir):
    """Lengths beyond the time axis reverse all of it, negative ones none (never a read outside)."""
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    lens = I(9, -5, 0)
    m = model([helper.make_node("ReverseSequence", ["x", "n"], ["y"], batch_axis=0, time_axis=1)],
              {"x": x, "n": lens}, {"y": x}, opset=10)
    got, _, _ = compile_and_run(m, T, {"x": x, "n": lens}, workdir)
    np.testing.assert_array_equal(got[0], np.stack([x[0, ::-1], x[1], x[2]]))


def test_reverse_sequence_bad_axes_and_lengths_are_invalid():
    x = np.zeros((3, 4, 2), F)
    m = model([helper.make_node("ReverseSequence", ["x", "n"], ["y"], batch_axis=0, time_axis=2, name="rs")],
              {"x": x, "n": I(1, 2, 3)}, {"y": x}, opset=10)
    msg = compile_error(m, InvalidModelError)
    assert "rs" in msg and "ReverseSequence" in msg and "time_axis 2" in msg
    m = model([helper.make_node("ReverseSequence", ["x", "n"], ["y"], batch_axis=0, time_axis=1, name="rs")],
              {"x": x, "n": I(1, 2)}, {"y": x}, opset=10)
    assert "sequence_lens must be int64 of shape [3]" in compile_error(m)


@pytest.mark.parametrize("cond,axis", [([0, 1, 1], 0), ([1, 0, 1, 1], -1), ([1, 0, 1, 0, 1], None),
                                       ([0, 1, 0, 0, 1, 1], None), ([1, 1], 1)])
def test_compress(cond, axis, workdir):
    x = rng.standard_normal((3, 4)).astype(F)
    c = np.array(cond, bool)
    attrs = {} if axis is None else {"axis": axis}
    want = np.compress(c, x, axis=axis)
    m = model([helper.make_node("Compress", ["x", "c"], ["y"], **attrs)], {"x": x}, {"y": want}, {"c": c}, opset=11)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_runtime_compress_condition_is_refused():
    x, c = np.zeros((3,), F), np.ones(3, bool)
    m = model([helper.make_node("Compress", ["x", "c"], ["y"], name="cp")], {"x": x, "c": c}, {"y": x}, opset=11)
    msg = compile_error(m, UnsupportedError)
    assert "cp" in msg and "compile-time constant" in msg and "output shape" in msg


# -- windows, SwiGLU, SpaceToDepth CRD, Shape ---------------------------------------------------
@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic,dtype", [(1, onnx.TensorProto.FLOAT), (0, onnx.TensorProto.DOUBLE)])
def test_windows(op, periodic, dtype, workdir):
    x = rng.standard_normal(10).astype(F)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [helper.make_node(op, ["n"], ["w"], periodic=periodic, output_datatype=dtype),
             helper.make_node("Cast", ["w"], ["wf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "wf"], ["y"])]  # a window read by a computed node
    m = make_model(nodes, {"x": (F, (10,))}, {"y": (F, (10,)), "w": (np_dtype, (10,))}, {"n": np.array(10, np.int64)},
                   opset=17)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_swiglu(alpha, workdir):
    a, b = rng.standard_normal((2, 3, 8)).astype(F) * 4, rng.standard_normal((2, 3, 8)).astype(F)
    attrs = {} if alpha is None else {"alpha": alpha}
    m = model([helper.make_node("SwiGLU", ["a", "b"], ["y"], **attrs)], {"a": a, "b": b}, {"y": a}, opset=28)
    reference_check(m, {"a": a, "b": b}, workdir)


def test_swiglu_float16(workdir):
    """float16 in and out: computed in float32 (frontend/float16.py), rounded once at the end."""
    a = rng.standard_normal((2, 6)).astype(np.float16)
    b = rng.standard_normal((2, 6)).astype(np.float16)
    m = model([helper.make_node("SwiGLU", ["a", "b"], ["y"], name="sg")], {"a": a, "b": b}, {"y": a}, opset=28)
    reference_check(m, {"a": a, "b": b}, workdir)


def test_space_to_depth_crd(workdir):
    x = rng.standard_normal((2, 3, 4, 6)).astype(F)
    for mode in ("CRD", "DCR"):
        m = model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode=mode)], {"x": x},
                  {"y": np.zeros((2, 12, 2, 3), F)}, opset=28)
        reference_check(m, {"x": x}, workdir)


def test_space_to_depth_unknown_mode_is_invalid():
    x = np.zeros((1, 1, 4, 4), F)
    m = model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="XYZ", name="sd")], {"x": x},
              {"y": np.zeros((1, 4, 2, 2), F)}, opset=28)
    msg = compile_error(m)
    assert "sd" in msg and "SpaceToDepth" in msg and "XYZ" in msg


def test_shape_slice_that_is_empty(workdir):
    x = np.zeros((3, 4, 5), F)
    m = model([helper.make_node("Shape", ["x"], ["y"], start=2, end=1)], {"x": x}, {"y": np.zeros(0, np.int64)},
              opset=21)
    got, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    assert got[0].shape == (0,) and got[0].dtype == np.int64


# -- every target, and the C backend ------------------------------------------------------------
def mixed_model():
    x = rng.standard_normal((2, 4, 4)).astype(F)
    n = I(3, 1)
    nodes = [
        helper.make_node("ReverseSequence", ["x", "n"], ["r"], batch_axis=0, time_axis=1),
        helper.make_node("Einsum", ["r", "x"], ["e0"], equation="bij,bkj->bik"),  # register tiles
        helper.make_node("Einsum", ["e0", "w"], ["e"], equation="bij,jk->bik"),   # loops
        helper.make_node("Det", ["e"], ["d"]),
        helper.make_node("Col2Im", ["e", "img", "blk"], ["c"]),
        helper.make_node("CenterCropPad", ["c", "cs"], ["p"], axes=[2, 3]),
        helper.make_node("Compress", ["p", "cond"], ["q"], axis=3),
        helper.make_node("HannWindow", ["ws"], ["hw"]),
        helper.make_node("Mul", ["q", "hw"], ["y"]),
    ]
    inits = {"w": rng.standard_normal((4, 4)).astype(F), "img": I(3, 3), "blk": I(2, 2), "cs": I(2, 5),
             "cond": np.array([1, 0, 1, 1, 0], bool), "ws": np.array(3, np.int64)}
    m = make_model(nodes, {"x": (F, x.shape), "n": (np.int64, (2,))}, {"y": (F, (2, 1, 2, 3)), "d": (F, (2,))},
                   inits, opset=18)
    return m, {"x": x, "n": n}


def test_mixed_model_on_target(target, workdir):
    m, feeds = mixed_model()
    check_against_onnxruntime(m, feeds, target, workdir)


def test_mixed_model_through_c(workdir):
    from helpers import onnxruntime_outputs
    m, feeds = mixed_model()
    got, _ = run_c_path(m, T, feeds, workdir)
    for g, w in zip(got, onnxruntime_outputs(m, feeds)):
        assert_close(g, w)
