"""Reverse-mode rules of the transformer's ops and their friends (Erf, Gelu, Pow,
LayerNormalization, Split, Slice, Pad, MaxPool, and those forward mode already had: the other
unary ops, Where, Expand, Tile, Gather, DepthToSpace/SpaceToDepth): each pullback against central finite
differences of the float64 reference (tests/autodiff_helpers.check_vjp), MaxPool's ties
against a float64 numpy loop (first maximum in window order, as onnxruntime and PyTorch),
the bundled transformer's pullback against finite differences and its compiled
primal/pullback (x86-64-v3; saved and recomputed residuals) against the float64 pullback,
a model chaining every rule compiled in-process and through the C path on cortex-a76 under
QEMU, and the refusals."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import helper

from autodiff_helpers import check_vjp, onnx_model, pullback64
from helpers import ROOT
from test_autodiff import node, w, with_consts
from toolchain.errors import UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.passes.autodiff import reverse

# (id, nodes, inputs, initializers, positive inputs, opset)
RULES = [
    ("erf", [node("Erf", ["a"])], {"a": (3, 5)}, {}, False, 17),
    ("gelu", [node("Gelu", ["a"])], {"a": (3, 5)}, {}, False, 20),
    ("gelu-tanh", [node("Gelu", ["a"], approximate="tanh")], {"a": (3, 5)}, {}, False, 20),
    ("erf-gelu-chain", [node("Mul", ["a", "half"], ["h"]), node("Erf", ["h"], ["e"]), node("Mul", ["e", "a"])],
     {"a": (2, 4)}, {}, False, 17),
    ("pow-constant", [node("Pow", ["a", "two"])], {"a": (3, 5)}, {}, False, 17),
    ("pow-int-exponent", [node("Pow", ["a", "three"])], {"a": (3, 5)}, {}, False, 17),
    ("pow-both-broadcast", [node("Pow", ["a", "b"])], {"a": (3, 5), "b": (5,)}, {}, True, 17),
    ("layernorm", [node("LayerNormalization", ["a", "s", "b"], axis=-1)], {"a": (2, 3, 5)},
     {"s": w(5), "b": w(5)}, False, 17),
    ("layernorm-affine-inputs", [node("LayerNormalization", ["a", "s", "b"], axis=1)],
     {"a": (2, 3, 4), "s": (3, 4), "b": (4,)}, {}, False, 17),
    ("layernorm-no-bias", [node("LayerNormalization", ["a", "s"], axis=0)], {"a": (3, 4)}, {"s": w(4)}, False, 17),
    ("split", [node("Split", ["a", "sizes"], ["p", "q"], axis=1), node("MatMul", ["p", "q"])], {"a": (2, 6)}, {},
     False, 17),
    ("split-one-part-used", [node("Split", ["a"], ["p", "q", "r"], axis=0), node("Tanh", ["q"])], {"a": (6, 2)}, {},
     False, 17),
    ("slice-steps", [node("Slice", ["a", "starts", "ends", "slice_axes", "steps"])], {"a": (4, 6)}, {}, False, 17),
    ("slice-step3-negative-start", [node("Slice", ["a", "starts2", "ends2", "axes1", "steps2"])], {"a": (2, 10)}, {},
     False, 17),
    ("slice-reverse", [node("Slice", ["a", "rstart", "rend", "axes1", "rstep"])], {"a": (2, 5)}, {}, False, 17),
    ("pad-constant", [node("Pad", ["a", "pads", "value"])], {"a": (2, 3)}, {}, False, 17),
    ("pad-crop", [node("Pad", ["a", "croppads"])], {"a": (4, 5)}, {}, False, 17),
    ("pad-reflect", [node("Pad", ["a", "pads2"], mode="reflect")], {"a": (3, 4)}, {}, False, 17),
    ("pad-edge", [node("Pad", ["a", "pads2"], mode="edge")], {"a": (3, 4)}, {}, False, 17),
    ("pad-edge-wide", [node("Pad", ["a", "widepads"], mode="edge")], {"a": (2, 3)}, {}, False, 17),
    ("pad-wrap", [node("Pad", ["a", "pads2"], mode="wrap")], {"a": (3, 4)}, {}, False, 19),
    ("maxpool", [node("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     {"a": (2, 3, 7, 6)}, {}, False, 17),
    ("maxpool-overlap", [node("MaxPool", ["a"], kernel_shape=[2, 2], strides=[1, 1])], {"a": (1, 2, 4, 5)}, {},
     False, 17),
    ("maxpool-dilated-ceil", [node("MaxPool", ["a"], kernel_shape=[2, 2], strides=[2, 1], dilations=[1, 2],
                                   ceil_mode=1)], {"a": (1, 2, 5, 6)}, {}, False, 17),
    ("maxpool-1d", [node("MaxPool", ["a"], kernel_shape=[2], strides=[2])], {"a": (2, 3, 8)}, {}, False, 17),
    *[(op.lower(), [node(op, ["a"])], {"a": (3, 5)}, {}, op == "Reciprocal", 17)
      for op in ("Abs", "Reciprocal", "Softplus", "Sin", "Cos")],
    ("leakyrelu", [node("LeakyRelu", ["a"], alpha=0.2)], {"a": (3, 5)}, {}, False, 17),
    ("leakyrelu-negative-slope", [node("LeakyRelu", ["a"], alpha=-0.3)], {"a": (3, 5)}, {}, False, 17),
    ("clip-min-only", [node("Clip", ["a", "lo"])], {"a": (3, 5)}, {}, False, 17),
    ("where", [node("Where", ["mask", "a", "b"])], {"a": (2, 3), "b": (3,)}, {}, False, 17),
    ("where-one-branch", [node("Where", ["mask", "k", "a"])], {"a": (3,)}, {"k": w(2, 3)}, False, 17),
    ("expand", [node("Expand", ["a", "shape3"])], {"a": (3, 1)}, {}, False, 17),
    ("tile", [node("Tile", ["a", "reps"])], {"a": (2, 3)}, {}, False, 17),
    ("gather-repeats-negative", [node("Gather", ["a", "idx"], axis=1)], {"a": (2, 4)}, {}, False, 17),
    ("gather-axis0-embedding", [node("Gather", ["E", "idx3"], ["g"]), node("Tanh", ["g"])], {"E": (5, 3)}, {},
     False, 17),
    ("gather-scalar-index", [node("Gather", ["a", "one"], axis=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("depthtospace", [node("DepthToSpace", ["a"], blocksize=2)], {"a": (1, 8, 2, 3)}, {}, False, 17),
    ("depthtospace-crd", [node("DepthToSpace", ["a"], blocksize=2, mode="CRD")], {"a": (1, 8, 2, 3)}, {}, False, 17),
    ("spacetodepth", [node("SpaceToDepth", ["a"], blocksize=2)], {"a": (1, 2, 4, 6)}, {}, False, 17),
    ("maxpool-with-indices", [node("MaxPool", ["a"], ["y", "i"], kernel_shape=[2, 2])], {"a": (1, 1, 4, 4)}, {},
     False, 17),
]
CONSTS = {"half": np.array(0.70710678, np.float32), "two": np.array(2.0, np.float32),
          "three": np.array(3, np.int64), "sizes": np.array([2, 4], np.int64),
          "starts": np.array([1, 5], np.int64), "ends": np.array([4, 0], np.int64),
          "slice_axes": np.array([0, 1], np.int64), "steps": np.array([2, -2], np.int64),
          "starts2": np.array([-9], np.int64), "ends2": np.array([100], np.int64), "axes1": np.array([1], np.int64),
          "steps2": np.array([3], np.int64), "rstart": np.array([-1], np.int64),
          "rend": np.array([-100], np.int64), "rstep": np.array([-1], np.int64),
          "pads": np.array([1, 0, 0, 2], np.int64), "value": np.array(1.5, np.float32),
          "croppads": np.array([-1, 2, 1, -2], np.int64), "pads2": np.array([2, 1, 1, 3], np.int64),
          "widepads": np.array([3, 0, 0, 5], np.int64), "mask": np.array([True, False, True]),
          "shape3": np.array([2, 3, 4], np.int64), "reps": np.array([2, 3], np.int64),
          "idx": np.array([[3, 0], [-1, 1], [0, 0]], np.int64), "idx3": np.array([[4, 1, 1], [0, 4, 2]], np.int32),
          "one": np.array(1, np.int64)}


def _model(case):
    _, nodes, inputs, inits, _, opset = case
    used = {i for n in nodes for i in n.input}
    made = [helper.make_node("Constant", [], [k], value=helper.make_tensor(
        k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.reshape(-1).tolist())) for k, v in CONSTS.items()
        if k in used]
    return onnx_model(with_consts(made + nodes), inputs, inits, opset=opset)


@pytest.mark.parametrize("case", RULES, ids=[c[0] for c in RULES])
def test_vjp_rule_matches_finite_differences(case):
    check_vjp(_model(case), positive=case[4])


def _maxpool_grad_first_max(x, ct, k, s):
    """float64 numpy: each window's cotangent onto its first maximum in row-major window order."""
    gx = np.zeros_like(x)
    n, c, h, wd = x.shape
    for b, ch, i, j in itertools.product(range(n), range(c), range(ct.shape[2]), range(ct.shape[3])):
        win = x[b, ch, i * s:i * s + k, j * s:j * s + k]
        r, q = np.unravel_index(int(np.argmax(win)), win.shape)  # argmax: the first maximum
        gx[b, ch, i * s + r, j * s + q] += ct[b, ch, i, j]
    return gx


def test_maxpool_ties_go_to_the_first_maximum():
    """Integer-valued inputs with many equal maxima (ReLU'd, so whole windows of 0 too): every
    tie is broken toward the first tap in window order, never split or doubled."""
    m = onnx_model([node("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2])], {"a": (1, 2, 7, 7)})
    rng = np.random.default_rng(5)
    x = np.maximum(rng.integers(-2, 3, (1, 2, 7, 7)), 0).astype(np.float64)
    prog, (y,), _, (ct,), (gx,) = pullback64(m, [x])
    assert prog.wrt_inputs == [0]
    np.testing.assert_array_equal(gx, _maxpool_grad_first_max(x, ct, 3, 2))
    # the same through the float32 compiled pullback
    from toolchain import compile_grad
    cg = compile_grad(m)
    _, res = cg.primal(x.astype(np.float32))
    (gx32,), _ = cg.pullback(res, ct.astype(np.float32))
    np.testing.assert_allclose(gx32, gx, rtol=1e-6, atol=1e-6)


def _transformer():
    return onnx.load(str(ROOT / "tests" / "models" / "transformer_encoder.onnx"))


def test_transformer_pullback_matches_finite_differences():
    """The bundled encoder layer (attention, Split, Softmax, Erf-GELU, two LayerNorms) with
    respect to its input and every parameter: two random directions through all at once."""
    prog = check_vjp(_transformer(), directions=2, joint=True)
    assert len(prog.params) >= 10 and prog.wrt_inputs == [0]


@pytest.mark.parametrize("wrt, residuals", [("all", "save"), ("params", "recompute")])
def test_transformer_compiled_primal_and_pullback_match_float64(wrt, residuals):
    """build(..., grad="reverse") of the transformer compiles (also with --wrt params
    --residuals recompute); its float32 primal and pullback (x86-64-v3, in-process) against
    the float64 pullback, with the arena poisoned between the two."""
    from toolchain import compile_grad
    m = _transformer()
    cg = compile_grad(m, wrt=wrt, residuals=residuals)
    assert cg.manifest["grad"]["residuals"]["mode"] == residuals
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(s).astype(np.float32) for _, _, s in cg.inputs]
    outs, res = cg.primal(*xs)
    prog, ys, _, cts, grads = pullback64(m, [x.astype(np.float64) for x in xs], cts_seed=1)
    for y, r in zip(outs, ys):
        np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-4)
    cg.arena[...] = 0xFF
    gin, gpar = cg.pullback(res, *[c.astype(np.float32) for c in cts])
    want = grads if wrt == "all" else grads[len(prog.wrt_inputs):]
    assert len(gin) == (len(prog.wrt_inputs) if wrt == "all" else 0) and len(gin) + len(gpar) == len(want)
    for got, w64 in zip(gin + gpar, want):
        np.testing.assert_allclose(got, w64, rtol=1e-3, atol=2e-4 * max(1.0, np.abs(w64).max()))


@pytest.mark.parametrize("nodes, outputs, match", [
    ([node("LayerNormalization", ["a", "s"], ["y", "mu"], axis=1), node("Add", ["y", "mu"], ["z"])], ("z",),
     r"node 'LayerNormalization_\d+' \(LayerNormalization\): no derivative rule through the Mean/InvStdDev"),
    ([node("Pad", ["a", "negpads"], mode="edge")], ("y",),
     r"\(Pad\): no derivative rule for edge padding with negative pads"),
])
def test_refusals_name_node_and_op(nodes, outputs, match):
    consts = {"s": np.ones(3, np.float32), "negpads": np.array([0, -1, 1, 0], np.int64)}
    used = {i for n in nodes for i in n.input}
    made = [helper.make_node("Constant", [], [k], value=helper.make_tensor(
        k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.reshape(-1).tolist())) for k, v in consts.items()
        if k in used]
    m = onnx_model(made + nodes, {"a": (2, 3)}, outputs=outputs)
    with pytest.raises(UnsupportedError, match=match):
        reverse(import_model(m))


def _mixed():
    """Every new rule in one small model, so the compiled pullback exercises their lowerings."""
    c = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "st": np.array([4], np.int64),
         "en": np.array([-100], np.int64), "ax": np.array([3], np.int64), "sp": np.array([-2], np.int64),
         "gi": np.array([[0, 3], [3, 9]], np.int64), "sizes": np.array([2, 4], np.int64),
         "reps": np.array([1, 1, 1, 1, 2], np.int64), "mask": np.array([True, False, False, True]),
         "two": np.array(2.0, np.float32)}
    consts = [helper.make_node("Constant", [], [k], value=helper.make_tensor(
        k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.reshape(-1).tolist())) for k, v in c.items()]
    nodes = [node("MaxPool", ["x"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),  # (1, 4, 3, 3)
             node("Pad", ["mp", "pads"], ["pd"], mode="reflect"),  # (1, 4, 5, 5)
             node("Slice", ["pd", "st", "en", "ax", "sp"], ["sl"]),  # (1, 4, 5, 3)
             node("DepthToSpace", ["sl"], ["ds"], blocksize=2),  # (1, 1, 10, 6)
             node("Gather", ["ds", "gi"], ["ga"], axis=2),  # (1, 1, 2, 2, 6)
             node("Split", ["ga", "sizes"], ["p", "q"], axis=4),
             node("Tile", ["p", "reps"], ["tp"]), node("Mul", ["tp", "q"], ["pq"]),
             node("Gelu", ["q"], ["gq"]), node("Erf", ["pq"], ["ep"]), node("Pow", ["gq", "two"], ["sq"]),
             node("Where", ["mask", "ep", "sq"], ["wh"]),
             node("LayerNormalization", ["wh", "s", "bb"], ["y"], axis=-1)]
    rng = np.random.default_rng(21)
    return onnx_model(consts + nodes, {"x": (1, 4, 6, 6)},
                      {"s": rng.standard_normal(4).astype(np.float32), "bb": rng.standard_normal(4).astype(np.float32)},
                      opset=20)


def test_mixed_model_pullback_finite_differences_and_compiled():
    """The float64 pullback against finite differences, then the compiled float32 primal and
    pullback (x86-64-v3) against it."""
    from toolchain import compile_grad
    m = _mixed()
    check_vjp(m, directions=2)
    cg = compile_grad(m)
    x = np.random.default_rng(4).standard_normal((1, 4, 6, 6)).astype(np.float32)
    outs, residuals = cg.primal(x)
    _, ys, _, cts, grads = pullback64(m, [x.astype(np.float64)])
    np.testing.assert_allclose(outs[0], ys[0], rtol=1e-4, atol=1e-4)
    cg.arena[...] = 0xFF
    gin, gpar = cg.pullback(residuals, *[ct.astype(np.float32) for ct in cts])
    assert len(gin) + len(gpar) == len(grads) == 3 and np.count_nonzero(grads[0]) > 0
    for got, want in zip(gin + gpar, grads):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_mixed_model_c_path_on_cortex_a76_under_qemu(tmp_path):
    """The same model through the portable C path (zig cc for cortex-a76, run under qemu-user):
    the -inf padding, strided and reversed slices and the scatter-add in C."""
    from autodiff_helpers import run_driver_on_a76
    from test_autodiff import _driver
    m = _mixed()
    got = {}

    def feeds(man):  # the input, then the output cotangent the float64 pullback used
        x = np.random.default_rng(6).standard_normal(man["inputs"][0]["shape"]).astype(np.float32)
        _, got["ys"], _, cts, got["grads"] = pullback64(m, [x.astype(np.float64)])
        return [x] + [c.astype(np.float32) for c in cts]

    _, flat = run_driver_on_a76(m, tmp_path, "c", "reverse", _driver, feeds)
    start = 0
    for want in list(got["ys"]) + list(got["grads"]):
        np.testing.assert_allclose(flat[start:start + want.size].reshape(want.shape), want, rtol=1e-3,
                                   atol=1e-4 * max(1.0, np.abs(want).max()))
        start += want.size
    assert start == flat.size
