"""Reverse-mode derivatives (passes/autodiff.py and each op's vjp rule): the pullback
against central finite differences of the float64 reference (tests/autodiff_helpers.py,
directional differences, RTOL 1e-6 of the summed magnitude), then the compiled
primal/pullback (float32, in-process and on cortex-a76 under QEMU) against that float64
pullback, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from autodiff_helpers import check_vjp, cnn, mlp, onnx_model, pullback64
from toolchain.errors import UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.passes.autodiff import reverse

R = np.random.default_rng(42)


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def w(*shape):
    return R.standard_normal(shape).astype(np.float32)


# (id, nodes, inputs, initializers, positive inputs, opset)
OPS = [
    ("gemm", [node("Gemm", ["a", "b", "c"])], {"a": (3, 4), "b": (4, 5), "c": (3, 5)}, {}, False, 17),
    ("gemm-trans-alpha-beta", [node("Gemm", ["a", "b", "c"], transA=1, transB=1, alpha=0.7, beta=1.3)],
     {"a": (4, 3), "b": (5, 4), "c": (5,)}, {}, False, 17),
    ("gemm-transA", [node("Gemm", ["a", "b"], transA=1)], {"a": (4, 3), "b": (4, 5)}, {}, False, 17),
    ("gemm-weights", [node("Gemm", ["a", "W", "B"], transB=1)], {"a": (2, 6)}, {"W": w(3, 6), "B": w(1, 3)},
     False, 17),
    ("matmul", [node("MatMul", ["a", "b"])], {"a": (2, 3, 4), "b": (4, 5)}, {}, False, 17),
    ("matmul-vec", [node("MatMul", ["a", "b"])], {"a": (4,), "b": (4, 3)}, {}, False, 17),
    ("matmul-batch-broadcast", [node("MatMul", ["a", "b"])], {"a": (2, 1, 3, 4), "b": (3, 4, 2)}, {}, False, 17),
    ("add-broadcast", [node("Add", ["a", "b"])], {"a": (2, 3, 4), "b": (3, 1)}, {}, False, 17),
    ("sub-broadcast", [node("Sub", ["a", "b"])], {"a": (1, 4), "b": (2, 3, 4)}, {}, False, 17),
    ("mul-broadcast", [node("Mul", ["a", "b"])], {"a": (2, 3, 4), "b": (4,)}, {}, False, 17),
    ("mul-self", [node("Mul", ["a", "a"])], {"a": (3, 4)}, {}, False, 17),
    ("div-broadcast", [node("Div", ["a", "b"])], {"a": (2, 3), "b": (2, 1)}, {}, True, 17),
    ("div-param", [node("Div", ["a", "s"])], {"a": (2, 3)}, {"s": np.array([1.5, 2.0, 0.8], np.float32)}, False, 17),
    *[(op.lower(), [node(op, ["a"])], {"a": (3, 5)}, {}, op in ("Log", "Sqrt"), 17)
      for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Neg")],
    ("softmax", [node("Softmax", ["a"], axis=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("logsoftmax", [node("LogSoftmax", ["a"])], {"a": (3, 5)}, {}, False, 17),
    ("softmax-opset11", [node("Softmax", ["a"], axis=1)], {"a": (2, 3, 4)}, {}, False, 11),
    ("reshape", [node("Reshape", ["a", "shape"])], {"a": (2, 3, 4)}, {}, False, 17),
    ("flatten", [node("Flatten", ["a"], axis=2)], {"a": (2, 3, 4)}, {}, False, 17),
    ("squeeze-unsqueeze", [node("Unsqueeze", ["a", "axes"], ["u"]), node("Tanh", ["u"], ["t"]),
                           node("Squeeze", ["t", "axes"])], {"a": (2, 3)}, {}, False, 17),
    ("transpose", [node("Transpose", ["a"], perm=[1, 2, 0])], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducesum", [node("ReduceSum", ["a", "axes"], keepdims=0)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducemean", [node("ReduceMean", ["a"], axes=[0, 2], keepdims=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducemean-all", [node("ReduceMean", ["a"], keepdims=0)], {"a": (3, 4)}, {}, False, 17),
    ("reducemax", [node("ReduceMax", ["a"], axes=[0, 2], keepdims=0)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducemax-keepdims", [node("ReduceMax", ["a", "axes"], keepdims=1)], {"a": (2, 3, 4)}, {}, False, 18),
    ("reducemax-all", [node("ReduceMax", ["a"], keepdims=0)], {"a": (3, 4)}, {}, False, 17),
    ("reducemin", [node("ReduceMin", ["a"], axes=[1], keepdims=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducemin-all", [node("ReduceMin", ["a"], keepdims=0)], {"a": (3, 4)}, {}, False, 17),
    ("reducel2", [node("ReduceL2", ["a"], axes=[1], keepdims=0)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducesumsquare", [node("ReduceSumSquare", ["a"], axes=[0, 2], keepdims=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducelogsumexp", [node("ReduceLogSumExp", ["a"], axes=[2], keepdims=0)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reducel1", [node("ReduceL1", ["a"], axes=[0], keepdims=1)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reduceprod", [node("ReduceProd", ["a"], axes=[1], keepdims=0)], {"a": (2, 3, 4)}, {}, False, 17),
    ("reduceprod-all-keepdims", [node("ReduceProd", ["a"], keepdims=1)], {"a": (2, 3)}, {}, False, 17),
    ("reducelogsum", [node("ReduceLogSum", ["a"], axes=[0, 2], keepdims=0)], {"a": (2, 3, 4)}, {}, True, 17),
    ("reducelogsum-keepdims", [node("ReduceLogSum", ["a", "axes"], keepdims=1)], {"a": (2, 3, 4)}, {}, True, 18),
    ("max-3-broadcast", [node("Max", ["a", "b", "c"])], {"a": (2, 3, 4), "b": (3, 1), "c": (4,)}, {}, False, 17),
    ("min-2", [node("Min", ["a", "b"])], {"a": (3, 4), "b": (3, 4)}, {}, False, 17),
    ("globalaveragepool", [node("GlobalAveragePool", ["a"])], {"a": (2, 3, 4, 5)}, {}, False, 17),
    ("concat", [node("Concat", ["a", "b", "a"], axis=1)], {"a": (2, 3), "b": (2, 4)}, {}, False, 17),
    ("conv", [node("Conv", ["x", "W", "B"], pads=[1, 1, 1, 1])], {"x": (2, 3, 5, 5)},
     {"W": w(4, 3, 3, 3), "B": w(4)}, False, 17),
    ("conv-stride2", [node("Conv", ["x", "W"], strides=[2, 2], pads=[1, 0, 1, 1])], {"x": (1, 2, 7, 6)},
     {"W": w(3, 2, 3, 2)}, False, 17),
    ("conv-dilation", [node("Conv", ["x", "w"], dilations=[2, 1], pads=[2, 1, 2, 1])],
     {"x": (1, 2, 6, 5), "w": (2, 2, 3, 3)}, {}, False, 17),
    ("conv1d", [node("Conv", ["x", "W"], strides=[2])], {"x": (2, 2, 9)}, {"W": w(3, 2, 3)}, False, 17),
    ("conv-unreached-rows", [node("Conv", ["x", "W"], strides=[2, 3])], {"x": (2, 2, 8, 8)}, {"W": w(3, 2, 3, 1)},
     False, 17),
    ("conv-grouped-unreached-rows", [node("Conv", ["x", "w"], group=2, strides=[2, 2])], {"x": (1, 2, 6, 6),
                                                                                         "w": (2, 1, 1, 1)}, {}, False, 17),
    ("conv-grouped", [node("Conv", ["x", "W", "B"], group=2, strides=[2, 1], pads=[1, 1, 1, 1])],
     {"x": (2, 4, 5, 5)}, {"W": w(4, 2, 3, 3), "B": w(4)}, False, 17),
    ("conv-depthwise", [node("Conv", ["x", "W"], group=3, pads=[1, 1, 1, 1])], {"x": (2, 3, 5, 4)},
     {"W": w(3, 1, 3, 3)}, False, 17),
    ("conv-depthwise-multiplier", [node("Conv", ["x", "w"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": (1, 2, 6, 6), "w": (4, 1, 3, 3)}, {}, False, 17),
    ("averagepool", [node("AveragePool", ["a"], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])],
     {"a": (2, 3, 5, 4)}, {}, False, 17),
    ("averagepool-include-pad", [node("AveragePool", ["a"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                      count_include_pad=1)], {"a": (1, 2, 4, 6)}, {}, False, 17),
    ("averagepool-tiles", [node("AveragePool", ["a"], kernel_shape=[2, 3], strides=[2, 3])], {"a": (1, 2, 5, 7)},
     {}, False, 17),
    ("averagepool-tiles-exact", [node("AveragePool", ["a"], kernel_shape=[2, 2], strides=[2, 2])],
     {"a": (2, 3, 4, 6)}, {}, False, 17),
    ("clip", [node("Clip", ["a", "lo", "hi"])], {"a": (3, 5)}, {}, False, 17),
    ("batchnorm", [node("BatchNormalization", ["x", "s", "b", "m", "v"])], {"x": (2, 3, 4)},
     {"s": w(3), "b": w(3), "m": w(3), "v": np.array([0.5, 1.0, 2.0], np.float32)}, False, 17),
    ("softmax-cross-entropy", [node("SoftmaxCrossEntropyLoss", ["a", "labels", "cw"], ignore_index=-1)],
     {"a": (3, 4, 2)}, {}, False, 17),
    # depthwise weight gradients as one Conv with dy as its kernel (ops/conv_grad.py): strides,
    # dilations, asymmetric pads, batch 2 (the batch folded into the channels), a bias
    ("conv-depthwise-strided", [node("Conv", ["x", "W", "B"], group=4, strides=[2, 2], dilations=[1, 2],
                                     pads=[1, 2, 0, 1])], {"x": (2, 4, 7, 9)}, {"W": w(4, 1, 3, 3), "B": w(4)},
     False, 17),
    ("conv-depthwise-unreached-rows", [node("Conv", ["x", "W"], group=3, strides=[2, 2])], {"x": (1, 3, 8, 8)},
     {"W": w(3, 1, 3, 3)}, False, 17),  # the last input row and column reach no window
    ("conv-depthwise-1x7-batch2", [node("Conv", ["x", "w"], group=2, pads=[0, 3, 0, 3])],
     {"x": (2, 2, 3, 9), "w": (2, 1, 1, 7)}, {}, False, 17),  # 7 columns widened to 8
    ("conv-depthwise-5x5-dilated", [node("Conv", ["x", "W"], group=2, dilations=[2, 2], pads=[3, 4, 4, 3])],
     {"x": (1, 2, 6, 7)}, {"W": w(2, 1, 5, 5)}, False, 17),  # 5 columns: not widened
    # depthwise weight gradients over maps of more than MAX_UNROLLED_TAPS positions (the
    # "conv-taps-reduce" tile, vectors along the cotangent's columns, a tail of 13 % 4):
    # stride 1, stride 2 with asymmetric pads and a batch of 2, dilation 2
    ("conv-depthwise-large-map", [node("Conv", ["x", "W", "B"], group=2, pads=[1, 1, 1, 1])],
     {"x": (1, 2, 14, 13)}, {"W": w(2, 1, 3, 3), "B": w(2)}, False, 17),
    ("conv-depthwise-large-map-stride2-batch2", [node("Conv", ["x", "W"], group=3, strides=[2, 2],
                                                      pads=[1, 0, 0, 1])],
     {"x": (2, 3, 26, 25)}, {"W": w(3, 1, 3, 3)}, False, 17),
    ("conv-depthwise-large-map-dilated", [node("Conv", ["x", "w"], group=2, dilations=[2, 2], pads=[2, 2, 2, 2])],
     {"x": (1, 2, 16, 16), "w": (2, 1, 3, 3)}, {}, False, 17),
    # stride 2, pads 1 (MobileNet's): columns 0 and 1 of dW from one load of 8 (even, odd
    # lanes), the first chunk over the padding and the last one partial read per column
    ("conv-depthwise-large-map-stride2-pads", [node("Conv", ["x", "W"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": (1, 2, 12, 60)}, {"W": w(2, 1, 3, 3)}, False, 17),
    # ungrouped, fewer input channels than lanes (a stem): dW as one Conv over the input's
    # channels as a batch (conv_grad.py few_channel_weight_grad), stride 2 and stride 1
    ("conv-stem-large-map-stride2", [node("Conv", ["x", "W", "B"], strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": (1, 3, 30, 34)}, {"W": w(4, 3, 3, 3), "B": w(4)}, False, 17),
    ("conv-stem-large-map", [node("Conv", ["x", "W"], pads=[1, 0, 0, 1])], {"x": (1, 2, 14, 13)},
     {"W": w(3, 2, 3, 2)}, False, 17),
    # a pointwise conv over a map of fewer than 16 pixels: dx as a transA Gemm (conv_grad.py)
    ("conv-pointwise-small-map", [node("Conv", ["x", "W", "B"])], {"x": (1, 5, 3, 3)},
     {"W": w(4, 5, 1, 1), "B": w(4)}, False, 17),
]
CONSTS = {"shape": np.array([3, 8], np.int64), "axes": np.array([1], np.int64),
          "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32),
          "labels": np.array([[0, 3], [-1, 1], [2, 2]], np.int64), "cw": np.array([0.5, 1.0, 2.0, 1.5], np.float32)}


def with_consts(nodes):
    """Shape operands as Constant nodes (not initializers: they are not parameters)."""
    used = {i for n in nodes for i in n.input}
    return [helper.make_node("Constant", [], [k], value=helper.make_tensor(k, 7 if v.dtype == np.int64 else 1,
                                                                          v.shape, v.reshape(-1)))
            for k, v in CONSTS.items() if k in used] + nodes


@pytest.mark.parametrize("case", OPS, ids=[c[0] for c in OPS])
def test_vjp_matches_finite_differences(case):
    _, nodes, inputs, inits, positive, opset = case
    check_vjp(onnx_model(with_consts(nodes), inputs, inits, opset=opset), positive=positive)


def _weights(seed):
    rng = np.random.default_rng(seed)  # fixed per model, whatever else drew from R
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def autoencoder():
    import onnx
    from helpers import ROOT
    return onnx.load(str(ROOT / "tests" / "models" / "fc_autoencoder.onnx"))


def extremes(seed: int = 13):
    """Gemm -> the new rules' ops: ReduceMax/Min/L2/LogSumExp/SumSquare/L1 and a variadic
    broadcasting Max and Min (random weights: no ties)."""
    rng = np.random.default_rng(seed)
    half = helper.make_node("Constant", [], ["half"], value=helper.make_tensor("half", 1, [], [0.5]))
    nodes = [half, node("Gemm", ["x", "W", "B"], ["h"], transB=1),  # (3, 5)
             node("ReduceMax", ["h"], ["mx"], axes=[1], keepdims=1),
             node("ReduceMin", ["h"], ["mn"], axes=[0], keepdims=1),
             node("ReduceL2", ["h"], ["l2"], axes=[1], keepdims=1),
             node("ReduceLogSumExp", ["h"], ["lse"], axes=[1], keepdims=1),
             node("ReduceSumSquare", ["h"], ["ss"], axes=[0], keepdims=1),
             node("ReduceL1", ["h"], ["l1"], axes=[1], keepdims=0),
             node("Sub", ["lse", "l2"], ["d"]), node("Mul", ["mn", "half"], ["mh"]),
             node("Max", ["h", "d", "mh"], ["p"]), node("Min", ["p", "ss"], ["q"]),
             node("Sub", ["q", "mx"], ["r"]), node("Unsqueeze", ["l1", "one"], ["l1k"]), node("Mul", ["r", "l1k"])]
    one = helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", 7, [1], [1]))
    return onnx_model([one] + nodes, {"x": (3, 6)}, {"W": rng.standard_normal((5, 6)).astype(np.float32),
                                                      "B": rng.standard_normal(5).astype(np.float32)})


@pytest.mark.parametrize("make", [mlp, cnn, autoencoder, extremes])
def test_model_gradients_match_finite_differences(make):
    prog = check_vjp(make(), directions=2)
    assert prog.params  # every float initializer is differentiated


def _real(path):
    import onnx
    from helpers import ROOT
    return lambda: onnx.load(str(ROOT / path))


REAL = {"kws_dscnn": _real("models/kws_dscnn.onnx"), "resnet8": _real("tests/models/resnet8_cifar10.onnx"),
        "mobilenet_vww": _real("tests/models/mobilenet_v1_025_vww.onnx")}


@pytest.mark.parametrize("model", sorted(REAL))
def test_real_model_gradients_match_finite_differences(model):
    """Exported models nobody wrote for this (depthwise and strided convolutions, shortcuts,
    average pooling): two random directions through every input and parameter at once.
    Step 1e-7: with thousands of ReLU inputs a step of 1e-6 crosses a kink now and then (the
    discrepancy then shrinks in proportion to the step, as measured on kws_dscnn)."""
    prog = check_vjp(REAL[model](), directions=2, joint=True, eps=1e-7)
    assert prog.params


def _depthwise_weight_grad_convs(vector=None, n=1):
    """The pullback of a KWS-like depthwise Conv (8 channels, 3x3, pads 1, 25x5 maps) with
    respect to its weights: (its nodes' ops, the Conv nodes computing dW)."""
    m = onnx_model([node("Conv", ["x", "W"], group=8, pads=[1, 1, 1, 1])], {"x": (n, 8, 25, 5)},
                   {"W": np.ones((8, 1, 3, 3), np.float32)})
    prog = reverse(import_model(m), ["W"], wrt="params", vector=vector)
    ops = [nd.op for nd in prog.pullback.nodes]
    return ops, [nd for nd in prog.pullback.nodes if nd.op == "Conv"]


def test_depthwise_weight_grad_is_one_conv_without_transposes():
    """A depthwise Conv's dW (ops/conv_grad.py depthwise_weight_grad): one depthwise Conv over
    the input, dy its kernel, no Transpose with a batch of one (the general form swaps batch
    and channels of x and dy and back: three Transposes), and its 3-column output row widened
    to 4 (one vector of 4 lanes, not a half and a scalar) then cropped by a Slice; on a
    scalar target not widened; with a batch of 2, x and dy transposed to fold the batch into
    the channels."""
    from toolchain.targets import get_profile
    ops, convs = _depthwise_weight_grad_convs()
    assert "Transpose" not in ops and "ConvTranspose" not in ops
    (conv,) = convs
    assert conv.attrs["group"] == 8 and conv.inputs[1].type.shape == (8, 1, 25, 5)
    assert conv.outputs[0].type.shape == (1, 8, 3, 4) and "Slice" in ops
    ops, (conv,) = _depthwise_weight_grad_convs(get_profile("rv64gc").vector_unit)
    assert conv.outputs[0].type.shape == (1, 8, 3, 3) and "Slice" not in ops
    ops, (conv,) = _depthwise_weight_grad_convs(get_profile("cortex-a76").vector_unit, n=2)
    assert conv.inputs[0].type.shape == (1, 16, 25, 5) and conv.inputs[1].type.shape == (8, 2, 25, 5)
    assert ops.count("Transpose") == 2


LARGE_MAPS = [c for c in OPS if "large-map" in c[0]]


@pytest.mark.parametrize("case", LARGE_MAPS, ids=[c[0] for c in LARGE_MAPS])
def test_compiled_large_map_depthwise_weight_grads(case):
    """A depthwise weight gradient over a map of more than MAX_UNROLLED_TAPS positions runs
    in the "conv-taps-reduce" tile (not the plain loop nest); the shipped object's
    pullback (in-process) against the float64 one."""
    from toolchain import compile_grad
    from toolchain.inprocess import host_profile
    from toolchain.passes import run_pipeline
    _, nodes, inputs, inits, _, opset = case
    m = onnx_model(with_consts(nodes), inputs, inits, opset=opset)
    vector = host_profile().vector_unit
    prog = reverse(import_model(m), list(inits), vector=vector)
    run_pipeline(prog.pullback, vector=vector)
    kinds = [getattr(nd.schedule, "kind", None) for nd in prog.pullback.nodes if nd.op == "Conv"]
    assert "conv-taps-reduce" in kinds and "loop" not in kinds
    cg = compile_grad(m)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(s).astype(np.float32) for _, _, s in cg.inputs]
    _, residuals = cg.primal(*xs)
    _, _, _, cts, grads = pullback64(m, [x.astype(np.float64) for x in xs], cts_seed=1)
    gin, gpar = cg.pullback(residuals, *_float32(cts))
    assert len(gin) + len(gpar) == len(grads)
    for got, want in zip(gin + gpar, grads):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_activity_only_what_reaches_a_differentiated_output():
    """A product with a constant saves nothing (the constant's cotangent is never built);
    an integer input's path gets no derivative nodes at all."""
    k = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 1, [3], [1.0, 2.0, 3.0]))
    m = onnx_model([k, node("Mul", ["a", "k"])], {"a": (2, 3)})
    prog = reverse(import_model(m))
    assert prog.residuals == [] and [n.op for n in prog.pullback.nodes] == ["Mul"]
    nodes = [node("Exp", ["a"], ["e"]), node("Cast", ["n"], ["nf"], to=1), node("Add", ["e", "nf"])]
    m = onnx_model(nodes, {"a": (2, 3)})
    m.graph.input.append(helper.make_tensor_value_info("n", 6, [2, 3]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("y", 1, [2, 3]))
    prog = reverse(import_model(m))
    assert prog.wrt_inputs == [0] and [v.name for v in prog.residuals] == ["e"]
    assert sorted(n.op for n in prog.pullback.nodes) == ["Mul"]


def test_ties_split_the_cotangent_evenly():
    """ReduceMax over rows with repeated maxima and Max of partly equal inputs: each element
    equal to the extreme gets the cotangent divided by how many are (torch.amax, torch.maximum)."""
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, -1.0, 0.0, 4.0]])
    m = onnx_model([node("ReduceMax", ["a"], axes=[1], keepdims=0)], {"a": (3, 4)})
    _, _, _, (ct,), (gx,) = pullback64(m, [x])
    want = np.array([[0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0]]) * ct[:, None]
    np.testing.assert_allclose(gx, want, rtol=1e-15)

    a = np.array([[1.0, 2.0, -3.0], [4.0, 0.0, 7.0]])
    bb = np.array([[1.0, 5.0, -3.0], [2.0, 0.0, 8.0]])
    for op, wins in (("Max", a > bb), ("Min", a < bb)):
        m = onnx_model([node(op, ["a", "b"])], {"a": (2, 3), "b": (2, 3)})
        _, _, _, (ct,), (ga, gb) = pullback64(m, [a, bb])
        loses = (a != bb) & ~wins
        np.testing.assert_allclose(ga, ct * np.where(a == bb, 0.5, wins), rtol=1e-15)
        np.testing.assert_allclose(gb, ct * np.where(a == bb, 0.5, loses), rtol=1e-15)
    same = onnx_model([node("Max", ["a", "a"])], {"a": (2, 3)})  # max(a, a) = a: the halves add up to 1
    _, _, _, (ct,), (ga,) = pullback64(same, [a])
    np.testing.assert_allclose(ga, ct, rtol=1e-15)


def test_reducel2_of_zeros_has_zero_derivative():
    """A norm of 0 (every reduced element 0): derivative 0 (torch's), not 0/0."""
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]])
    m = onnx_model([node("ReduceL2", ["a"], axes=[1], keepdims=0)], {"a": (2, 3)})
    _, _, _, (ct,), (gx,) = pullback64(m, [x])
    np.testing.assert_allclose(gx, np.array([[0, 0, 0], [0.6, 0, -0.8]]) * ct[:, None], rtol=1e-15)


def _product_of_the_others(x):
    """Per row: d prod(x) / dx_i = the product of the row without x_i (np.delete)."""
    return np.array([[np.prod(np.delete(row, i)) for i in range(len(row))] for row in x])


def test_reduceprod_derivative_exact_at_zeros():
    """The product of the other elements (torch's), not y / x: with no zero in the row, with
    one (the product of the rest at the zero, 0 elsewhere) and with two (0 everywhere)."""
    x = np.array([[2.0, -3.0, 0.5, 4.0], [2.0, 0.0, -3.0, 5.0], [0.0, 7.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    want = _product_of_the_others(x)
    assert (want[1] == [0, -30, 0, 0]).all() and not want[2:].any()
    m = onnx_model([node("ReduceProd", ["a"], axes=[1], keepdims=0)], {"a": (4, 4)})
    _, (y,), _, (ct,), (gx,) = pullback64(m, [x])
    np.testing.assert_allclose(y, x.prod(axis=1), rtol=1e-15)
    np.testing.assert_allclose(gx, want * ct[:, None], rtol=1e-14, atol=0)
    # the same along a leading axis, kept: the rows above as columns
    m = onnx_model([node("ReduceProd", ["a"], axes=[0], keepdims=1)], {"a": (4, 4)})
    _, _, _, (ct,), (gx,) = pullback64(m, [x.T.copy()])
    np.testing.assert_allclose(gx, want.T * ct, rtol=1e-14, atol=0)


@pytest.mark.parametrize("nodes, match", [
    ([node("Floor", ["a"], ["f"]), node("Add", ["f", "a"])], r"node 'Floor_0' \(Floor\): is not differentiable"),
    ([node("Cast", ["a"], ["i"], to=6), node("Cast", ["i"], ["y"], to=1)], r"\(Cast\): is not differentiable"),
    ([node("Elu", ["a"])], r"node 'Elu_0' \(Elu\): no derivative rule"),
    ([node("Selu", ["a"], ["l"]), node("Relu", ["l"])], r"\(Selu\): no derivative rule"),
    ([node("HardSigmoid", ["a"])], r"node 'HardSigmoid_0' \(HardSigmoid\): no derivative rule"),
])
def test_refusals_name_node_and_op(nodes, match):
    m = onnx_model(nodes, {"a": (2, 3)})
    with pytest.raises(UnsupportedError, match=match):
        reverse(import_model(m))


def _float32(arrays):
    return [np.asarray(a, np.float32) for a in arrays]


@pytest.mark.parametrize("make", [mlp, cnn, autoencoder, extremes,
                                  pytest.param(REAL["resnet8"], id="resnet8", marks=pytest.mark.slow),
                                  pytest.param(REAL["kws_dscnn"], id="kws_dscnn", marks=pytest.mark.slow),
                                  pytest.param(REAL["mobilenet_vww"], id="mobilenet_vww", marks=pytest.mark.slow)])
def test_compiled_primal_and_pullback_match_float64(make):
    """The shipped object (x86-64-v3, in-process) against the float64 pullback checked
    above; one primal serves two pullbacks, and the pullback never reads what the primal
    left in the arena (filled with NaN in between)."""
    from toolchain import compile_grad
    m = make()
    cg = compile_grad(m)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(s).astype(np.float32) for _, _, s in cg.inputs]
    outs, residuals = cg.primal(*xs)
    assert residuals.nbytes == cg.manifest["grad"]["residuals"]["size"]
    for seed in (1, 2):
        _, ys, _, cts, grads = pullback64(m, [x.astype(np.float64) for x in xs], cts_seed=seed)
        for y, r in zip(outs, ys):
            np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-5)
        cg.arena[...] = 0xFF  # NaN in every float the pullback might read by mistake
        gin, gpar = cg.pullback(residuals, *_float32(cts))
        assert len(gin) + len(gpar) == len(grads)
        for got, want in zip(gin + gpar, grads):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_compiled_reduceprod_and_reducelogsum_pullbacks():
    """The shipped object's ReduceProd pullback at rows with no, one and two zeros and
    ReduceLogSum's (float32, in-process) against the float64 pullback."""
    from toolchain import compile_grad
    m = onnx_model([node("ReduceProd", ["a"], ["y"], axes=[1], keepdims=0),
                    node("ReduceLogSum", ["b"], ["z"], axes=[0, 2], keepdims=1)],
                   {"a": (4, 4), "b": (2, 3, 4)}, outputs=("y", "z"))
    a = np.array([[2.0, -3.0, 0.5, 4.0], [2.0, 0.0, -3.0, 5.0], [0.0, 7.0, 0.0, 3.0], [1.5, 0.25, -2.0, 0.0]])
    bb = np.random.default_rng(4).uniform(0.5, 2.0, (2, 3, 4))
    cg = compile_grad(m)
    outs, residuals = cg.primal(*_float32([a, bb]))
    _, ys, _, cts, grads = pullback64(m, [a, bb])
    for y, r in zip(outs, ys):
        np.testing.assert_allclose(y, r, rtol=1e-6)
    cg.arena[...] = 0xFF  # NaN in every float the pullback might read by mistake
    gin, gpar = cg.pullback(residuals, *_float32(cts))
    assert len(gin) == 2 and not gpar
    for got, want in zip(gin, grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not gin[0][2].any() and (gin[0][1] != 0).tolist() == [False, True, False, False]


def _driver(manifest) -> str:
    """A C program for the target: reads the inputs and output cotangents from argv[1], runs
    model_primal, fills the arena with NaN, runs model_pullback, writes the outputs, input
    cotangents and parameter cotangents to argv[2]; exit 3 if a guard zone after the arena
    or the residual buffer was written."""
    g = manifest["grad"]
    ins = [t["bytes"] for t in manifest["inputs"]] + [t["bytes"] for t in g["output_cotangents"]]
    outs = [t["bytes"] for t in manifest["outputs"]] + [t["bytes"] for t in g["input_cotangents"]] + \
        [p["bytes"] for p in g["params"]]
    decl = [f"static _Alignas(16) unsigned char i{k}[{n}];" for k, n in enumerate(ins)]
    decl += [f"static _Alignas(16) unsigned char o{k}[{n}];" for k, n in enumerate(outs)]
    ni, no, nic = len(manifest["inputs"]), len(manifest["outputs"]), len(g["input_cotangents"])
    table = lambda name, items: f"{name}[] = {{{', '.join(items) or '0'}}};"  # noqa: E731
    return "\n".join([
        "#include <stdio.h>", "#include <string.h>", '#include "model.h"',
        "#define GUARD 64",
        "static _Alignas(MODEL_ARENA_ALIGN) unsigned char arena[MODEL_ARENA_SIZE + GUARD];",
        "static _Alignas(MODEL_RESIDUALS_ALIGN) unsigned char res[MODEL_RESIDUALS_SIZE + GUARD];",
        *decl,
        "static int intact(const unsigned char *p) { for (int k = 0; k < GUARD; k++) if (p[k] != 0xA5) return 0; "
        "return 1; }",
        "int main(int argc, char **argv) {",
        "    FILE *f = fopen(argv[1], \"rb\");", "    if (!f || argc < 3) return 2;",
        *[f"    if (fread(i{k}, 1, {n}, f) != {n}) return 2;" for k, n in enumerate(ins)],
        "    fclose(f);",
        "    memset(arena + MODEL_ARENA_SIZE, 0xA5, GUARD); memset(res + MODEL_RESIDUALS_SIZE, 0xA5, GUARD);",
        "    const void *" + table("ins", [f"i{k}" for k in range(ni)]),
        "    void *" + table("outs", [f"o{k}" for k in range(no)]),
        "    if (model_primal(ins, outs, res, arena) != 0) return 4;",
        "    memset(arena, 0xFF, MODEL_ARENA_SIZE);",
        "    const void *" + table("cots", [f"i{k}" for k in range(ni, len(ins))]),
        "    void *" + table("gin", [f"o{k}" for k in range(no, no + nic)]),
        "    void *" + table("gpar", [f"o{k}" for k in range(no + nic, len(outs))]),
        "    if (model_pullback(res, cots, gin, gpar, arena) != 0) return 4;",
        "    if (!intact(arena + MODEL_ARENA_SIZE) || !intact(res + MODEL_RESIDUALS_SIZE)) return 3;",
        "    f = fopen(argv[2], \"wb\");", "    if (!f) return 2;",
        *[f"    fwrite(o{k}, 1, {n}, f);" for k, n in enumerate(outs)],
        "    fclose(f);", "    return 0;", "}", ""])


@pytest.mark.parametrize("emit", ["object", "c"])
def test_cnn_gradients_on_cortex_a76_under_qemu(tmp_path, emit):
    """The library as shipped (object path, and the portable C path built by zig cc),
    linked into a C program for cortex-a76 and run under qemu-user."""
    from autodiff_helpers import run_driver_on_a76

    m = cnn()
    rng = np.random.default_rng(5)
    got = {}

    def feeds(man):  # the inputs, then the output cotangents the float64 pullback used
        xs = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["inputs"]]
        _, got["ys"], _, cts, got["grads"] = pullback64(m, [x.astype(np.float64) for x in xs])
        return xs + _float32(cts)

    _, flat = run_driver_on_a76(m, tmp_path, emit, "reverse", _driver, feeds)
    ys, grads = got["ys"], got["grads"]
    start = 0
    for want in list(ys) + list(grads):
        got = flat[start:start + want.size].reshape(want.shape)
        start += want.size
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert start == flat.size


def test_runtime_weight_conv_by_lane_on_cortex_a76_under_qemu(tmp_path):
    """A Conv whose weights are run-time values (here a graph input; a training step's
    parameters) with output channels in whole vectors takes the by-lane column tile, its
    weights packed into a workspace by the kernel first; the primal and pullback as shipped
    for cortex-a76 under qemu-user against float64."""
    from autodiff_helpers import run_driver_on_a76
    from toolchain.passes import run_pipeline
    from toolchain.targets import get_profile

    m = onnx_model([node("Conv", ["x", "w", "B"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),
                    node("Tanh", ["a"])], {"x": (1, 3, 10, 9), "w": (8, 3, 3, 3)}, {"B": w(8)})
    vector = get_profile("cortex-a76").vector_unit
    prog = reverse(import_model(m), ["B"], vector=vector)
    run_pipeline(prog.primal, vector=vector)
    (conv,) = [nd for nd in prog.primal.nodes if nd.op == "Conv"]
    assert conv.schedule.packing == "by-lane" and not conv.inputs[1].is_const
    rng = np.random.default_rng(7)
    got = {}

    def feeds(man):
        xs = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["inputs"]]
        _, got["ys"], _, cts, got["grads"] = pullback64(m, [x.astype(np.float64) for x in xs])
        return xs + _float32(cts)

    _, flat = run_driver_on_a76(m, tmp_path, "object", "reverse", _driver, feeds)
    _assert_outputs_then_grads(flat, got)


def _assert_outputs_then_grads(flat, got):
    """The driver's flat float32 results: the outputs, then the gradients, each within
    float32's reach of the float64 pullback's."""
    start = 0
    for want in list(got["ys"]) + list(got["grads"]):
        have = flat[start:start + want.size].reshape(want.shape)
        start += want.size
        np.testing.assert_allclose(have, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert start == flat.size


@pytest.mark.parametrize("emit", ["object", "c"])
@pytest.mark.parametrize("case", ["conv-depthwise-large-map-stride2-pads", "conv-stem-large-map-stride2",
                                  "conv-depthwise-large-map"])
def test_large_map_weight_grads_on_cortex_a76_under_qemu(tmp_path, emit, case):
    """The "conv-taps-reduce" weight gradients as shipped for cortex-a76 (4 lanes: NEON's
    even/odd loads and lane shifts; the portable C path's lanes) under qemu-user, against
    the float64 pullback."""
    from autodiff_helpers import run_driver_on_a76

    _, nodes, inputs, inits, _, opset = next(c for c in OPS if c[0] == case)
    m = onnx_model(with_consts(nodes), inputs, inits, opset=opset)
    rng = np.random.default_rng(9)
    got = {}

    def feeds(man):
        xs = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["inputs"]]
        _, got["ys"], _, cts, got["grads"] = pullback64(m, [x.astype(np.float64) for x in xs])
        return xs + _float32(cts)

    _, flat = run_driver_on_a76(m, tmp_path, emit, "reverse", _driver, feeds)
    _assert_outputs_then_grads(flat, got)


def _edgec(*args):
    import subprocess
    import sys
    from helpers import ROOT
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_grad_build_header_manifest_symbols(tmp_path):
    """edgec build --grad reverse: the header's macros are the manifest's figures (read back
    by a C program), the residual layout tiles the buffer, only the two entries are exported."""
    import json
    import subprocess

    import onnx
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "mlp.onnx"), "--name", "net",
                  "--out", str(out), "--grad", "reverse")
    assert proc.returncode == 0, proc.stderr
    assert "reverse   residuals" in proc.stdout
    man = json.loads((out / "net.json").read_text())
    g = man["grad"]
    assert [p["name"] for p in g["params"]] == ["W1", "b1", "W2", "b2"]
    assert [p["shape"] for p in g["params"]] == [[16, 8], [16], [5, 16], [5]]
    end = 0
    for v in g["residuals"]["values"]:
        assert v["offset"] >= end and v["offset"] % g["residuals"]["align"] == 0
        end = v["offset"] + v["bytes"]
    assert end <= g["residuals"]["size"]
    assert man["arena"]["size"] == max(a["size"] for a in g["arenas"].values())
    prog = tmp_path / "p.c"
    prog.write_text('#include <stdio.h>\n#include "net.h"\nint main(void) {\n'
                    '  int (*p)(const void *const *, void *const *, void *, void *) = net_primal;\n'
                    '  int (*q)(const void *, const void *const *, void *const *, void *const *, void *) = net_pullback;\n'
                    '  (void)p; (void)q;\n'
                    '  printf("%u %u %u %u %u %u %u\\n", NET_RESIDUALS_SIZE, NET_RESIDUALS_ALIGN, NET_NUM_PARAMS,\n'
                    '         NET_PARAM0_ELEMS, NET_PARAM3_ELEMS, NET_ARENA_SIZE, NET_NUM_INPUT_COTANGENTS);\n'
                    '  return 0;\n}\n')
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{out}", str(prog),
                    str(out / "net.o"), "-o", str(exe)], check=True)
    figures = list(map(int, subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()))
    assert figures == [g["residuals"]["size"], g["residuals"]["align"], 4, 128, 5, man["arena"]["size"], 1]
    syms = subprocess.run(["nm", "-g", "--defined-only", str(out / "net.o")], capture_output=True, text=True,
                          check=True).stdout.split()
    assert sorted(s for s in syms if s.startswith("net_")) == ["net_primal", "net_pullback"]
    assert set(man["stack_bytes"]) == {"net_primal", "net_pullback"}


def test_cli_grad_refusals(tmp_path):
    import onnx
    m = onnx_model([node("Elu", ["a"], ["l"], name="elu"), node("Relu", ["l"], name="act")], {"a": (2, 3)})
    m.graph.node[0].name, m.graph.node[1].name = "elu", "act"
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
                  "--grad", "reverse")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["edgec: error: node 'elu' (Elu): no derivative rule "
                                                "(reverse mode)"]
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--grad", "sideways")
    assert proc.returncode == 2 and "--grad" in proc.stderr
    onnx.save(onnx_model([node("Relu", ["a"])], {"a": (2, 3)}), tmp_path / "relu.onnx")
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "relu.onnx"), "--out", str(out),
                  "--train")
    assert proc.returncode == 1 and "no float initializers to train" in proc.stderr and not out.exists()


def test_cli_train_build(tmp_path):
    import onnx
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "cortex-a76", "--model", str(tmp_path / "mlp.onnx"), "--out", str(out),
                  "--train", "--loss", "mse")
    assert proc.returncode == 0, proc.stderr
    assert "train     mse loss, sgd: params buffer 960 bytes (4 params)" in proc.stdout
    header = (out / "model.h").read_text()
    assert "#define MODEL_PARAMS_SIZE  960u" in header and "int model_train_step(void *params, void *opt_state" in header
    c_out = tmp_path / "c"
    proc = _edgec("build", "--target", "cortex-a76", "--model", str(tmp_path / "mlp.onnx"), "--out", str(c_out),
                  "--train", "--emit", "c")
    assert proc.returncode == 0, proc.stderr
    assert "train     mse loss, sgd: params buffer 960 bytes (4 params)" in proc.stdout
    assert sorted(p.name for p in c_out.iterdir()) == ["model.c", "model.cmake", "model.h", "model.json", "model.mk"]
    c_header = (c_out / "model.h").read_text()
    assert "#define MODEL_PARAMS_SIZE  960u" in c_header
    assert "int model_train_step(void *params, void *opt_state" in c_header
    source = (c_out / "model.c").read_text()
    for proto in ["void model_params_init(void *params) {",
                  "int model_run_params(const void *params, const void *const *inputs, void *const *outputs, "
                  "void *arena) {",
                  "int model_train_step(void *params, void *opt_state, const void *const *inputs, "
                  "const void *const *targets, float learning_rate, float *loss, void *arena) {"]:
        assert proto in source, proto


def test_train_c_path_refuses_profiling_builds():
    """The profiling build of a --train model (a line table naming the step's nodes) is
    object-only: the C path refuses it instead of ignoring the option."""
    from toolchain.compiler import compile_train_graph
    from toolchain.errors import CompileError
    from toolchain.targets import get_profile
    m = mlp()
    params = [t.name for t in m.graph.initializer]
    with pytest.raises(CompileError, match="profiling builds need the object backend, not 'c'"):
        compile_train_graph(import_model(m, "model"), params, get_profile("x86-64-v3"), "model", emit="c",
                            node_lines=True)


def _numpy_sgd(params, x, target, lr, steps):
    """The MLP's training step written out by hand in float64 numpy (no edgec code):
    y = softmax(relu(x W1^T + b1) W2^T + b2), loss = mean((y - t)^2), p -= lr dloss/dp."""
    W1, b1, W2, b2 = (p.astype(np.float64) for p in params)
    x, target = x.astype(np.float64), target.astype(np.float64)
    losses = []
    for _ in range(steps):
        h = x @ W1.T + b1
        r = np.maximum(h, 0)
        z = r @ W2.T + b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
        losses.append(np.mean((y - target) ** 2))
        dy = 2 * (y - target) / y.size
        dz = y * (dy - (dy * y).sum(axis=1, keepdims=True))
        dW2, db2, dr = dz.T @ r, dz.sum(0), dz @ W2
        dh = dr * (h > 0)
        dW1, db1 = dh.T @ x, dh.sum(0)
        W1, b1, W2, b2 = W1 - lr * dW1, b1 - lr * db1, W2 - lr * dW2, b2 - lr * db2
    return losses, [W1, b1, W2, b2]


def _numpy_sgd_cross_entropy(params, x, labels, lr, steps):
    """The classifier's training step (Gemm, Relu, Gemm: scores z) by hand in float64 numpy:
    loss = mean(logsumexp(z) - z[label]), p -= lr dloss/dp. Returns (losses, parameters)."""
    P = [p.astype(np.float64) for p in params]
    xs, want, n = x.astype(np.float64), [], len(labels)
    for _ in range(steps):
        h = xs @ P[0].T + P[1]
        r = np.maximum(h, 0)
        z = r @ P[2].T + P[3]
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        want.append(np.mean(lse - z[np.arange(n), labels]))
        dz = np.exp(z - lse[:, None])
        dz[np.arange(n), labels] -= 1
        dz /= n
        dr = dz @ P[2]
        dh = dr * (h > 0)
        grads = [dh.T @ xs, dh.sum(0), dz.T @ r, dz.sum(0)]
        P = [p - lr * g for p, g in zip(P, grads)]
    return want, P


def _classifier(seed=13):
    w = _weights(seed)
    W1, b1, W2, b2 = w(16, 8), w(16), w(5, 16), w(5)
    m = onnx_model([node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), node("Relu", ["h"], ["r"]),
                    node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)], {"x": (4, 8)},
                   {"W1": W1, "b1": b1, "W2": W2, "b2": b2})
    return m, [W1, b1, W2, b2]


def test_train_step_sgd_cross_entropy_matches_numpy():
    """--loss cross-entropy: 5 SGD steps of a classifier (its scores, no softmax) on int64
    labels against the same steps written out by hand in float64 numpy."""
    from toolchain import compile_train
    m, (W1, b1, W2, b2) = _classifier()
    ct = compile_train(m, loss="cross-entropy")
    params = ct.params_init()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    labels = np.array([0, 3, 4, 3], np.int64)
    lr = 0.3
    losses = [ct.train_step(params, [x], [labels], lr) for _ in range(5)]
    want, P = _numpy_sgd_cross_entropy([W1, b1, W2, b2], x, labels, lr, 5)
    np.testing.assert_allclose(losses, want, rtol=1e-4)
    assert losses[-1] < losses[0]
    for i, p in enumerate(P):
        np.testing.assert_allclose(ct.param(params, i), p, rtol=1e-4, atol=1e-5)


def test_train_cross_entropy_refusals():
    """Cross entropy needs one float output of class scores N x C [x d...]."""
    from toolchain import compile_train
    from toolchain.errors import CompileError
    w = _weights(14)
    flat = onnx_model([node("MatMul", ["x", "W"], ["m"]), node("ReduceSum", ["m"], keepdims=0)], {"x": (2, 3)},
                      {"W": w(3, 4)})
    with pytest.raises(CompileError, match="needs class scores of shape N x C"):
        compile_train(flat, loss="cross-entropy")
    two = onnx_model([node("MatMul", ["x", "W"], ["y"]), node("MatMul", ["x", "V"], ["y2"])], {"x": (2, 3)},
                     {"W": w(3, 4), "V": w(3, 4)}, outputs=("y", "y2"))
    with pytest.raises(CompileError, match="exactly one float output"):
        compile_train(two, loss="cross-entropy")


def test_train_step_sgd_mse_matches_numpy():
    """model_train_step (x86-64-v3, in-process): 5 SGD steps of the MLP on an MSE loss, the
    losses and the parameters after them against the hand-written float64 numpy steps."""
    from onnx import numpy_helper

    from toolchain import compile_train
    m = mlp()
    ct = compile_train(m)
    params = ct.params_init()
    inits = [numpy_helper.to_array(t) for t in m.graph.initializer]
    for i, want in enumerate(inits):
        np.testing.assert_array_equal(ct.param(params, i), want)  # params_init copies the trained values
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    target = rng.dirichlet(np.ones(5), size=3).astype(np.float32)
    lr = 0.5
    losses = [ct.train_step(params, [x], [target], lr) for _ in range(5)]
    want_losses, want_params = _numpy_sgd(inits, x, target, lr, 5)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert losses[-1] < losses[0]
    for i, want in enumerate(want_params):
        np.testing.assert_allclose(ct.param(params, i), want, rtol=1e-4, atol=1e-5)


def _train_driver(manifest, steps: int, lr: float) -> str:
    """A C program for a --train build: reads the inputs then the targets from argv[1], runs
    params_init, `steps` train_step calls (a zeroed opt_state with momentum), and writes the
    losses then each parameter (its bytes at its offset in params) to argv[2]; exit 3 if a
    guard zone after the arena or the params buffer was written."""
    t = manifest["train"]
    ins = [e["bytes"] for e in manifest["inputs"]]
    tgs = [e["bytes"] for e in t["targets"]]
    table = lambda name, items: f"{name}[] = {{{', '.join(items) or '0'}}};"  # noqa: E731
    state = "state" if t["opt_state_size"] else "NULL"
    return "\n".join([
        "#include <stdio.h>", "#include <string.h>", '#include "model.h"', "#define GUARD 64",
        "static _Alignas(MODEL_ARENA_ALIGN) unsigned char arena[MODEL_TRAIN_ARENA_SIZE + GUARD];",
        "static _Alignas(MODEL_PARAMS_ALIGN) unsigned char params[MODEL_PARAMS_SIZE + GUARD];",
        *(["static _Alignas(MODEL_PARAMS_ALIGN) unsigned char state[MODEL_OPT_STATE_SIZE];"]
          if t["opt_state_size"] else []),
        *[f"static _Alignas(16) unsigned char i{k}[{n}];" for k, n in enumerate(ins)],
        *[f"static _Alignas(16) unsigned char t{k}[{n}];" for k, n in enumerate(tgs)],
        "static int intact(const unsigned char *p) { for (int k = 0; k < GUARD; k++) if (p[k] != 0xA5) return 0; "
        "return 1; }",
        "int main(int argc, char **argv) {",
        f"    float losses[{steps}];",
        "    FILE *f = fopen(argv[1], \"rb\");", "    if (!f || argc < 3) return 2;",
        *[f"    if (fread(i{k}, 1, {n}, f) != {n}) return 2;" for k, n in enumerate(ins)],
        *[f"    if (fread(t{k}, 1, {n}, f) != {n}) return 2;" for k, n in enumerate(tgs)],
        "    fclose(f);",
        "    memset(arena + MODEL_TRAIN_ARENA_SIZE, 0xA5, GUARD); memset(params + MODEL_PARAMS_SIZE, 0xA5, GUARD);",
        *(["    memset(state, 0, sizeof state);"] if t["opt_state_size"] else []),
        "    model_params_init(params);",
        "    const void *" + table("ins", [f"i{k}" for k in range(len(ins))]),
        "    const void *" + table("tgs", [f"t{k}" for k in range(len(tgs))]),
        f"    for (int k = 0; k < {steps}; k++)",
        f"        if (model_train_step(params, {state}, ins, tgs, {lr!r}f, &losses[k], arena) != 0) return 4;",
        "    if (!intact(arena + MODEL_TRAIN_ARENA_SIZE) || !intact(params + MODEL_PARAMS_SIZE)) return 3;",
        "    f = fopen(argv[2], \"wb\");", "    if (!f) return 2;",
        f"    fwrite(losses, sizeof(float), {steps}, f);",
        *[f"    fwrite(params + {p['offset']}, 1, {p['bytes']}, f);" for p in t["params"]],
        "    fclose(f);", "    return 0;", "}", ""])


def _run_c_train_native(m, tmp_path, arrays, steps, lr, **build_options):
    """Builds `m` with --train --emit c for x86-64-v3, compiles model.c with the driver above
    (zig cc, for this host), runs it on the bytes of `arrays` and returns the manifest, the
    losses and the parameters it wrote."""
    import subprocess

    import onnx

    from toolchain.compiler import build
    from toolchain.harness.runner import run_program, zig_cc
    from toolchain.targets import get_profile

    profile = get_profile("x86-64-v3")
    onnx.save(m, tmp_path / "m.onnx")
    man = build(tmp_path / "m.onnx", "x86-64-v3", "model", tmp_path / "out", emit="c", **build_options).manifest
    assert not (tmp_path / "out" / "model.o").exists() and (tmp_path / "out" / "model.c").is_file()
    (tmp_path / "main.c").write_text(_train_driver(man, steps, lr))
    exe = tmp_path / "main"
    proc = subprocess.run(zig_cc(profile) + ["-std=c11", f"-I{tmp_path / 'out'}", str(tmp_path / "main.c"),
                                             str(tmp_path / "out" / "model.c"), "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "in.bin").write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))
    run_program([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], timeout=60)
    flat = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32)
    params, start = [], steps
    for p in man["train"]["params"]:
        params.append(flat[start:start + p["elems"]].reshape(p["shape"]))
        start += p["elems"]
    assert start == flat.size
    return man, flat[:steps], params


@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_train_step_c_path_matches_numpy_and_object_path(tmp_path, loss):
    """--train --emit c: model.c built by zig cc into a C program for this host (x86-64-v3),
    5 SGD steps; the losses and parameters against the float64 numpy steps written out by
    hand, and against the object path's build of the same model and steps (in-process),
    which must agree to float32 rounding."""
    from toolchain import compile_train
    if loss == "mse":
        m = mlp()
        from onnx import numpy_helper
        inits = [numpy_helper.to_array(t) for t in m.graph.initializer]
        rng = np.random.default_rng(9)
        x = rng.standard_normal((3, 8)).astype(np.float32)
        target = rng.dirichlet(np.ones(5), size=3).astype(np.float32)
        lr = 0.5
        want_losses, want_params = _numpy_sgd(inits, x, target, lr, 5)
    else:
        m, inits = _classifier()
        x = np.random.default_rng(10).standard_normal((4, 8)).astype(np.float32)
        target = np.array([0, 3, 4, 3], np.int64)
        lr = 0.3
        want_losses, want_params = _numpy_sgd_cross_entropy(inits, x, target, lr, 5)
    _, losses, params = _run_c_train_native(m, tmp_path, [x, target], 5, lr, train=loss)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert losses[-1] < losses[0]
    for got, want in zip(params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    ct = compile_train(m, loss=loss)  # the object path, same model and steps
    buf = ct.params_init()
    obj_losses = np.array([ct.train_step(buf, [x], [target], lr) for _ in range(5)], np.float32)
    # float32 rounding: the first loss (same parameters, one forward pass) to a few ulps; after
    # steps the two paths' summation orders drift apart by far less than either from float64
    np.testing.assert_allclose(losses[0], obj_losses[0], rtol=5e-7, atol=0)
    np.testing.assert_allclose(losses, obj_losses, rtol=1e-5, atol=0)
    for i, got in enumerate(params):
        np.testing.assert_allclose(got, ct.param(buf, i), rtol=1e-5, atol=1e-6)
