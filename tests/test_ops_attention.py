"""Attention (opsets 23-25), RotaryEmbedding and RMSNormalization: attribute and input
variants compiled and run against onnxruntime, or against onnx's ReferenceEvaluator where
onnxruntime departs from the spec (a causal bias of -FLT_MAX instead of -inf in the mode-2
scores, a mask shorter than the keys refused) or lacks the form; our own float64 reference
against both; the C path and one model on cortex-a76; the refusals."""
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, compile_and_run, onnxruntime_outputs
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret

T = "x86-64-v3"
F = np.float32
ELEM = {np.dtype(F): TensorProto.FLOAT, np.dtype(bool): TensorProto.BOOL, np.dtype(np.int64): TensorProto.INT64,
        np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int32): TensorProto.INT32}
ATT_INPUTS = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
ATT_OUTPUTS = ["Y", "present_key", "present_value", "qk"]


def one_node_model(op, input_names, feeds, outputs, opset, **attrs):
    """One node; inputs named in input_names ("" for an omitted optional one) fed from feeds."""
    ins = list(input_names)
    while ins and ins[-1] == "":
        ins.pop()
    node = helper.make_node(op, ins, outputs, name="n0", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, ELEM[feeds[n].dtype], feeds[n].shape)
                                        for n in ins if n],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def attention(feeds, n_out=1, opset=23, **attrs):
    return one_node_model("Attention", [n if n in feeds else "" for n in ATT_INPUTS], feeds, ATT_OUTPUTS[:n_out],
                          opset, **attrs)


def rnd(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.standard_normal(shape).astype(F)


def feeds_of(seed, **shapes):
    r = rnd(seed)
    return {k: r(*v) for k, v in shapes.items()}


def fully_masked_bool(sq, total):
    """A (sq, total) bool mask with row 1 masked entirely and some holes elsewhere."""
    m = (np.arange(sq)[:, None] + np.arange(total)[None, :]) % 3 != 1
    m[1] = False
    return m


def _with(d, **more):
    return {**d, **more}


# name -> (feeds, outputs, opset, attributes)
ORT_CASES = {
    "4d_mha_diff_v_head": (feeds_of(0, Q=(2, 3, 4, 8), K=(2, 3, 6, 8), V=(2, 3, 6, 5)), 1, 23, {}),
    "3d_gqa_softcap_mode1": (feeds_of(1, Q=(2, 3, 16), K=(2, 5, 8), V=(2, 5, 6)), 4, 23,
                             dict(q_num_heads=4, kv_num_heads=2, softcap=1.5, qk_matmul_output_mode=1)),
    # mode 0 is the raw product even with a softcap (the spec; onnx's reference returns the capped one)
    "softcap_mode0_raw": (_with(feeds_of(2, Q=(1, 2, 3, 4), K=(1, 2, 5, 4), V=(1, 2, 5, 4))), 4, 23,
                          dict(softcap=0.7)),
    "causal_bool_mask_fully_masked_mode3": (_with(feeds_of(3, Q=(2, 2, 4, 4), K=(2, 2, 4, 4), V=(2, 2, 4, 3)),
                                                  attn_mask=fully_masked_bool(4, 4)), 4, 23,
                                            dict(is_causal=1, qk_matmul_output_mode=3)),
    "past_present_float_mask_per_batch": (_with(feeds_of(4, Q=(2, 2, 3, 4), K=(2, 2, 3, 4), V=(2, 2, 3, 6),
                                                         past_key=(2, 2, 5, 4), past_value=(2, 2, 5, 6),
                                                         attn_mask=(2, 1, 3, 8))), 4, 23, {}),
    "scaled_float_mask_mode2": (feeds_of(6, Q=(1, 2, 3, 4), K=(1, 2, 5, 4), V=(1, 2, 5, 4), attn_mask=(3, 5)), 4, 23,
                                dict(scale=0.05, qk_matmul_output_mode=2)),
    "softmax_precision_double": (feeds_of(7, Q=(1, 2, 3, 4), K=(1, 2, 5, 4), V=(1, 2, 5, 4)), 1, 23,
                                 dict(softmax_precision=11)),
    # external cache: batch 1 has fewer valid keys than queries (its leading rows attend nothing)
    "nonpad_causal_gqa_negative_offset": (_with(feeds_of(8, Q=(2, 4, 3, 4), K=(2, 2, 6, 4), V=(2, 2, 6, 4)),
                                                nonpad_kv_seqlen=np.array([5, 2], np.int64)), 1, 24,
                                          dict(is_causal=1)),
    "bidirectional_window": (feeds_of(9, Q=(1, 2, 5, 4), K=(1, 2, 7, 4), V=(1, 2, 7, 4)), 1, 25,
                             dict(left_window_size=1, right_window_size=2)),
}
REF_CASES = {
    # onnxruntime writes -FLT_MAX where the spec's bias is -inf
    "causal_past_gqa_mode2": (feeds_of(10, Q=(2, 4, 3, 4), K=(2, 2, 3, 4), V=(2, 2, 3, 5), past_key=(2, 2, 2, 4),
                                       past_value=(2, 2, 2, 5)), 4, 23, dict(is_causal=1, qk_matmul_output_mode=2)),
    # onnxruntime takes no cache without the present outputs (the concatenation goes to a workspace)
    "3d_mqa_past_no_present_outputs": (feeds_of(5, Q=(1, 3, 12), K=(1, 2, 4), V=(1, 2, 4), past_key=(1, 1, 3, 4),
                                                past_value=(1, 1, 3, 4)), 1, 23,
                                       dict(q_num_heads=3, kv_num_heads=1, is_causal=1)),
    # onnxruntime refuses a mask shorter than the keys; the spec pads it as masked
    "short_mask_window_causal": (feeds_of(11, Q=(2, 2, 3, 4), K=(2, 2, 6, 4), V=(2, 2, 6, 4), attn_mask=(3, 4)), 4, 25,
                                 dict(is_causal=1, left_window_size=1, qk_matmul_output_mode=3)),
}


def _run_case(case, workdir, reference):
    feeds, n_out, opset, attrs = case
    model = attention(feeds, n_out, opset, **attrs)
    if reference == "ort":
        want = onnxruntime_outputs(model, feeds)
    else:
        want = ReferenceEvaluator(model).run(None, feeds)
    got = compile_and_run(model, T, feeds, workdir)[0]
    assert len(got) == n_out
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"output {ATT_OUTPUTS[j]}")
    return got


@pytest.mark.parametrize("name", ORT_CASES)
def test_attention_against_onnxruntime(name, workdir):
    _run_case(ORT_CASES[name], workdir, "ort")


@pytest.mark.parametrize("name", REF_CASES)
def test_attention_against_onnx_reference(name, workdir):
    _run_case(REF_CASES[name], workdir, "onnx")


def test_fully_masked_rows_are_zero_even_when_their_scores_are_nan(workdir):
    """Row 1 attends no key (bool mask) and its query is NaN: Y and the mode-3 probabilities
    of that row are 0 (the guard selects, it does not multiply); the other rows stay finite."""
    feeds = feeds_of(12, Q=(1, 2, 3, 4), K=(1, 2, 3, 4), V=(1, 2, 3, 4))
    feeds["Q"][0, :, 1] = np.nan
    feeds["attn_mask"] = fully_masked_bool(3, 3)
    got = _run_case((feeds, 4, 24, dict(qk_matmul_output_mode=3)), workdir, "onnx")
    assert np.all(got[0][0, :, 1] == 0) and np.all(got[3][0, :, 1] == 0)
    assert np.isfinite(got[0]).all() and np.isfinite(got[3]).all()


def test_our_reference_agrees_with_onnxruntime_and_onnx():
    """The float64 numpy reference (the interpreter's) on every case, against the same oracle."""
    for table, oracle in ((ORT_CASES, "ort"), (REF_CASES, "onnx")):
        for name, (feeds, n_out, opset, attrs) in table.items():
            model = attention(feeds, n_out, opset, **attrs)
            g = import_model(model)
            mine = interpret(g, [feeds[v.name] for v in g.inputs])
            want = (onnxruntime_outputs(model, feeds) if oracle == "ort"
                    else ReferenceEvaluator(model).run(None, feeds))
            for j, (a, b) in enumerate(zip(mine, want)):
                assert_close(a, b, what=f"{name} output {j}")


def test_attention_on_cortex_a76(workdir):
    feeds, n_out, opset, attrs = ORT_CASES["3d_gqa_softcap_mode1"]
    model = attention(feeds, n_out, opset, **attrs)
    got = compile_and_run(model, "cortex-a76", feeds, workdir)[0]
    for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(model, feeds))):
        assert_close(g, w, what=f"cortex-a76 output {j}")


def test_attention_and_rope_on_the_c_path(workdir):
    from test_c_backend import run_c_path
    for feeds, n_out, opset, attrs in (ORT_CASES["nonpad_causal_gqa_negative_offset"],
                                       ORT_CASES["past_present_float_mask_per_batch"]):
        model = attention(feeds, n_out, opset, **attrs)
        got = run_c_path(model, T, feeds, workdir)[0]
        for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(model, feeds))):
            assert_close(g, w, what=f"C path output {j}")
    feeds, attrs = ROPE_CASES["3d_no_ids_partial"]
    model = rope(feeds, **attrs)
    assert_close(run_c_path(model, T, feeds, workdir)[0][0], ReferenceEvaluator(model).run(None, feeds)[0], what="rope C")


# -- RotaryEmbedding -----------------------------------------------------------------------
def rope(feeds, **attrs):
    names = ["X", "cos_cache", "sin_cache", "position_ids" if "position_ids" in feeds else ""]
    return one_node_model("RotaryEmbedding", names, feeds, ["Y"], 23, **attrs)


def angles(positions, half, seed):
    theta = np.random.default_rng(seed).uniform(0.1, 1.0, half)
    a = np.asarray(positions, np.float64)[..., None] * theta
    return np.cos(a).astype(F), np.sin(a).astype(F)


def _rope_feeds(x_shape, cache_shape_positions, half, seed, ids=None):
    cos, sin = angles(cache_shape_positions, half, seed)
    feeds = {"X": rnd(seed)(*x_shape), "cos_cache": cos, "sin_cache": sin}
    if ids is not None:
        feeds["position_ids"] = np.asarray(ids, np.int64)
    return feeds


ROPE_CASES = {
    "4d_ids": (_rope_feeds((2, 3, 4, 8), np.arange(20), 4, 0, ids=[[0, 5, 7, 19], [3, 3, 2, 1]]), {}),
    "4d_ids_interleaved_partial": (_rope_feeds((2, 3, 4, 8), np.arange(20), 2, 1, ids=[[0, 5, 7, 19], [3, 3, 2, 1]]),
                                   dict(interleaved=1, rotary_embedding_dim=4)),
    "3d_no_ids_partial": (_rope_feeds((2, 4, 12), np.arange(8).reshape(2, 4), 2, 2),
                          dict(num_heads=2, rotary_embedding_dim=4)),
    "3d_ids_interleaved": (_rope_feeds((1, 3, 16), np.arange(6), 4, 3, ids=[[4, 0, 2]]),
                           dict(num_heads=2, interleaved=1)),
}


@pytest.mark.parametrize("name", ROPE_CASES)
def test_rotary_embedding(name, workdir):
    feeds, attrs = ROPE_CASES[name]
    model = rope(feeds, **attrs)
    want = ReferenceEvaluator(model).run(None, feeds)
    assert_close(compile_and_run(model, T, feeds, workdir)[0][0], want[0], what=name)
    g = import_model(model)
    assert_close(interpret(g, [feeds[v.name] for v in g.inputs])[0], want[0], what=f"{name} (our reference)")


def test_rotary_embedding_against_onnxruntime(workdir):
    feeds, attrs = ROPE_CASES["4d_ids_interleaved_partial"]
    model = rope(feeds, **attrs)
    try:
        want = onnxruntime_outputs(model, feeds)
    except Exception as e:  # an onnxruntime without the opset-23 kernel
        pytest.skip(f"onnxruntime cannot run it: {e}")
    assert_close(compile_and_run(model, T, feeds, workdir)[0][0], want[0])


def test_out_of_range_position_ids_are_clamped_into_the_cache(workdir):
    """An id outside the cache is the model's error; the compiled code reads the nearest row
    (never out of bounds): the same as the ids clipped."""
    feeds, attrs = ROPE_CASES["4d_ids"]
    bad = dict(feeds, position_ids=np.array([[-3, 5, 7, 40], [3, 1000, 2, 1]], np.int64))
    clipped = dict(feeds, position_ids=np.clip(bad["position_ids"], 0, 19))
    got = compile_and_run(rope(bad, **attrs), T, bad, workdir)[0][0]
    assert_close(got, ReferenceEvaluator(rope(clipped, **attrs)).run(None, clipped)[0])


# -- RMSNormalization ------------------------------------------------------------------------
def rms(x_shape, scale_shape, seed, **attrs):
    r = rnd(seed)
    feeds = {"X": r(*x_shape) * 3, "scale": r(*scale_shape)}
    return one_node_model("RMSNormalization", ["X", "scale"], feeds, ["Y"], 23, **attrs), feeds


RMS_CASES = {
    "default_axis": ((2, 3, 4, 5), (5,), {}),
    "axis1_eps": ((2, 3, 4, 5), (3, 4, 5), dict(axis=1, epsilon=0.1)),
    "axis0": ((3, 4), (3, 4), dict(axis=0)),
    "negative_axis_broadcast_scale": ((2, 3, 4, 5), (1, 5), dict(axis=-2)),
    # the scale varies along an outer axis: broadcast to the whole input, not only the normalized part
    "scale_over_outer_axes": ((2, 3, 4, 5), (2, 1, 1, 5), dict(axis=2)),
}


@pytest.mark.parametrize("name", RMS_CASES)
def test_rms_normalization(name, workdir):
    x_shape, s_shape, attrs = RMS_CASES[name]
    model, feeds = rms(x_shape, s_shape, 20, **attrs)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    assert_close(compile_and_run(model, T, feeds, workdir)[0][0], want, what=name)
    g = import_model(model)
    assert_close(interpret(g, [feeds[v.name] for v in g.inputs])[0], want, what=f"{name} (our reference)")


def test_rms_normalization_against_onnxruntime(workdir):
    model, feeds = rms((2, 3, 4, 5), (4, 5), 21, axis=-2, epsilon=1e-3)
    try:
        want = onnxruntime_outputs(model, feeds)
    except Exception as e:
        pytest.skip(f"onnxruntime cannot run it: {e}")
    assert_close(compile_and_run(model, T, feeds, workdir)[0][0], want[0])


# -- refusals --------------------------------------------------------------------------------
def _refused(model, kind, pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kind, match=pattern):
            compile_onnx(model, T)


def _named(op, text):
    return rf"node 'n0' \({op}\).*{text}"


BAD_ATTENTION = {
    "heads_not_multiple": (feeds_of(0, Q=(1, 3, 2, 4), K=(1, 2, 2, 4), V=(1, 2, 2, 4)), {},
                           InvalidModelError, "not a multiple"),
    "3d_without_heads": (feeds_of(0, Q=(1, 2, 8), K=(1, 2, 8), V=(1, 2, 8)), {}, InvalidModelError,
                         "q_num_heads"),
    "head_sizes_differ": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 2, 6), V=(1, 2, 2, 4)), {}, InvalidModelError,
                          "head size"),
    "past_key_alone": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 2, 4), V=(1, 2, 2, 4), past_key=(1, 2, 3, 4)), {},
                       InvalidModelError, "together"),
    "mask_does_not_broadcast": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 3, 4), V=(1, 2, 3, 4), attn_mask=(3, 3)), {},
                                InvalidModelError, "does not broadcast"),
    "mask_longer_than_keys": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 3, 4), V=(1, 2, 3, 4), attn_mask=(2, 5)), {},
                              InvalidModelError, "does not broadcast"),
    "int_mask": (_with(feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 2, 4), V=(1, 2, 2, 4)),
                       attn_mask=np.ones((2, 2), np.int32)), {}, UnsupportedError, "attn_mask"),
    "half_softmax": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 2, 4), V=(1, 2, 2, 4)), dict(softmax_precision=10),
                     UnsupportedError, "softmax_precision"),
    "bad_mode": (feeds_of(0, Q=(1, 2, 2, 4), K=(1, 2, 2, 4), V=(1, 2, 2, 4)), dict(qk_matmul_output_mode=4),
                 InvalidModelError, "qk_matmul_output_mode"),
}


@pytest.mark.parametrize("name", BAD_ATTENTION)
def test_bad_attention_is_refused(name):
    feeds, attrs, kind, text = BAD_ATTENTION[name]
    _refused(attention(feeds, 1, 23, **attrs), kind, _named("Attention", text))


def test_bad_rotary_embedding_is_refused():
    feeds, _ = ROPE_CASES["4d_ids"]
    _refused(rope(feeds, rotary_embedding_dim=3), InvalidModelError, _named("RotaryEmbedding", "even"))
    f3 = _rope_feeds((1, 3, 16), np.arange(6), 4, 3, ids=[[4, 0, 2]])
    _refused(rope(f3), InvalidModelError, _named("RotaryEmbedding", "num_heads"))
    _refused(rope(dict(feeds, position_ids=np.zeros((2, 3), np.int64))), InvalidModelError,
             _named("RotaryEmbedding", "position_ids"))


def test_bad_rms_normalization_is_refused():
    _refused(rms((2, 3, 4), (2, 4), 0)[0], InvalidModelError, _named("RMSNormalization", "does not broadcast"))
    _refused(rms((2, 3, 4), (4,), 0, stash_type=0)[0], UnsupportedError, _named("RMSNormalization", "stash_type"))


def test_split_with_an_empty_part(workdir):
    """RotaryEmbedding's function body splits off the channels it does not rotate, none when
    it rotates them all: a split size of 0 (opset 13+) gives an empty part, written by nobody."""
    from helpers import check_against_onnxruntime, make_model
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
             helper.make_node("Concat", ["b", "a"], ["y"], axis=1)]
    model = make_model(nodes, {"x": (F, (2, 4))}, {"y": (F, (2, 4))}, {"sizes": np.array([4, 0], np.int64)})
    check_against_onnxruntime(model, {"x": rnd(30)(2, 4)}, T, workdir)
