"""LinearAttention and CausalConvWithState (opset 27, ops/recurrent_state.py). Against
onnxruntime (which runs them through onnx's function bodies) and onnx's ReferenceEvaluator
(their Python implementations): several nodes per model, so one build checks many
configurations. A state fed back as past_state must continue the sequence exactly as one
longer call; float16 storage; constants folded through the op's numpy reference; one model
on the emulated targets and through the C backend; the bad inputs."""
import zlib

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from helpers import ALL_TARGETS, assert_close, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, InvalidModelError

T = "x86-64-v3"
F = np.float32
OPSET = 27
rng = np.random.default_rng(27)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test's data is the same whichever tests run before it."""
    global rng
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def model(nodes, feeds, outs, inits=None):
    """outs: name -> (dtype, shape)."""
    return make_model(nodes, {k: (v.dtype, v.shape) for k, v in feeds.items()}, outs, inits, opset=OPSET)


def check(m, feeds, workdir, target=T, got=None, reference=True):
    """Every output against onnxruntime and the ReferenceEvaluator, dtype included.
    reference=False: not against the ReferenceEvaluator's values (its float16 convolution
    accumulates in float16, a few ulps from a float32 sum rounded once)."""
    if got is None:
        got, _, _ = compile_and_run(m, target, feeds, workdir)
    ort = onnxruntime_outputs(m, feeds)
    ref = ReferenceEvaluator(m).run(None, feeds)
    names = [o.name for o in m.graph.output]
    for name, g, o, r in zip(names, got, ort, ref):
        assert g.dtype == o.dtype == r.dtype, f"{name}: {g.dtype}, onnxruntime {o.dtype}, reference {r.dtype}"
        assert_close(g, o, what=f"{target} {name} (onnxruntime)")
        if reference:
            assert_close(g, r, what=f"{target} {name} (reference)")
    return dict(zip(names, got))


def compile_error(m, kind=CompileError):
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    return str(e.value)


# -- LinearAttention --------------------------------------------------------------------------
def la_inputs(tag, b, t, hq, hkv, dk, dv, decay=None, beta=None, past=False, dtype=F):
    """Feeds for one node: keys L2-normalized per head (the delta rules expect it), decay a
    log-space gate (negative), beta a rate in (0, 1)."""
    q = rng.standard_normal((b, t, hq * dk))
    k = rng.standard_normal((b, t, hkv, dk))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).reshape(b, t, hkv * dk)
    f = {f"q{tag}": q, f"k{tag}": k, f"v{tag}": rng.standard_normal((b, t, hkv * dv))}
    if past:
        f[f"s{tag}"] = rng.standard_normal((b, hkv, dk, dv)) * 0.5
    if decay is not None:
        f[f"g{tag}"] = -np.log1p(np.exp(rng.standard_normal((b, t, decay))))
    if beta is not None:
        f[f"be{tag}"] = 1 / (1 + np.exp(-rng.standard_normal((b, t, beta))))
    return {k_: v.astype(dtype) for k_, v in f.items()}


def la_node(tag, feeds, **attrs):
    ins = [f"q{tag}", f"k{tag}", f"v{tag}", f"s{tag}", f"g{tag}", f"be{tag}"]
    ins = [n if n in feeds else "" for n in ins]
    while ins[-1] == "":
        ins.pop()
    return helper.make_node("LinearAttention", ins, [f"y{tag}", f"state{tag}"], name=f"la{tag}", **attrs)


def la_outs(tag, b, t, hq, hkv, dk, dv, dtype=F):
    return {f"y{tag}": (dtype, (b, t, hq * dv)), f"state{tag}": (dtype, (b, hkv, dk, dv))}


# (tag, update_rule, dims (b, t, hq, hkv, dk, dv), decay last dim, beta last dim, past, scale)
LA_CASES = [
    ("lin", "linear", (2, 5, 4, 2, 4, 3), None, None, False, None),          # GQA, d_k != d_v
    ("gat", "gated", (1, 4, 2, 2, 4, 4), "dim", None, True, None),           # per key-dim decay
    ("gph", "gated", (2, 3, 3, 3, 2, 5), "head", None, False, 0.5),          # per-head decay, scale
    ("del", "delta", (2, 4, 4, 4, 4, 4), None, "one", True, None),           # beta (B, T, 1)
    ("gd", "gated_delta", (2, 6, 6, 2, 4, 2), "dim", "head", True, None),    # GQA 3 to 1
    ("mqa", None, (1, 3, 4, 1, 8, 8), "head", "head", False, None),          # default rule, MQA
]


def test_linear_attention_update_rules_and_heads(workdir):
    nodes, feeds, outs = [], {}, {}
    for tag, rule, dims, decay, beta, past, scale in LA_CASES:
        b, t, hq, hkv, dk, dv = dims
        f = la_inputs(tag, *dims, decay={"dim": hkv * dk, "head": hkv}.get(decay),
                      beta={"head": hkv, "one": 1}.get(beta), past=past)
        attrs = {"q_num_heads": hq, "kv_num_heads": hkv}
        if rule:
            attrs["update_rule"] = rule
        if scale:
            attrs["scale"] = scale
        nodes.append(la_node(tag, f, **attrs))
        feeds.update(f)
        outs.update(la_outs(tag, *dims))
    check(model(nodes, feeds, outs), feeds, workdir)


def test_linear_attention_state_continues_the_sequence(workdir):
    """Prefill 4 tokens, then a 2-token and a 1-token step each fed the previous
    present_state: the same outputs and final state as one call on all 7 tokens."""
    dims = (2, 7, 4, 2, 4, 4)
    f = la_inputs("", *dims, decay=8, beta=2, past=True)
    cuts = [(0, 4), (4, 6), (6, 7)]
    nodes = [helper.make_node("LinearAttention", ["q", "k", "v", "s", "g", "be"], ["y", "state"],
                              q_num_heads=4, kv_num_heads=2, name="full")]
    consts = {"ax": np.array([1], np.int64)}
    state = "s"
    for i, (a, e) in enumerate(cuts):
        consts[f"a{i}"], consts[f"e{i}"] = np.array([a], np.int64), np.array([e], np.int64)
        for n in ("q", "k", "v", "g", "be"):
            nodes.append(helper.make_node("Slice", [n, f"a{i}", f"e{i}", "ax"], [f"{n}{i}"]))
        nodes.append(helper.make_node("LinearAttention", [f"q{i}", f"k{i}", f"v{i}", state, f"g{i}", f"be{i}"],
                                      [f"y{i}", f"state{i}"], q_num_heads=4, kv_num_heads=2, name=f"step{i}"))
        state = f"state{i}"
    outs = {"y": (F, (2, 7, 16)), "state": (F, (2, 2, 4, 4)), "state2": (F, (2, 2, 4, 4))}
    outs.update({f"y{i}": (F, (2, e - a, 16)) for i, (a, e) in enumerate(cuts)})
    m = model(nodes, f, outs, consts)
    got = check(m, f, workdir)
    assert_close(np.concatenate([got["y0"], got["y1"], got["y2"]], axis=1), got["y"], what="chained outputs")
    assert_close(got["state2"], got["state"], what="chained state")


def test_linear_attention_float16(workdir):
    """float16 storage: present_state without past_state is float16 too (query's type); with
    a float32 past_state (S != T) it stays float32 while the output is float16."""
    dims = (1, 3, 4, 2, 4, 4)
    f = la_inputs("", *dims, decay=8, beta=2, dtype=np.float16)
    mixed = la_inputs("m", *dims, decay=8, beta=2, past=True, dtype=np.float16)
    mixed["sm"] = mixed["sm"].astype(F)
    outs = {**la_outs("", *dims, dtype=np.float16), **la_outs("m", *dims, dtype=np.float16)}
    outs["statem"] = (F, outs["statem"][1])
    feeds = {**f, **mixed}
    m = model([la_node("", f, q_num_heads=4, kv_num_heads=2), la_node("m", mixed, q_num_heads=4, kv_num_heads=2)],
              feeds, outs)
    got = check(m, feeds, workdir)
    assert got["state"].dtype == np.float16 and got["ym"].dtype == np.float16 and got["statem"].dtype == F


# -- CausalConvWithState ---------------------------------------------------------------------
def cc_case(tag, b, c, n, kk, bias=False, past=False, dtype=F):
    f = {f"x{tag}": rng.standard_normal((b, c, n)).astype(dtype)}
    inits = {f"w{tag}": rng.standard_normal((c, 1, kk)).astype(dtype)}
    if bias:
        inits[f"b{tag}"] = rng.standard_normal(c).astype(dtype)
    if past:
        f[f"p{tag}"] = rng.standard_normal((b, c, kk - 1)).astype(dtype)
    ins = [f"x{tag}", f"w{tag}", f"b{tag}" if bias else "", f"p{tag}" if past else ""]
    while ins[-1] == "":
        ins.pop()
    outs = {f"y{tag}": (dtype, (b, c, n)), f"ps{tag}": (dtype, (b, c, kk - 1))}
    return f, inits, ins, outs


# (tag, dims (b, c, n, k), bias, past, activation)
CC_CASES = [
    ("a", (2, 3, 8, 4), False, False, None),
    ("b", (2, 3, 8, 4), True, True, "silu"),
    ("c", (1, 5, 6, 3), False, True, "swish"),
    ("d", (2, 2, 5, 1), True, False, "none"),      # k = 1: an empty state
    ("e", (2, 3, 2, 5), True, True, None),         # input shorter than the state: part of it moves
    ("f", (1, 1, 1, 4), False, True, "silu"),      # decode step, one channel
]


def test_causal_conv_with_state_variants(workdir):
    nodes, feeds, inits, outs = [], {}, {}, {}
    for tag, dims, bias, past, act in CC_CASES:
        f, i, ins, o = cc_case(tag, *dims, bias=bias, past=past)
        attrs = {"activation": act} if act else {}
        nodes.append(helper.make_node("CausalConvWithState", ins, list(o), name=f"cc{tag}", **attrs))
        feeds.update(f), inits.update(i), outs.update(o)
    got = check(model(nodes, feeds, outs, inits), feeds, workdir)
    # the carried state is the last k - 1 positions of past ++ input, bit for bit
    assert np.array_equal(got["pse"], np.concatenate([feeds["pe"], feeds["xe"]], axis=2)[:, :, -4:])
    assert np.array_equal(got["psb"], feeds["xb"][:, :, -3:])
    assert got["psd"].shape == (2, 2, 0)


def test_causal_conv_with_state_streaming_equals_one_call(workdir):
    """Three chunks (5, 1, 2 positions), each fed the previous present_state, give the
    outputs of one call on the 8 positions."""
    f, inits, _, _ = cc_case("", 2, 4, 8, 4, bias=True, past=True)
    consts = {"ax": np.array([2], np.int64)}
    nodes = [helper.make_node("CausalConvWithState", ["x", "w", "b", "p"], ["y", "ps"], activation="silu")]
    state = "p"
    cuts = [(0, 5), (5, 6), (6, 8)]
    for i, (a, e) in enumerate(cuts):
        consts[f"a{i}"], consts[f"e{i}"] = np.array([a], np.int64), np.array([e], np.int64)
        nodes += [helper.make_node("Slice", ["x", f"a{i}", f"e{i}", "ax"], [f"x{i}"]),
                  helper.make_node("CausalConvWithState", [f"x{i}", "w", "b", state], [f"y{i}", f"ps{i}"],
                                   activation="silu")]
        state = f"ps{i}"
    outs = {"y": (F, (2, 4, 8)), "ps": (F, (2, 4, 3)), "ps2": (F, (2, 4, 3))}
    outs.update({f"y{i}": (F, (2, 4, e - a)) for i, (a, e) in enumerate(cuts)})
    got = check(model(nodes, f, outs, {**inits, **consts}), f, workdir)
    assert_close(np.concatenate([got["y0"], got["y1"], got["y2"]], axis=2), got["y"], what="streamed outputs")
    assert np.array_equal(got["ps2"], got["ps"])


def test_causal_conv_with_state_float16(workdir):
    f, inits, ins, outs = cc_case("", 2, 3, 6, 4, bias=True, past=True, dtype=np.float16)
    m = model([helper.make_node("CausalConvWithState", ins, list(outs), activation="silu")], f, outs, inits)
    got = check(m, f, workdir, reference=False)
    # float64 from the spec's formula, rounded once to float16
    padded = np.concatenate([f["p"], f["x"]], axis=2).astype(np.float64)
    w, b = inits["w"].astype(np.float64)[:, 0], inits["b"].astype(np.float64)
    conv = sum(w[None, :, j, None] * padded[:, :, j:j + 6] for j in range(4)) + b[None, :, None]
    assert_close(got["y"], (conv / (1 + np.exp(-conv))).astype(np.float16), what="float64 SiLU(conv)")
    assert np.array_equal(got["ps"], np.concatenate([f["p"], f["x"]], axis=2)[:, :, -3:])


def test_constant_inputs_fold_through_the_references(workdir):
    """All inputs constant: both ops are evaluated at compile time by their numpy
    references (float64), which must agree with onnxruntime too."""
    dims = (1, 3, 4, 2, 4, 2)
    la = la_inputs("", *dims, decay=2, beta=2, past=True)
    f, cc_inits, ins, cc_outs = cc_case("c", 1, 2, 5, 3, bias=True, past=True)
    x = np.ones((1,), F)
    nodes = [la_node("", la, q_num_heads=4, kv_num_heads=2),
             helper.make_node("CausalConvWithState", ins, list(cc_outs), activation="silu"),
             helper.make_node("Identity", ["one"], ["z"])]
    outs = {**la_outs("", *dims), **cc_outs, "z": (F, (1,))}
    m = model(nodes, {"one": x}, outs, {**la, **f, **cc_inits})
    res = compile_onnx(m, T)
    assert not any(n.op in ("LinearAttention", "CausalConvWithState") for n in res.graph.nodes)
    check(m, {"one": x}, workdir)


# -- every target, and the C backend ------------------------------------------------------------
def small_model():
    la = la_inputs("", 1, 3, 4, 2, 4, 4, decay=8, beta=2, past=True)
    f, inits, ins, cc_outs = cc_case("c", 1, 3, 4, 3, bias=True, past=True)
    nodes = [la_node("", la, q_num_heads=4, kv_num_heads=2),
             helper.make_node("CausalConvWithState", ins, list(cc_outs), activation="silu")]
    feeds = {**la, **f}
    return model(nodes, feeds, {**la_outs("", 1, 3, 4, 2, 4, 4), **cc_outs}, inits), feeds


@pytest.mark.parametrize("where", [t for t in ("cortex-a76", "rv64gcv") if t in ALL_TARGETS])
def test_emulated_targets(where, workdir):
    m, feeds = small_model()
    check(m, feeds, workdir, target=where)


def test_c_backend(workdir):
    m, feeds = small_model()
    got, _ = run_c_path(m, T, feeds, workdir)
    check(m, feeds, workdir, got=got)


# -- bad inputs ---------------------------------------------------------------------------------
def la_bad(attrs, dims=(1, 2, 4, 2, 4, 4), decay=8, beta=2, past=False, past_shape=None, q_hidden=None):
    f = la_inputs("", *dims, decay=decay, beta=beta, past=past)
    if past_shape:
        f["s"] = np.zeros(past_shape, F)
    if q_hidden:
        f["q"] = np.zeros((dims[0], dims[1], q_hidden), F)
    return model([la_node("", f, **attrs)], f, {"y": (F, None), "state": (F, None)})


@pytest.mark.parametrize("attrs,kw,why", [
    ({"update_rule": "softmax"}, {}, "update_rule"),
    ({"update_rule": "gated"}, {"decay": None, "beta": None}, "needs the decay"),
    ({"update_rule": "linear"}, {"beta": None}, "takes no decay"),
    ({"update_rule": "delta"}, {"decay": None, "beta": None}, "needs the beta"),
    ({"q_num_heads": 3}, {}, "multiple"),
    ({"q_num_heads": 4, "kv_num_heads": 2}, {"decay": 3}, "decay has shape"),
    ({"q_num_heads": 4, "kv_num_heads": 2}, {"beta": 3}, "beta has shape"),
    ({"q_num_heads": 4, "kv_num_heads": 2}, {"past_shape": (1, 2, 4, 3)}, "past_state has shape"),
    ({"q_num_heads": 4, "kv_num_heads": 2}, {"q_hidden": 20}, "head size"),
])
def test_linear_attention_bad_inputs_are_invalid(attrs, kw, why):
    a = {"q_num_heads": 4, "kv_num_heads": 2, **attrs}
    msg = compile_error(la_bad(a, **kw))
    assert "la" in msg and "LinearAttention" in msg and why in msg, msg


def test_linear_attention_needs_head_counts():
    f = la_inputs("", 1, 2, 2, 2, 4, 4, decay=8, beta=2)
    m = model([la_node("", f, kv_num_heads=2)], f, {"y": (F, None), "state": (F, None)})
    msg = compile_error(m)
    assert "LinearAttention" in msg and "q_num_heads" in msg, msg


@pytest.mark.parametrize("change,why", [
    ({"w": np.zeros((3, 2, 4), F)}, "weight has shape"),
    ({"b": np.zeros(4, F)}, "bias has shape"),
    ({"p": np.zeros((2, 3, 2), F)}, "past_state has shape"),
    ({"activation": "gelu"}, "activation"),
])
def test_causal_conv_with_state_bad_inputs_are_invalid(change, why):
    x = np.zeros((2, 3, 5), F)
    inits = {"w": np.zeros((3, 1, 4), F), "b": np.zeros(3, F), "p": np.zeros((2, 3, 3), F)}
    act = change.pop("activation", "none")
    inits.update(change)
    m = model([helper.make_node("CausalConvWithState", ["x", "w", "b", "p"], ["y", "ps"], activation=act,
                                name="cc")], {"x": x}, {"y": (F, None), "ps": (F, None)}, inits)
    msg = compile_error(m, InvalidModelError)
    assert "cc" in msg and "CausalConvWithState" in msg and why in msg, msg


def test_integer_inputs_are_refused():
    x = np.zeros((1, 2, 4), np.int32)
    m = make_model([helper.make_node("CausalConvWithState", ["x", "w"], ["y", "ps"], name="cc")],
                   {"x": (np.int32, x.shape)}, {"y": (np.int32, None), "ps": (np.int32, None)},
                   {"w": np.zeros((2, 1, 3), np.int32)}, opset=OPSET)
    msg = compile_error(m)
    assert "cc" in msg and "CausalConvWithState" in msg and "int32" in msg, msg
