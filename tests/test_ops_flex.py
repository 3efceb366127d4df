"""The preview-domain ops decomposed at import (frontend/preview.py): FlexAttention
(ai.onnx.preview; GQA, scale, head sizes, score_mod / prob_mod subgraphs with initializers and
outer-scope reads, float16 storage, softmax_precision) and the ai.onnx.preview.training
optimizers Adagrad, Adam, Momentum (standard and Nesterov; one and several tensors; the
first step T = 0 and a later one through one compiled model; float32 and float64). Against
onnx's ReferenceEvaluator (onnxruntime does not run these domains) and numpy in float64;
in process on x86-64-v3, one FlexAttention case through the harness on an emulated target;
the bad inputs, each refused naming the node and op."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, compile_and_run
from toolchain import compile_model
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.ops.elementwise import UNARY

T = "x86-64-v3"
F = np.float32
PREVIEW, TRAINING = "ai.onnx.preview", "ai.onnx.preview.training"
rng = np.random.default_rng(26)
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int64): TensorProto.INT64}


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, ELEM[np.dtype(dtype)], shape)


def model(node, feeds: dict, outs: dict, domain, inits=None, extra_nodes=()):
    """outs: name -> (dtype, shape). The default opset 26 is imported beside the preview domain."""
    g = helper.make_graph([*extra_nodes, node], "flex", [vi(k, v.dtype, v.shape) for k, v in feeds.items()],
                          [vi(k, *v) for k, v in outs.items()],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 26), helper.make_opsetid(domain, 1)])


def mod_graph(name, nodes, dtype=TensorProto.FLOAT, inits=None, out_dtype=None):
    return helper.make_graph(nodes, name, [helper.make_tensor_value_info("s", dtype, ["B", "H", "L", "S"])],
                             [helper.make_tensor_value_info("s_out", out_dtype or dtype, ["B", "H", "L", "S"])],
                             [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])


def flex(feeds, out_shape, out_dtype=F, **attrs):
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, **attrs)
    return model(node, feeds, {"Y": (out_dtype, out_shape)}, PREVIEW)


def qkv(hq, hkv, l, s, e, ev, dtype=F):
    return {"Q": rng.standard_normal((2, hq, l, e)).astype(dtype),
            "K": rng.standard_normal((2, hkv, s, e)).astype(dtype),
            "V": rng.standard_normal((2, hkv, s, ev)).astype(dtype)}


def check(m, feeds, rtol=None, atol=None):
    """The compiled model (in process) against onnx's ReferenceEvaluator."""
    want = ReferenceEvaluator(m).run(None, feeds)
    got = compile_model(m, T)(*feeds.values())
    kw = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == helper.tensor_dtype_to_np_dtype(m.graph.output[j].type.tensor_type.elem_type)
        assert_close(g, np.asarray(w).astype(g.dtype), what=f"output {j}", **kw)
    return got


def numpy_attention(q, k, v, scale, mod=None):
    """Scaled dot-product attention in float64, query head h reading K/V head h // group."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ np.swapaxes(k, -1, -2) * scale
    if mod is not None:
        s = mod(s)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


# -- FlexAttention ---------------------------------------------------------------------------
def test_flex_gqa_scale_head_sizes():
    """GQA (8 query heads over 2 K/V heads), V's head size differing from Q's, a given scale:
    the reference, and float64 numpy."""
    feeds = qkv(8, 2, 5, 7, 16, 12)
    y = check(flex(feeds, [2, 8, 5, 12], scale=0.3), feeds)[0]
    assert_close(y, numpy_attention(*feeds.values(), np.float32(np.sqrt(F(0.3))) ** 2), rtol=1e-4, atol=1e-5)


def test_flex_default_scale_mqa():
    """One K/V head for all (MQA), the default scale 1/sqrt(head size)."""
    feeds = qkv(3, 1, 4, 6, 9, 9)
    y = check(flex(feeds, [2, 3, 4, 9]), feeds)[0]
    assert_close(y, numpy_attention(*feeds.values(), 1 / 3), rtol=1e-4, atol=1e-5)


def test_flex_score_and_prob_mods():
    """A causal mask built from the scores' shape (Shape/Range/Where with the subgraph's own
    initializers) and a soft cap in score_mod; prob_mod scaling by an outer-scope graph input
    computed at run time."""
    feeds = qkv(2, 2, 4, 4, 8, 8)
    feeds["w"] = np.array(0.75, F)
    score = mod_graph("causal_cap", [
        helper.make_node("Shape", ["s"], ["shape"]),
        helper.make_node("Gather", ["shape", "i2"], ["L"], axis=0),
        helper.make_node("Gather", ["shape", "i3"], ["S"], axis=0),
        helper.make_node("Range", ["zero", "L", "one"], ["qr"]),
        helper.make_node("Reshape", ["qr", "qs"], ["qi"]),
        helper.make_node("Range", ["zero", "S", "one"], ["kr"]),
        helper.make_node("Reshape", ["kr", "ks"], ["ki"]),
        helper.make_node("GreaterOrEqual", ["qi", "ki"], ["mask"]),
        helper.make_node("Div", ["s", "cap"], ["d"]),
        helper.make_node("Tanh", ["d"], ["t"]),
        helper.make_node("Mul", ["t", "cap"], ["capped"]),
        helper.make_node("Where", ["mask", "capped", "ninf"], ["s_out"]),
    ], inits={"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "i2": np.array(2, np.int64),
              "i3": np.array(3, np.int64), "qs": np.array([-1, 1], np.int64), "ks": np.array([1, -1], np.int64),
              "cap": np.array(2.0, F), "ninf": np.array(-np.inf, F)})
    prob = mod_graph("by_w", [helper.make_node("Mul", ["s", "w"], ["s_out"])])
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW,
                            score_mod=score, prob_mod=prob)
    m = model(node, feeds, {"Y": (F, [2, 2, 4, 8])}, PREVIEW)
    y = compile_model(m, T)(*feeds.values())[0]
    # the ReferenceEvaluator does not give a modifier the outer scope: numpy in float64
    causal = np.tril(np.ones((4, 4), bool))
    want = 0.75 * numpy_attention(*list(feeds.values())[:3], 1 / np.sqrt(8),
                                  lambda s: np.where(causal, 2 * np.tanh(s / 2), -np.inf))
    assert_close(y, want, rtol=1e-4, atol=1e-5)
    assert np.allclose(y[:, :, 0], 0.75 * feeds["V"][:, :, 0], atol=1e-6)  # row 0 sees key 0 only


def test_flex_float16():
    """float16 storage: scores in float16, softmax in float32 (the default), output float16;
    and softmax_precision float16 (the modifier then takes float16)."""
    feeds = qkv(2, 2, 3, 5, 8, 8, np.float16)
    check(flex(feeds, [2, 2, 3, 8], np.float16), feeds, rtol=2e-3, atol=2e-3)
    bias = mod_graph("bias", [helper.make_node("Add", ["s", "b"], ["s_out"])], TensorProto.FLOAT16,
                     {"b": np.array(0.5, np.float16)})
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, score_mod=bias,
                            softmax_precision=TensorProto.FLOAT16)
    check(model(node, feeds, {"Y": (np.float16, [2, 2, 3, 8])}, PREVIEW), feeds, rtol=4e-3, atol=4e-3)


def test_flex_on_emulated_target(workdir):
    """The decomposition through the C harness on an emulated core (causal score_mod)."""
    feeds = qkv(4, 2, 3, 3, 4, 4)
    score = mod_graph("tri", [helper.make_node("Where", ["m", "s", "ninf"], ["s_out"])],
                      inits={"m": np.tril(np.ones((3, 3), bool)), "ninf": np.array(-np.inf, F)})
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, score_mod=score)
    m = model(node, feeds, {"Y": (F, [2, 4, 3, 4])}, PREVIEW)
    got, _, _ = compile_and_run(m, "cortex-a53", feeds, workdir)
    assert_close(got[0], ReferenceEvaluator(m).run(None, feeds)[0])


# -- the optimizers ----------------------------------------------------------------------------
def optimizer(op, n_groups, names, shapes, dtype=F, r_dtype=None, **attrs):
    """A training-domain model alone (no default-domain opset, as onnx's cases)."""
    ins = ["R", "T"] + [f"{g}{i}" for g in names for i in range(len(shapes))]
    outs = [f"{g}{i}_new" for g in names if g != "G" for i in range(len(shapes))]
    node = helper.make_node(op, ins, outs, name="opt", domain=TRAINING, **attrs)
    inputs = [vi("R", r_dtype or dtype, []), vi("T", np.int64, [])] + \
        [vi(f"{g}{i}", dtype, s) for g in names for i, s in enumerate(shapes)]
    outputs = [vi(o, dtype, shapes[int(o[1:-4])]) for o in outs]
    g = helper.make_graph([node], "opt", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(TRAINING, 1)])


def feeds_for(m, t, dtype=F):
    out = {}
    for x in m.graph.input:
        shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
        if x.name == "T":
            out["T"] = np.array(t, np.int64)
        elif x.name[0] == "H":  # accumulated squares: positive
            out[x.name] = rng.uniform(0.1, 2, shape).astype(helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type))
        else:
            out[x.name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type))
    return out


def run_steps(m, steps, rtol=None, atol=None):
    """One compiled model, several update counts T (T = 0 takes the other branch of the
    spec's T > 0 tests), each against the reference."""
    cm = compile_model(m, T)
    ref = ReferenceEvaluator(m)
    kw = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    for t in steps:
        feeds = feeds_for(m, t)
        got = cm(*feeds.values())
        want = ref.run(None, feeds)
        for j, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == helper.tensor_dtype_to_np_dtype(m.graph.output[j].type.tensor_type.elem_type)
            assert_close(g, np.asarray(w), what=f"T={t} output {m.graph.output[j].name}", **kw)
    return cm


def test_adagrad_several_tensors():
    m = optimizer("Adagrad", 3, "XGH", [(3,), (2, 4)], decay_factor=0.1, epsilon=1e-5, norm_coefficient=0.01)
    run_steps(m, [0, 7])


def test_adagrad_float64_numpy():
    """float64 tensors with a float32 R, against the spec's formula in numpy float64."""
    m = optimizer("Adagrad", 3, "XGH", [(5,)], dtype=np.float64, r_dtype=F, decay_factor=0.5,
                  epsilon=1e-3, norm_coefficient=0.2)
    feeds = feeds_for(m, 3)
    x_new, h_new = compile_model(m, T)(*feeds.values())
    r, x, g, h = float(feeds["R"]), feeds["X0"], feeds["G0"], feeds["H0"]
    lr = r / (1 + 3 * np.float64(F(0.5)))
    gr = np.float64(F(0.2)) * x + g
    hn = h + gr * gr
    assert x_new.dtype == h_new.dtype == np.float64
    np.testing.assert_allclose(h_new, hn, rtol=1e-14)
    np.testing.assert_allclose(x_new, x - lr * gr / (np.sqrt(hn) + np.float64(F(1e-3))), rtol=1e-13)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
def test_momentum(mode):
    m = optimizer("Momentum", 3, "XGV", [(4,), (2, 3)], alpha=0.9, beta=0.2, mode=mode, norm_coefficient=0.05)
    run_steps(m, [0, 2])


def test_momentum_float64():
    m = optimizer("Momentum", 3, "XGV", [(6,)], dtype=np.float64, alpha=0.5, beta=0.7, mode="nesterov",
                  norm_coefficient=0.0)
    run_steps(m, [0, 1], rtol=1e-12, atol=1e-14)


def test_adam():
    """Bias correction from T = 1 on (Pow of alpha and beta at the run-time T), none at T = 0;
    post-update regularization."""
    m = optimizer("Adam", 4, "XGVH", [(3,), (2, 2)], alpha=0.8, beta=0.95, epsilon=1e-4, norm_coefficient=0.01,
                  norm_coefficient_post=0.1)
    run_steps(m, [0, 1, 9])


def test_adam_float64():
    """float64 Adam needs Pow's exp and log in float64 at a run-time T: compared with the
    reference where they exist, else refused naming the node (never a crash in the lowering)."""
    m = optimizer("Adam", 4, "XGVH", [(3,)], dtype=np.float64)
    if "float64" in UNARY["Exp"].dtypes:
        run_steps(m, [0, 3], rtol=1e-12, atol=1e-14)
    else:
        msg = refused(m, UnsupportedError)
        assert "'opt'" in msg and "Adam" in msg and "float64 tensors are not supported" in msg


def test_adam_defaults_single():
    m = optimizer("Adam", 4, "XGVH", [(7,)])
    run_steps(m, [0, 4])


# -- bad inputs --------------------------------------------------------------------------------
def refused(m, kind):
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    return str(e.value)


def test_flex_bad_inputs():
    feeds = qkv(3, 2, 2, 2, 4, 4)
    msg = refused(flex(feeds, [2, 3, 2, 4]), InvalidModelError)
    assert "flex" in msg and "FlexAttention" in msg and "multiple of kv_num_heads 2" in msg
    feeds = {"Q": np.zeros((2, 2, 4), F), "K": np.zeros((2, 2, 2, 4), F), "V": np.zeros((2, 2, 2, 4), F)}
    assert "Q must be rank 4" in refused(flex(feeds, [2, 2, 4]), InvalidModelError)
    feeds = qkv(2, 2, 2, 3, 4, 4)
    feeds["K"] = feeds["K"][:, :, :, :3].copy()
    assert "head size 4 differs from K's 3" in refused(flex(feeds, [2, 2, 2, 4]), InvalidModelError)


def test_flex_bad_modifiers():
    feeds = qkv(2, 2, 2, 3, 4, 4)
    # a score_mod that changes the shape (a reduction)
    reduce = mod_graph("reduce", [helper.make_node("ReduceMax", ["s"], ["s_out"], keepdims=1)])
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, score_mod=reduce)
    msg = refused(model(node, feeds, {"Y": (F, [2, 2, 2, 4])}, PREVIEW), InvalidModelError)
    assert "node 'flex'" in msg or "'flex'" in msg
    assert "score_mod must give its input's type and shape" in msg
    # a prob_mod declared float16 while the probabilities are float32
    half = mod_graph("half", [helper.make_node("Identity", ["s"], ["s_out"])], TensorProto.FLOAT16)
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, prob_mod=half)
    msg = refused(model(node, feeds, {"Y": (F, [2, 2, 2, 4])}, PREVIEW), InvalidModelError)
    assert "prob_mod input 's' is declared float16" in msg and "FlexAttention" in msg
    # the node itself is checked against its schema beside its subgraphs (a misspelled attribute)
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, prob_mod=half,
                            scal=0.5)
    msg = refused(model(node, feeds, {"Y": (F, [2, 2, 2, 4])}, PREVIEW), InvalidModelError)
    assert "'flex'" in msg and "scal" in msg
    # an unsupported op inside a modifier is named with the modifier's path
    bad = mod_graph("bad", [helper.make_node("Unique", ["s"], ["s_out"])])
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], name="flex", domain=PREVIEW, score_mod=bad)
    msg = refused(model(node, feeds, {"Y": (F, [2, 2, 2, 4])}, PREVIEW), UnsupportedError)
    assert "flex/score_mod/" in msg and "Unique" in msg


def test_optimizer_bad_inputs():
    m = optimizer("Momentum", 3, "XGV", [(2,)], alpha=0.9, beta=0.1, mode="heavy_ball", norm_coefficient=0.0)
    msg = refused(m, InvalidModelError)
    assert "'opt'" in msg and "Momentum" in msg and "'standard' or 'nesterov'" in msg
    m = optimizer("Adagrad", 3, "XGH", [(2,)])
    m.graph.node[0].input.append("H0")  # 4 tensors after R and T: not a multiple of 3
    msg = refused(m, InvalidModelError)
    assert "Adagrad" in msg and "3 lists of equal length" in msg
    m = optimizer("Adam", 4, "XGVH", [(2,)])
    m.graph.input[1].type.tensor_type.shape.dim.add().dim_value = 2  # T of 2 elements
    assert "T must be a scalar" in refused(m, InvalidModelError)


def test_other_preview_ops_refused():
    """Only these four ops are taken from the preview domains."""
    node = helper.make_node("Gradient", ["x"], ["y"], name="grad", domain=TRAINING, xs=["x"], y="x")
    g = helper.make_graph([node], "g", [vi("x", F, [2])], [vi("y", F, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 26), helper.make_opsetid(TRAINING, 1)])
    msg = refused(m, UnsupportedError)
    assert "unsupported op domain 'ai.onnx.preview.training'" in msg and "Gradient" in msg
