"""The node suite's small leftovers: operands bound at build time that used to be refused
(Compress's condition, Loop's trip count: the error now names the graph input, and a 0-d
input binds as a scalar), Not/Binarizer/ArrayFeatureExtractor and the ai.onnx.ml domain,
opsets 1..5 where every op means what its opset-6+ version does, Dropout's zero ratio in
training mode, BatchNormalization in training mode, the Optional ops on tensors,
MaxUnpool, TensorScatter, RoiAlign. References: numpy (float64 where it computes), onnx's
ReferenceEvaluator, onnxruntime; the bad inputs are named errors."""
import numpy as np
import onnx
import pytest
from onnx import helper

from onnx.reference import ReferenceEvaluator

from helpers import assert_close, compile_and_run, make_model, onnxruntime_outputs, without_output_shapes
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError
from toolchain.frontend.binding import resolve

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(5)


def model(nodes, feeds, outs, inits=None, opset=18):
    """outs: name -> array of the expected shape and dtype."""
    return make_model(nodes, {k: (v.dtype, v.shape) for k, v in feeds.items()},
                      {k: (v.dtype, v.shape) for k, v in outs.items()}, inits, opset=opset)


def compile_error(m, kind=CompileError, **kw):
    with pytest.raises(kind) as e:
        compile_onnx(m, T, **kw)
    return e.value


# -- binding ------------------------------------------------------------------------------
def test_a_scalar_input_binds_as_a_scalar():
    vi = helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [])
    g = helper.make_graph([], "g", [vi], [vi])
    m = helper.make_model(g)
    assert resolve(m, {"s": np.array(2.5, F)})["s"].shape == ()
    assert resolve(m, {"s": 2.5})["s"].shape == ()


def test_compress_condition_from_a_graph_input_names_it_and_binds(tmp_path):
    x = rng.standard_normal((3, 4)).astype(F)
    cond = np.array([True, False, True, True])
    want = np.compress(cond, x, axis=1)
    m = model([helper.make_node("Compress", ["x", "c"], ["y"], axis=1)], {"x": x, "c": cond}, {"y": want})
    e = compile_error(m, UnsupportedError)
    assert "'c'" in str(e) and "--bind c=" in str(e) and e.bind_inputs == ["c"]
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path, bind={"c": cond})
    np.testing.assert_array_equal(got[0], want)


def test_loop_trip_count_from_a_graph_input_names_it_and_binds(tmp_path):
    """A Range written as a Loop (onnx's Range function body): start, limit and delta
    scalars decide the trip count; bound, the loop unrolls."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["prev", "delta"], ["cur"]),
         helper.make_node("Identity", ["prev"], ["range"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("prev", onnx.TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("cur", onnx.TensorProto.FLOAT, []),
         helper.make_tensor_value_info("range", onnx.TensorProto.FLOAT, [])])
    nodes = [helper.make_node("Sub", ["limit", "start"], ["d"]),
             helper.make_node("Div", ["d", "delta"], ["q"]),
             helper.make_node("Ceil", ["q"], ["c"]),
             helper.make_node("Cast", ["c"], ["n"], to=onnx.TensorProto.INT64),
             helper.make_node("Loop", ["n", "", "start"], ["last", "y"], body=body)]
    start, limit, delta = np.array(1.5, F), np.array(6.0, F), np.array(1.25, F)
    want = np.arange(1.5, 6.0, 1.25, dtype=np.float64).astype(F)
    m = model(nodes, {"start": start, "limit": limit, "delta": delta}, {"y": want}, opset=13)
    e = compile_error(without_output_shapes(m), UnsupportedError)
    assert "trip count" in str(e) and set(e.bind_inputs) == {"start", "limit", "delta"}
    got, _, _ = compile_and_run(m, T, {}, tmp_path, bind={"start": start, "limit": limit, "delta": delta})
    assert got[0].shape == want.shape
    assert_close(got[0], want)


# -- opsets 1..5 --------------------------------------------------------------------------
def test_opset_1_model_whose_ops_are_unchanged_by_opset_6_builds(tmp_path):
    x = rng.random((3, 4)) > 0.5
    w = rng.standard_normal((2, 1, 3, 3)).astype(F)
    img = rng.standard_normal((1, 1, 5, 5)).astype(F)
    nodes = [helper.make_node("Not", ["x"], ["y"]),
             helper.make_node("Conv", ["img", "w"], ["z"])]  # Conv-1 is Conv in opset 6..10
    want_z = np.zeros((1, 2, 3, 3))
    for o in range(2):
        for i in range(3):
            for j in range(3):
                want_z[0, o, i, j] = (img[0, 0, i:i + 3, j:j + 3].astype(np.float64) * w[o, 0]).sum()
    m = model(nodes, {"x": x, "img": img}, {"y": x, "z": want_z.astype(F)}, {"w": w}, opset=1)
    got, _, _ = compile_and_run(m, T, {"x": x, "img": img}, tmp_path)
    np.testing.assert_array_equal(got[0], ~x)
    assert_close(got[1], want_z.astype(F))


def test_opset_1_model_with_an_op_changed_by_opset_6_is_refused_naming_it():
    x = rng.standard_normal((2, 3)).astype(F)
    m = model([helper.make_node("Not", ["b"], ["nb"]), helper.make_node("Relu", ["x"], ["y"], name="r")],
              {"b": np.array([True]), "x": x}, {"nb": np.array([True]), "y": x}, opset=1)
    msg = str(compile_error(m, UnsupportedError))
    assert "'r' (Relu)" in msg and "Relu-1" in msg and "Relu-6" in msg and "opset 1" in msg


# -- Dropout in training mode -------------------------------------------------------------
def test_training_dropout_with_ratio_zero_is_identity_with_a_true_mask(tmp_path):
    x = rng.standard_normal((3, 4)).astype(F)
    m = model([helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"], seed=3)], {"x": x, "r": np.array(0, F),
              "t": np.array(True)}, {"y": x, "mask": np.ones(x.shape, bool)}, opset=13)
    e = compile_error(m, UnsupportedError)
    assert "'r'" in str(e) and set(e.bind_inputs) == {"r", "t"}
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path, bind={"r": np.array(0, F), "t": np.array(True)})
    np.testing.assert_array_equal(got[0], x)
    assert got[1].dtype == np.bool_ and got[1].all()


def test_training_dropout_with_a_nonzero_ratio_is_refused():
    x = rng.standard_normal((3, 4)).astype(F)
    m = model([helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="d")], {"x": x}, {"y": x},
              {"r": np.array(0.25, F), "t": np.array(True)}, opset=13)
    msg = str(compile_error(m, UnsupportedError))
    assert "'d' (Dropout)" in msg and "random" in msg


# -- ai.onnx.ml: Binarizer, ArrayFeatureExtractor ----------------------------------------
def ml_model(nodes, feeds, outs, inits=None):
    m = model(nodes, feeds, outs, inits)
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    return m


def ml(op, ins, outs, **kw):
    return helper.make_node(op, ins, outs, domain="ai.onnx.ml", **kw)


@pytest.mark.parametrize("dtype,threshold", [(np.float32, 0.25), (np.float64, -1.0), (np.int64, 2.5),
                                             (np.int32, -3.0)])
def test_binarizer(dtype, threshold, tmp_path):
    x = (rng.standard_normal((3, 7)) * 4).astype(dtype)
    if dtype == np.float32:
        x[0, 0], x[0, 1] = np.nan, threshold  # NaN > t is false; t > t is false
    want = np.where(x.astype(np.float64) > threshold, 1, 0).astype(dtype)
    m = ml_model([ml("Binarizer", ["x"], ["y"], threshold=threshold)], {"x": x}, {"y": want})
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path)
    assert got[0].dtype == want.dtype
    np.testing.assert_array_equal(got[0], want)
    if dtype != np.float32:  # onnxruntime's Binarizer is float32 only
        return
    ok = ~np.isnan(x.astype(np.float64))
    x_ort = np.where(ok, x, 0).astype(dtype)  # onnxruntime refuses a NaN (the onnx reference: 0)
    want_ort = onnxruntime_outputs(m, {"x": x_ort})[0]
    np.testing.assert_array_equal(got[0][ok], want_ort[ok])


@pytest.mark.parametrize("shape,indices", [((3, 5), [4, 0, 0, 2]), ((2, 3, 6), [[5, 1]]), ((6,), [3, 1])])
def test_array_feature_extractor_constant_indices(shape, indices, tmp_path):
    x = rng.standard_normal(shape).astype(F)
    idx = np.array(indices, np.int64)
    want = ReferenceEvaluator(ml_model([ml("ArrayFeatureExtractor", ["x", "i"], ["y"])], {"x": x},
                                       {"y": x}, {"i": idx})).run(None, {"x": x})[0]
    m = ml_model([ml("ArrayFeatureExtractor", ["x", "i"], ["y"])], {"x": x}, {"y": want}, {"i": idx})
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path)
    assert got[0].shape == want.shape
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[0], onnxruntime_outputs(m, {"x": x})[0])


def test_array_feature_extractor_bound_indices_and_bad_ones(tmp_path):
    x = rng.integers(-50, 50, (4, 5)).astype(np.int64)
    idx = np.array([1, 3], np.int64)
    m = ml_model([ml("ArrayFeatureExtractor", ["x", "i"], ["y"], name="afe")], {"x": x, "i": idx},
                 {"y": x[:, idx]})
    e = compile_error(without_output_shapes(m), UnsupportedError)
    assert "'afe'" in str(e) and e.bind_inputs == ["i"]
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path, bind={"i": idx})
    np.testing.assert_array_equal(got[0], x[:, idx])
    bad = ml_model([ml("ArrayFeatureExtractor", ["x", "i"], ["y"], name="afe")], {"x": x}, {"y": x[:, :2]},
                   {"i": np.array([1, 5], np.int64)})
    msg = str(compile_error(bad, InvalidModelError))
    assert "'afe'" in msg and "index 5" in msg


def test_other_ml_ops_and_ml_ops_in_the_default_domain_are_refused():
    x = rng.standard_normal((2, 3)).astype(F)
    m = ml_model([ml("Normalizer", ["x"], ["y"], name="nrm", norm="MAX")], {"x": x}, {"y": x})
    msg = str(compile_error(m, UnsupportedError))
    assert "'nrm' (Normalizer)" in msg and "ai.onnx.ml" in msg and "Binarizer" in msg
    m = model([helper.make_node("Binarizer", ["x"], ["y"], name="b")], {"x": x}, {"y": x})
    assert "'b' (Binarizer)" in str(compile_error(m))


# -- the Optional ops on tensors ----------------------------------------------------------
def test_optional_has_element_and_get_element_on_tensors(tmp_path):
    x = rng.standard_normal((2, 3)).astype(F)
    nodes = [helper.make_node("OptionalHasElement", ["x"], ["has"]),
             helper.make_node("OptionalHasElement", [""], ["none"]),
             helper.make_node("OptionalHasElement", [], ["none2"]),
             helper.make_node("OptionalGetElement", ["x"], ["y0"]),
             helper.make_node("Relu", ["y0"], ["y"])]
    outs = {"has": np.array(True), "none": np.array(False), "none2": np.array(False), "y": x}
    m = model(nodes, {"x": x}, outs)
    want = ReferenceEvaluator(m).run(None, {"x": x})
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path)
    for g, w in zip(got, want):
        assert g.shape == np.asarray(w).shape and g.dtype == np.asarray(w).dtype
        np.testing.assert_array_equal(g, w)
    assert got[0] and not got[1] and not got[2]


def test_optional_bad_uses_are_named():
    x = rng.standard_normal((2,)).astype(F)
    m = model([helper.make_node("OptionalGetElement", [""], ["y"], name="get")], {}, {"y": x})
    assert "'get' (OptionalGetElement)" in str(compile_error(m))
    opt = helper.make_value_info("o", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2])))
    g = helper.make_graph([helper.make_node("OptionalHasElement", ["o"], ["h"])], "g", [opt],
                          [helper.make_tensor_value_info("h", onnx.TensorProto.BOOL, [])])
    msg = str(compile_error(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), UnsupportedError))
    assert "'o'" in msg and "not a tensor" in msg


# -- BatchNormalization in training mode --------------------------------------------------
def bn_training_numpy(x, s, b, mean, var, eps, mom):
    axes, shape = (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    bm, bv = x64.mean(axis=axes), x64.var(axis=axes)
    y = (x64 - bm.reshape(shape)) / np.sqrt(bv.reshape(shape) + eps) * s.reshape(shape) + b.reshape(shape)
    return [a.astype(F) for a in (y, mean * mom + bm * (1 - mom), var * mom + bv * (1 - mom))]


@pytest.mark.parametrize("shape,outputs,attrs", [((2, 3, 4, 5), 3, {}), ((6, 4), 3, {"momentum": 0.7, "epsilon": 1e-2}),
                                                 ((2, 3, 7), 1, {})])
def test_batchnorm_training_mode(shape, outputs, attrs, tmp_path):
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(F)
    s, b = rng.standard_normal(c).astype(F), rng.standard_normal(c).astype(F)
    mean, var = rng.standard_normal(c).astype(F), rng.random(c).astype(F) + 0.5
    want = bn_training_numpy(x, s, b, mean, var, attrs.get("epsilon", 1e-5), attrs.get("momentum", 0.9))[:outputs]
    names = ["y", "rm", "rv"][:outputs]
    m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], names, training_mode=1, **attrs)],
              {"x": x, "s": s, "b": b, "mean": mean, "var": var}, dict(zip(names, want)), opset=15)
    feeds = {"x": x, "s": s, "b": b, "mean": mean, "var": var}
    got, _, _ = compile_and_run(m, T, feeds, tmp_path)
    ref = ReferenceEvaluator(m).run(None, feeds)
    for j, (g, w, r) in enumerate(zip(got, want, ref)):
        assert g.shape == w.shape
        assert_close(g, w, what=f"output {j}")
        assert_close(g, r, what=f"output {j} (onnx reference)")


def test_batchnorm_training_mode_after_a_conv_is_not_folded_into_it(tmp_path):
    """The inference form folds into a Conv with constant statistics; the training form
    normalizes by the batch's statistics whatever the given ones."""
    x = rng.standard_normal((2, 2, 5, 5)).astype(F)
    w = rng.standard_normal((3, 2, 3, 3)).astype(F)
    s, b = np.ones(3, F), np.zeros(3, F)
    mean, var = np.full(3, 10.0, F), np.full(3, 100.0, F)
    conv = np.zeros((2, 3, 3, 3))
    for n, o, i, j in np.ndindex(conv.shape):
        conv[n, o, i, j] = (x[n, :, i:i + 3, j:j + 3].astype(np.float64) * w[o]).sum()
    want = bn_training_numpy(conv, s, b, mean, var, 1e-5, 0.9)[0]
    m = model([helper.make_node("Conv", ["x", "w"], ["c"]),
               helper.make_node("BatchNormalization", ["c", "s", "b", "mean", "var"], ["y"], training_mode=1)],
              {"x": x}, {"y": want}, {"w": w, "s": s, "b": b, "mean": mean, "var": var}, opset=15)
    got, _, _ = compile_and_run(m, T, {"x": x}, tmp_path)
    assert_close(got[0], want)


def test_batchnorm_training_mode_bad_inputs():
    x = rng.standard_normal((2, 3)).astype(np.float64)
    p = np.ones(3)
    m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1, name="bn")],
              {"x": x}, {"y": x}, {"s": p, "b": p, "m": p, "v": p}, opset=15)
    msg = str(compile_error(m, UnsupportedError))
    assert "'bn' (BatchNormalization)" in msg and "float64" in msg and "training_mode=1" in msg
    x, p = x.astype(F), np.ones(4, F)
    m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1, name="bn")],
              {"x": x}, {"y": x}, {"s": p, "b": p, "m": p, "v": p}, opset=15)
    msg = str(compile_error(m, InvalidModelError))
    assert "'bn' (BatchNormalization)" in msg and "[3]" in msg


# -- MaxUnpool ------------------------------------------------------------------------------
def unpool_numpy(x, idx, unpooled, shape):
    y = np.zeros(int(np.prod(unpooled)), x.dtype)
    for v, j in zip(x.reshape(-1), idx.reshape(-1)):
        if 0 <= j < y.size:
            y[j] = v
    out = np.zeros(shape, x.dtype)
    out[tuple(slice(0, u) for u in unpooled)] = y.reshape(unpooled)
    return out


@pytest.mark.parametrize("shape,kernel,strides,pads,out_shape", [
    ((2, 3, 6, 8), [2, 2], [2, 2], [0, 0, 0, 0], None),
    ((1, 2, 7, 7), [3, 3], [2, 2], [1, 1, 1, 1], [1, 2, 8, 9]),
    ((2, 2, 9), [3], [3], [0, 0], None)])
def test_maxunpool_puts_maxpool_values_back(shape, kernel, strides, pads, out_shape, tmp_path):
    """MaxPool's Indices (from onnxruntime) into MaxUnpool: the maxima back in place."""
    x = rng.standard_normal(shape).astype(F)
    pool = make_model([helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=kernel, strides=strides,
                                        pads=pads)], {"x": (F, shape)}, {"p": (F, None), "i": (np.int64, None)},
                      opset=18)
    p, i = onnxruntime_outputs(pool, {"x": x})
    spatial = [(p.shape[2 + d] - 1) * strides[d] - pads[d] - pads[len(kernel) + d] + kernel[d]
               for d in range(len(kernel))]
    unpooled = [*shape[:2], *spatial]
    want = unpool_numpy(p, i, unpooled, out_shape or unpooled)
    ins = ["p", "i"] + (["s"] if out_shape else [])
    m = model([helper.make_node("MaxUnpool", ins, ["y"], kernel_shape=kernel, strides=strides, pads=pads)],
              {"p": p, "i": i}, {"y": want}, {"s": np.array(out_shape, np.int64)} if out_shape else None)
    got, _, _ = compile_and_run(m, T, {"p": p, "i": i}, tmp_path)
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[0], ReferenceEvaluator(m).run(None, {"p": p, "i": i})[0])


def test_maxunpool_skips_out_of_range_indices_and_names_bad_shapes(tmp_path):
    p = rng.standard_normal((1, 1, 2, 2)).astype(F)
    i = np.array([[[[0, 99], [-1, 15]]]], np.int64)  # 99 and -1 are outside the 4x4 output
    want = unpool_numpy(p, i, [1, 1, 4, 4], [1, 1, 4, 4])
    m = model([helper.make_node("MaxUnpool", ["p", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
              {"p": p, "i": i}, {"y": want})
    got, _, _ = compile_and_run(m, T, {"p": p, "i": i}, tmp_path)
    np.testing.assert_array_equal(got[0], want)
    assert np.count_nonzero(got[0]) == 2
    small = model([helper.make_node("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                    name="mu")], {"p": p, "i": i}, {"y": want}, {"s": np.array([1, 1, 3, 4], np.int64)})
    msg = str(compile_error(small, InvalidModelError))
    assert "'mu'" in msg and "output_shape" in msg
    runtime = model([helper.make_node("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                    {"p": p, "i": i, "s": np.array([1, 1, 4, 4], np.int64)}, {"y": want})
    assert compile_error(without_output_shapes(runtime), UnsupportedError).bind_inputs == ["s"]


# -- TensorScatter --------------------------------------------------------------------------
def scatter_numpy(past, upd, w, axis, circular):
    out, n = past.copy(), past.shape[axis]
    for pre in np.ndindex(past.shape[:axis]):
        for s in range(upd.shape[axis]):
            q = int(w[pre[0]]) + s
            q = q % n if circular else q
            if 0 <= q < n:
                out[pre + (q,)] = upd[pre + (s,)]
    return out


@pytest.mark.parametrize("past_shape,upd_len,axis,mode,w", [
    ((2, 3, 6, 4), 2, -2, "linear", [0, 3]),
    ((2, 3, 6, 4), 3, 2, "circular", [5, 2]),
    ((3, 5, 2), 2, 1, "linear", None),
    ((2, 6), 4, 1, "circular", [4, 0])])
def test_tensorscatter(past_shape, upd_len, axis, mode, w, tmp_path):
    past = rng.standard_normal(past_shape).astype(F)
    us = list(past_shape)
    us[axis] = upd_len
    upd = rng.standard_normal(us).astype(F)
    feeds = {"past": past, "upd": upd}
    if w is not None:
        feeds["w"] = np.array(w, np.int64)
    want = scatter_numpy(past, upd, feeds.get("w", np.zeros(past_shape[0], np.int64)), axis % len(past_shape),
                         mode == "circular")
    m = model([helper.make_node("TensorScatter", list(feeds), ["y"], axis=axis, mode=mode)], feeds, {"y": want},
              opset=24)
    got, _, _ = compile_and_run(m, T, feeds, tmp_path)
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[0], ReferenceEvaluator(m).run(None, feeds)[0])


def test_tensorscatter_linear_past_the_end_is_skipped_and_bad_uses_named(tmp_path):
    past, upd = rng.standard_normal((2, 4, 3)).astype(F), rng.standard_normal((2, 2, 3)).astype(F)
    w = np.array([3, -1], np.int64)  # item 0 writes positions 3 and 4 (4: skipped), item 1 -1 (skipped) and 0
    want = scatter_numpy(past, upd, w, 1, False)
    m = model([helper.make_node("TensorScatter", ["p", "u", "w"], ["y"], axis=1)], {"p": past, "u": upd, "w": w},
              {"y": want}, opset=24)
    got, _, _ = compile_and_run(m, T, {"p": past, "u": upd, "w": w}, tmp_path)
    np.testing.assert_array_equal(got[0], want)
    for attrs, what in (({"axis": 0}, "batch axis"), ({"mode": "ring"}, "mode")):
        bad = model([helper.make_node("TensorScatter", ["p", "u"], ["y"], name="ts", **attrs)], {"p": past, "u": upd},
                    {"y": past}, opset=24)
        msg = str(compile_error(bad))
        assert "'ts' (TensorScatter)" in msg and what in msg
    long = model([helper.make_node("TensorScatter", ["u", "p"], ["y"], name="ts", axis=1)], {"p": past, "u": upd},
                 {"y": upd}, opset=24)
    assert "'ts' (TensorScatter)" in str(compile_error(long, InvalidModelError))


# -- RoiAlign -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,ctm,scale,ratio", [("avg", "half_pixel", 1.0, 2), ("avg", "output_half_pixel", 0.5, 3),
                                                  ("max", "half_pixel", 0.25, 2), ("max", "output_half_pixel", 1.0, 1)])
def test_roialign(mode, ctm, scale, ratio, tmp_path):
    x = rng.standard_normal((2, 3, 9, 11)).astype(F)
    # regions inside, across the border, tiny, and one wholly outside; both batch items
    rois = np.array([[1.0, 1.5, 6.0, 7.0], [-3.0, 2.0, 14.0, 8.5], [4.2, 4.1, 4.3, 4.2], [30.0, 30.0, 40.0, 45.0],
                     [0.0, 0.0, 10.0, 8.0]], F) / (scale if scale < 1 else 1)
    bi = np.array([0, 1, 1, 0, 1], np.int64)
    feeds = {"x": x, "rois": rois, "bi": bi}
    node = helper.make_node("RoiAlign", ["x", "rois", "bi"], ["y"], mode=mode, coordinate_transformation_mode=ctm,
                            output_height=4, output_width=3, sampling_ratio=ratio, spatial_scale=scale)
    m = model([node], feeds, {"y": np.zeros((5, 3, 4, 3), F)})
    got, _, _ = compile_and_run(m, T, feeds, tmp_path)
    assert_close(got[0], ReferenceEvaluator(m).run(None, feeds)[0], what="against the onnx reference")
    assert_close(got[0], onnxruntime_outputs(m, feeds)[0], what="against onnxruntime")


def test_roialign_refusals_and_a_bad_batch_index_stays_inside(tmp_path):
    x = rng.standard_normal((2, 1, 5, 5)).astype(F)
    rois, bi = np.array([[0.0, 0.0, 4.0, 4.0]], F), np.array([7], np.int64)
    feeds = {"x": x, "rois": rois, "bi": bi}
    m = model([helper.make_node("RoiAlign", ["x", "rois", "bi"], ["y"], name="ra", sampling_ratio=0)], feeds,
              {"y": np.zeros((1, 1, 1, 1), F)})
    msg = str(compile_error(m, UnsupportedError))
    assert "'ra' (RoiAlign)" in msg and "sampling_ratio" in msg
    m = model([helper.make_node("RoiAlign", ["x", "rois", "bi"], ["y"], sampling_ratio=2, output_height=2,
                                output_width=2)], feeds, {"y": np.zeros((1, 1, 2, 2), F)})
    got, _, _ = compile_and_run(m, T, feeds, tmp_path)  # batch index 7 of 2: clamped to the last item
    want = ReferenceEvaluator(m).run(None, {**feeds, "bi": np.array([1], np.int64)})[0]
    assert_close(got[0], want)


# -- one model of the new ops: the C backend, an emulated target ---------------------------
def mixed_model():
    x = rng.standard_normal((2, 3, 6, 6)).astype(F)
    past, upd = rng.standard_normal((2, 5, 3)).astype(F), rng.standard_normal((2, 2, 3)).astype(F)
    c = np.ones(3, F)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], training_mode=1),
             helper.make_node("MaxPool", ["n"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxUnpool", ["p", "i"], ["u"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("RoiAlign", ["u", "rois", "bi"], ["r"], output_height=2, output_width=3,
                              sampling_ratio=2, mode="max"),
             ml("Binarizer", ["r"], ["flags"], threshold=0.5),
             helper.make_node("TensorScatter", ["past", "upd", "w"], ["kv"], axis=1, mode="circular"),
             helper.make_node("OptionalHasElement", ["upd"], ["has"]),
             ml("ArrayFeatureExtractor", ["r", "cols"], ["picked"])]
    inits = {"s": c * 1.5, "b": c * 0.1, "m": c * 0, "v": c, "rois": np.array([[0.5, 1, 5, 4.5], [2, 0, 6, 6]], F),
             "bi": np.array([1, 0], np.int64), "w": np.array([4, 1], np.int64),
             "cols": np.array([2, 0, 2], np.int64)}
    m = model(nodes, {"x": x, "past": past, "upd": upd},
              {"r": np.zeros((2, 3, 2, 3), F), "flags": np.zeros((2, 3, 2, 3), F), "kv": past, "has": np.array(True),
               "picked": np.zeros((2, 3, 2, 3), F)},
              inits, opset=24)
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    return m, {"x": x, "past": past, "upd": upd}


@pytest.mark.parametrize("tgt,c_path", [(T, True), ("rv64gcv", False)])
def test_mixed_model_of_the_new_ops(tgt, c_path, tmp_path):
    from test_c_backend import run_c_path
    m, feeds = mixed_model()
    want = ReferenceEvaluator(m).run(None, feeds)
    got = run_c_path(m, tgt, feeds, tmp_path)[0] if c_path else compile_and_run(m, tgt, feeds, tmp_path)[0]
    for j, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.asarray(w).dtype
        assert_close(g, w, what=f"output {j}")
