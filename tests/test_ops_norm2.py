"""LayerNormalization's Mean/InvStdDev outputs, GroupNormalization (opset 18 and 21 forms),
MeanVarianceNormalization, TopK, CumProd, LpPool, MaxPool's Indices output and integer
input, Dropout's mask output: against onnxruntime on the host (the onnx reference
evaluator where onnxruntime has no kernel), one mixed model on cortex-a76 under QEMU and
through the C path under clang's UB sanitizer, and the bad inputs."""
import re

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import build, compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.harness.runner import link_harness, run_model
from toolchain.targets import get_profile

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(2026)
UBSAN = ["-fsanitize=undefined", "-fsanitize-trap=undefined"]
SCHEMA_REFUSAL = re.compile(r"is tensor\(\w+\); \w+ takes \w+ in \{|it is a flag, 0 or 1|is tensor\(\w+\) but ")


def I(*v):  # noqa: E743
    return np.array(v, np.int64)


def one_node(op, feeds, outs: dict, inits=None, opset=18, inputs=None, **attrs):
    """A model of one node; outs: name -> (dtype, shape), "" for an omitted output."""
    names = inputs or list(feeds) + list(inits or {})
    node = helper.make_node(op, names, list(outs), **attrs)
    return make_model([node], {k: (v.dtype, v.shape) for k, v in feeds.items()},
                      {k: v for k, v in outs.items() if k}, inits, opset=opset)


def check_against_reference_evaluator(m, feeds, workdir):
    """For ops onnxruntime has no kernel for: the onnx package's reference evaluator."""
    want = ReferenceEvaluator(m).run(None, feeds)
    got = compile_and_run(m, T, feeds, workdir)[0]
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"output {j}")


X4 = rng.standard_normal((2, 6, 5, 4)).astype(F)


# -- LayerNormalization: Y, Mean, InvStdDev ------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_layer_norm_statistics(axis, workdir):
    ax = axis % 4
    stats = X4.shape[:ax] + (1,) * (4 - ax)
    w = rng.standard_normal(X4.shape[ax:]).astype(F)
    b = rng.standard_normal(X4.shape[ax:]).astype(F)
    m = one_node("LayerNormalization", {"x": X4}, {"y": (F, X4.shape), "mean": (F, stats), "inv": (F, stats)},
                 {"w": w, "b": b}, opset=17, axis=axis, epsilon=1e-3)
    check_against_onnxruntime(m, {"x": X4}, T, workdir)


def test_layer_norm_inv_std_dev_only(workdir):
    """Mean omitted (an empty name): Y and InvStdDev, of shape (2, 6, 1, 1)."""
    w = rng.standard_normal((5, 4)).astype(F)
    m = one_node("LayerNormalization", {"x": X4}, {"y": (F, X4.shape), "": None, "inv": (F, (2, 6, 1, 1))},
                 {"w": w}, opset=17, axis=2)
    got = compile_and_run(m, T, {"x": X4}, workdir)[0]
    x64 = X4.astype(np.float64)
    var = x64.var(axis=(2, 3), keepdims=True)
    assert got[1].shape == (2, 6, 1, 1)
    assert_close(got[1], 1.0 / np.sqrt(var + 1e-5))
    assert_close(got[0], (x64 - x64.mean(axis=(2, 3), keepdims=True)) / np.sqrt(var + 1e-5) * w)


def test_layer_norm_stats_feed_later_nodes(workdir):
    """The statistics read by other nodes (not graph outputs): Y * InvStdDev + Mean."""
    nodes = [helper.make_node("LayerNormalization", ["x", "w"], ["y", "mean", "inv"], axis=1),
             helper.make_node("Mul", ["y", "inv"], ["t"]),
             helper.make_node("Add", ["t", "mean"], ["z"])]
    m = make_model(nodes, {"x": (F, X4.shape)}, {"z": (F, X4.shape)}, {"w": np.full(X4.shape[1:], 2.0, F)},
                   opset=17)
    check_against_onnxruntime(m, {"x": X4}, T, workdir)


def test_layer_norm_other_stash_type_with_unread_statistics(workdir):
    """stash_type 16 (bfloat16 statistics): Mean/InvStdDev listed but unread, Y in float32."""
    w = rng.standard_normal(4).astype(F)
    m = make_model([helper.make_node("LayerNormalization", ["x", "w"], ["y", "mean", "inv"], stash_type=16)],
                   {"x": (F, X4.shape)}, {"y": (F, X4.shape)}, {"w": w}, opset=17)
    x64 = X4.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w
    assert_close(compile_and_run(m, T, {"x": X4}, workdir)[0][0], want)


# -- GroupNormalization, MeanVarianceNormalization -------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm_opset21_per_channel(groups, workdir):
    scale, bias = rng.standard_normal(6).astype(F), rng.standard_normal(6).astype(F)
    m = one_node("GroupNormalization", {"x": X4}, {"y": (F, X4.shape)}, {"s": scale, "b": bias}, opset=21,
                 num_groups=groups, epsilon=1e-2)
    check_against_onnxruntime(m, {"x": X4}, T, workdir)


def test_group_norm_opset18_per_group(workdir):
    """Opset 18: scale and bias hold one value per group. The onnx checker calls that
    version deprecated (opset 21 redefined it), but the model is valid for its own opset and
    onnxruntime and the onnx reference evaluator run it (the spec's function body): it
    builds, and matches both."""
    x = rng.standard_normal((2, 6, 7)).astype(F)
    scale, bias = np.array([0.5, -2.0, 3.0], F), np.array([1.0, 0.0, -1.0], F)
    m = one_node("GroupNormalization", {"x": x}, {"y": (F, x.shape)}, {"s": scale, "b": bias}, opset=18,
                 num_groups=3, name="gn18")
    check_against_onnxruntime(m, {"x": x}, T, workdir)
    check_against_reference_evaluator(m, {"x": x}, workdir)


@pytest.mark.parametrize("axes", [None, [1], [0, 1, 2, 3], [-1, 1]])
def test_mean_variance_normalization(axes, workdir):
    attrs = {} if axes is None else {"axes": axes}
    m = one_node("MeanVarianceNormalization", {"x": X4}, {"y": (F, X4.shape)}, opset=13, **attrs)
    check_against_onnxruntime(m, {"x": X4}, T, workdir)


def test_mean_variance_normalization_empty_axes(workdir):
    """axes = []: every axis, as the spec's function body reads it (ReduceMean with an empty
    axes input); onnxruntime refuses it, so the onnx reference evaluator is the oracle."""
    x = rng.standard_normal((2, 3, 4)).astype(F)
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    m = make_model([node], {"x": (F, x.shape)}, {"y": (F, x.shape)}, opset=13)
    check_against_reference_evaluator(m, {"x": x}, workdir)


# -- TopK -------------------------------------------------------------------------------------------
XT = rng.standard_normal((3, 7, 4)).astype(F)
XT[0, :, 1] = 0.5  # a column of ties: lower indices first
XT[1, 2:5, 3] = -0.25
XI = rng.integers(-3, 3, (4, 9)).astype(np.int32)  # many ties
XU = rng.integers(0, 255, (5, 6)).astype(np.uint8)


@pytest.mark.parametrize("x,kk,axis,largest", [
    (XT, 3, 1, 1), (XT, 3, 1, 0), (XT, 7, -2, 1), (XT, 2, 0, 0), (XT, 1, -1, 1), (XT, 4, 2, 0),
    (XI, 5, 1, 1), (XI, 4, 1, 0), (XI, 2, 0, 1), (XU, 4, 1, 1), (XU, 3, 0, 0),
    (XU.astype(np.uint64) * np.uint64(2**60), 3, 1, 1), (XT.astype(np.float64), 2, 1, 0),
])
def test_topk(x, kk, axis, largest, workdir):
    shape = list(x.shape)
    shape[axis] = kk
    m = one_node("TopK", {"x": x}, {"v": (x.dtype, shape), "i": (np.int64, shape)}, {"k": I(kk)}, opset=11,
                 axis=axis, largest=largest)
    if x.dtype == np.uint64:  # onnxruntime has no uint64 TopK kernel
        check_against_reference_evaluator(m, {"x": x}, workdir)
    else:
        check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_topk_opset1_attribute_k_and_unsorted(workdir):
    m = one_node("TopK", {"x": XT}, {"v": (F, (3, 7, 2)), "i": (np.int64, (3, 7, 2))}, opset=9, k=2)
    check_against_onnxruntime(m, {"x": XT}, T, workdir)
    # sorted=0 leaves the order open: ours is sorted all the same, the same set as onnxruntime's
    m = one_node("TopK", {"x": XT}, {"v": (F, (3, 3, 4)), "i": (np.int64, (3, 3, 4))}, {"k": I(3)}, opset=11,
                 axis=1, sorted=0)
    got = compile_and_run(m, T, {"x": XT}, workdir)[0]
    want = onnxruntime_outputs(m, {"x": XT})
    assert_close(np.sort(got[0], axis=1), np.sort(want[0], axis=1))
    assert_close(got[0], -np.sort(-XT, axis=1)[:, :3])


# -- CumProd ----------------------------------------------------------------------------------------
XC = rng.uniform(0.5, 1.5, (3, 4, 5)).astype(F)


@pytest.mark.parametrize("x,axis,exclusive,reverse", [
    (XC, 1, 0, 0), (XC, -1, 1, 0), (XC, 0, 0, 1), (XC, 2, 1, 1),
    (rng.integers(-3, 4, (4, 5)).astype(np.int32), 1, 1, 0), (rng.integers(-3, 4, (6,)).astype(np.int64), 0, 0, 1),
    (rng.integers(0, 9, (3, 4)).astype(np.uint32), 0, 1, 1), (XC.astype(np.float64), 1, 0, 0),
])
def test_cumprod(x, axis, exclusive, reverse, workdir):
    m = one_node("CumProd", {"x": x}, {"y": (x.dtype, x.shape)}, {"a": np.array(axis, np.int32)}, opset=26,
                 exclusive=exclusive, reverse=reverse)
    check_against_reference_evaluator(m, {"x": x}, workdir)
    # and against numpy written here
    v = np.flip(x, axis) if reverse else x
    want = np.cumprod(v, axis=axis, dtype=x.dtype)
    if exclusive:
        want = np.concatenate([np.ones_like(np.take(want, [0], axis)), np.take(want, range(x.shape[axis] - 1), axis)],
                              axis)
    want = np.flip(want, axis) if reverse else want
    assert_close(compile_and_run(m, T, {"x": x}, workdir)[0][0], want)


# -- LpPool, MaxPool --------------------------------------------------------------------------------
XP = rng.standard_normal((2, 3, 9, 8)).astype(F)


@pytest.mark.parametrize("attrs,opset", [
    ({"kernel_shape": [3, 3]}, 18),
    ({"kernel_shape": [2, 3], "p": 1, "strides": [2, 1], "pads": [1, 0, 1, 2]}, 18),
    ({"kernel_shape": [3, 2], "p": 3, "dilations": [2, 1], "ceil_mode": 1, "strides": [2, 2]}, 18),
    ({"kernel_shape": [2, 2], "p": 4, "auto_pad": "SAME_LOWER"}, 18),
    ({"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}, 11),
])
def test_lppool(attrs, opset, workdir):
    want = onnxruntime_outputs(one_node("LpPool", {"x": XP}, {"y": (F, None)}, opset=opset, **attrs), {"x": XP})
    m = one_node("LpPool", {"x": XP}, {"y": (F, want[0].shape)}, opset=opset, **attrs)
    check_against_onnxruntime(m, {"x": XP}, T, workdir)


def test_lppool_1d_and_3d(workdir):
    x1 = rng.standard_normal((1, 2, 11)).astype(F)
    m = one_node("LpPool", {"x": x1}, {"y": (F, (1, 2, 5))}, kernel_shape=[3], strides=[2], p=3)
    check_against_onnxruntime(m, {"x": x1}, T, workdir)
    x3 = rng.standard_normal((1, 2, 4, 5, 3)).astype(F)
    m = one_node("LpPool", {"x": x3}, {"y": (F, (1, 2, 3, 4, 2))}, kernel_shape=[2, 2, 2])
    check_against_onnxruntime(m, {"x": x3}, T, workdir)


@pytest.mark.parametrize("x,attrs", [
    (XP, {"kernel_shape": [3, 3]}),
    (XP, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 1, 0], "storage_order": 1}),
    (XP, {"kernel_shape": [2, 2], "dilations": [2, 3], "ceil_mode": 1, "strides": [2, 2]}),
    (XP, {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2], "storage_order": 1}),
    (rng.standard_normal((2, 2, 5, 4, 6)).astype(F), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2]}),
    (rng.standard_normal((2, 2, 5, 4, 6)).astype(F), {"kernel_shape": [2, 2, 3], "storage_order": 1}),
    (np.round(XP * 2), {"kernel_shape": [3, 3], "strides": [2, 2]}),  # ties: the first in window order
])
def test_maxpool_indices(x, attrs, workdir):
    want = onnxruntime_outputs(one_node("MaxPool", {"x": x}, {"y": (F, None)}, opset=12, **attrs), {"x": x})
    shape = want[0].shape
    m = one_node("MaxPool", {"x": x}, {"y": (F, shape), "i": (np.int64, shape)}, opset=12, **attrs)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_maxpool_integer(dtype, workdir):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (2, 3, 7, 6)).astype(dtype)
    x[0, 0, :3, :3] = info.min  # a window of the smallest value only
    x[1, 1, 2:5, 1:4] = info.max
    m = one_node("MaxPool", {"x": x}, {"y": (dtype, (2, 3, 4, 3))}, opset=12, kernel_shape=[3, 3],
                 strides=[2, 2], pads=[1, 1, 1, 1])
    check_against_onnxruntime(m, {"x": x}, T, workdir)
    m = one_node("MaxPool", {"x": x}, {"y": (dtype, (2, 3, 5, 4)), "i": (np.int64, (2, 3, 5, 4))}, opset=12,
                 kernel_shape=[3, 3])
    check_against_onnxruntime(m, {"x": x}, T, workdir)


# -- Dropout's mask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [12, 22])
def test_dropout_mask_in_inference(opset, workdir):
    x = rng.standard_normal((3, 4)).astype(F)
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"]), helper.make_node("Relu", ["y"], ["z"])]
    m = make_model(nodes, {"x": (F, x.shape)}, {"z": (F, x.shape), "mask": (np.bool_, x.shape)}, opset=opset)
    got = compile_and_run(m, T, {"x": x}, workdir)[0]
    want = onnxruntime_outputs(m, {"x": x})
    assert_close(got[0], want[0])
    assert got[1].dtype == np.bool_ and got[1].all() and want[1].all()
    # a mask nobody reads, from a Dropout with a constant zero ratio in training mode: y alone
    nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["y", "unread"])]
    m = make_model(nodes, {"x": (F, x.shape)}, {"y": (F, x.shape)}, {"r": np.array(0.0, F), "t": np.array(True)},
                   opset=opset)
    assert_close(compile_and_run(m, T, {"x": x}, workdir)[0][0], x)


def test_dropout_mask_before_opset_12_is_refused_when_read(workdir):
    """Before opset 12 the mask's value in inference is open (onnxruntime: 0s, the onnx
    reference: 1s): refused when read, fine when not (old exporters list it)."""
    x = rng.standard_normal((2, 3)).astype(F)
    m = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], {"x": (F, x.shape)},
                   {"y": (F, x.shape), "mask": (F, x.shape)}, opset=7)
    with pytest.raises(UnsupportedError, match=r"node 'drop' \(Dropout\): optional outputs \['mask'\]"):
        compile_onnx(m, T)
    m = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], {"x": (F, x.shape)},
                   {"y": (F, x.shape)}, opset=7)
    assert_close(compile_and_run(m, T, {"x": x}, workdir)[0][0], x)


# -- one model of them all, elsewhere ---------------------------------------------------------------
def mixed_model():
    x = rng.standard_normal((2, 4, 6, 5)).astype(F)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "w"], ["ln", "mean", "inv"], axis=2),
        helper.make_node("GroupNormalization", ["ln", "gs", "gb"], ["gn"], num_groups=2),
        helper.make_node("MaxPool", ["gn"], ["mp", "mi"], kernel_shape=[2, 2], pads=[1, 0, 0, 1], storage_order=1),
        helper.make_node("LpPool", ["x"], ["lp"], kernel_shape=[3, 2], p=3, strides=[1, 2]),
        helper.make_node("TopK", ["lp", "k"], ["tv", "ti"], axis=2, largest=0),
        helper.make_node("MeanVarianceNormalization", ["tv"], ["mvn"]),
        helper.make_node("Dropout", ["mvn"], ["dr", "mask"]),
        helper.make_node("ReduceSum", ["inv", "rax"], ["s"], keepdims=0),
    ]
    inits = {"w": rng.standard_normal((6, 5)).astype(F), "gs": rng.standard_normal(4).astype(F),
             "gb": rng.standard_normal(4).astype(F), "k": I(3), "rax": I(2, 3)}
    outs = {"mean": (F, (2, 4, 1, 1)), "mp": (F, (2, 4, 6, 5)), "mi": (np.int64, (2, 4, 6, 5)),
            "ti": (np.int64, (2, 4, 3, 2)), "dr": (F, (2, 4, 3, 2)), "mask": (np.bool_, (2, 4, 3, 2)),
            "s": (F, (2, 4))}
    return make_model(nodes, {"x": (F, x.shape)}, outs, inits, opset=21), {"x": x}


def test_mixed_model_on_cortex_a76(workdir):
    m, feeds = mixed_model()
    check_against_onnxruntime(m, feeds, "cortex-a76", workdir)


def test_mixed_model_c_path_under_ubsan(workdir):
    m, feeds = mixed_model()
    got = run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-norm2")[0]
    for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(m, feeds))):
        assert_close(g, w, what=f"output {j}")


def test_integer_ops_c_path_under_ubsan(workdir):
    """CumProd on int64, MaxPool on uint8 with Indices, TopK on uint8 (unsigned compares) in C."""
    x = rng.integers(0, 256, (2, 3, 6, 5)).astype(np.uint8)
    c = rng.integers(-3, 4, (3, 5)).astype(np.int64)
    nodes = [helper.make_node("CumProd", ["c", "a"], ["cp"], exclusive=1, reverse=1),
             helper.make_node("MaxPool", ["x"], ["mp", "mi"], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1]),
             helper.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=2)]
    outs = {"cp": (np.int64, (3, 5)), "mp": (np.uint8, (2, 3, 3, 5)), "mi": (np.int64, (2, 3, 3, 5)),
            "tv": (np.uint8, (2, 3, 4, 5)), "ti": (np.int64, (2, 3, 4, 5))}
    m = make_model(nodes, {"x": (np.uint8, x.shape), "c": (np.int64, c.shape)}, outs, {"a": np.array(1), "k": I(4)},
                   opset=26)
    feeds = {"x": x, "c": c}
    got = run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-int")[0]
    for j, (g, w) in enumerate(zip(got, ReferenceEvaluator(m).run(None, feeds))):
        np.testing.assert_array_equal(g, w, err_msg=f"output {j}")


def test_constant_inputs_fold(workdir):
    """On constants the new ops fold at import (their numpy references): nothing is left to run."""
    x = rng.standard_normal((2, 3, 4, 4)).astype(F)
    nodes = [helper.make_node("TopK", ["c", "k"], ["tv", "ti"], axis=1),
             helper.make_node("MaxPool", ["c"], ["mp", "mi"], kernel_shape=[2, 2]),
             helper.make_node("LayerNormalization", ["c", "w"], ["ln", "mean", "inv"], axis=2),
             helper.make_node("Add", ["x", "inv"], ["y"])]
    outs = {"tv": (F, (2, 2, 4, 4)), "ti": (np.int64, (2, 2, 4, 4)), "mi": (np.int64, (2, 3, 3, 3)),
            "mean": (F, (2, 3, 1, 1)), "y": (F, x.shape)}
    inits = {"c": x, "k": I(2), "w": np.ones((4, 4), F)}
    m = make_model(nodes, {"x": (F, x.shape)}, outs, inits, opset=18)
    graph = compile_onnx(m, T).graph
    assert [n.op for n in graph.nodes if n.op not in ("edgec.Copy",)] == ["Add"]
    check_against_onnxruntime(m, {"x": x}, T, workdir)


# -- bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,feeds,inits,outs,attrs,opset,kind,text", [
    ("TopK", {"x": XT}, {"k": I(8)}, 2, {"axis": 1}, 11, InvalidModelError, "out of range"),
    ("TopK", {"x": XT}, {"k": I(2, 3)}, 2, {}, 11, InvalidModelError, "must be a scalar"),
    ("TopK", {"x": XT, "k": I(2)}, None, 2, {}, 11, UnsupportedError, "must be a compile-time constant"),
    ("TopK", {"x": XT}, {"k": I(2)}, 2, {"axis": 3}, 11, InvalidModelError, "axis 3 out of range"),
    ("TopK", {"x": XT > 0}, {"k": I(2)}, 2, {}, 11, InvalidModelError, "must be"),
    ("GroupNormalization", {"x": X4}, {"s": np.ones(6, F), "b": np.ones(6, F)}, 1, {"num_groups": 4}, 21,
     InvalidModelError, "does not divide"),
    ("GroupNormalization", {"x": X4}, {"s": np.ones(2, F), "b": np.ones(2, F)}, 1, {"num_groups": 2}, 21,
     InvalidModelError, "expected (6,)"),
    ("MeanVarianceNormalization", {"x": X4[0]}, None, 1, {}, 13, InvalidModelError, "out of range"),
    ("MeanVarianceNormalization", {"x": X4}, None, 1, {"axes": [1, -3]}, 13, InvalidModelError, "repeat"),
    ("LpPool", {"x": XP}, None, 1, {"kernel_shape": [2, 2], "p": 0}, 18, InvalidModelError, "positive integer"),
    ("LpPool", {"x": XP.astype(np.float64)}, None, 1, {"kernel_shape": [2, 2]}, 18, UnsupportedError,
     "needs float32"),
    ("MaxPool", {"x": XP}, None, 2, {"kernel_shape": [2, 2], "storage_order": 2}, 12, InvalidModelError,
     "storage_order"),
    ("MaxPool", {"x": XP.astype(np.float64)}, None, 1, {"kernel_shape": [2, 2]}, 12, UnsupportedError,
     "needs float32 or int8 or uint8"),
    ("CumProd", {"x": XI.astype(np.int16)}, {"a": I(0)}, 1, {}, 26,
     InvalidModelError, "must be"),
    ("CumProd", {"x": XC}, {"a": np.array(3)}, 1, {}, 26, InvalidModelError, "out of range"),
    ("LayerNormalization", {"x": X4}, {"w": np.ones(4, F)}, 3, {"stash_type": 16}, 17, UnsupportedError,
     "optional outputs ['z', 'w2'] are not supported"),
])
def test_bad_inputs(op, feeds, inits, outs, attrs, opset, kind, text):
    names = list(feeds) + list(inits or {})
    out_names = ["y", "z", "w2"][:outs]
    m = make_model([helper.make_node(op, names, out_names, name="bad", **attrs)],
                   {k: (v.dtype, v.shape) for k, v in feeds.items()}, {o: (F, None) for o in out_names}, inits,
                   opset=opset)
    with pytest.raises((InvalidModelError, UnsupportedError)) as e:
        compile_onnx(m, T)
    msg = str(e.value)
    assert e.type is kind and (text in msg or SCHEMA_REFUSAL.search(msg)) and "node 'bad'" in msg \
        and f"({op})" in msg, msg


# -- a bounded batch (--dim N<=4) ------------------------------------------------------------------
def bounded_model(with_indices):
    nodes = [helper.make_node("LayerNormalization", ["x", "w"], ["ln", "mean", "inv"], axis=1),
             helper.make_node("GroupNormalization", ["ln", "gs", "gb"], ["gn"], num_groups=2),
             helper.make_node("MeanVarianceNormalization", ["gn"], ["mvn"], axes=[1, 2, 3]),
             helper.make_node("TopK", ["mvn", "k"], ["tv", "ti"], axis=3),
             helper.make_node("LpPool", ["tv"], ["lp"], kernel_shape=[2, 2])]
    outs = {"mean": (F, ["N", 1, 1, 1]), "ti": (np.int64, ["N", 4, 5, 3]), "lp": (F, ["N", 4, 4, 2])}
    if with_indices:
        nodes.append(helper.make_node("MaxPool", ["x"], ["mp", "mi"], kernel_shape=[2, 2], name="pool"))
        outs["mi"] = (np.int64, ["N", 4, 4, 5])
    inits = {"w": rng.standard_normal((4, 5, 6)).astype(F), "gs": rng.standard_normal(4).astype(F),
             "gb": rng.standard_normal(4).astype(F), "k": I(3)}
    return make_model(nodes, {"x": (F, ["N", 4, 5, 6])}, outs, inits, opset=21)


def test_bounded_batch(workdir):
    """The item-wise ops run once per item; MaxPool's Indices count from the batch's first
    element, so a MaxPool with Indices is refused in a bounded batch."""
    m = bounded_model(False)
    path = workdir / "norm2-bounded.onnx"
    onnx.save(m, path)
    build(path, T, "model", workdir / "norm2-bounded", dims={"N": (1, 4)})
    profile = get_profile(T)
    exe = link_harness(workdir / "norm2-bounded", "model", profile)
    for n in (1, 3):
        x = rng.standard_normal((n, 4, 5, 6)).astype(F)
        want = onnxruntime_outputs(m, {"x": x})
        got = run_model(exe, profile, [x], [(w.dtype, w.shape) for w in want], env={"EDGEC_DIMS": str(n)}).outputs
        for j, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, what=f"N={n} output {j}")
    with pytest.raises(UnsupportedError, match=r"node 'pool' \(MaxPool\) mixes items of the batch"):
        compile_onnx(bounded_model(True), T, dims={"N": (1, 4)})
