"""The rewrites and lowerings that cut the transformer encoder's instructions (issue #16):
MatMul + constant bias as a Gemm (passes/patterns.py), GELU's five-node chain as one Gelu
(its erf one rational function: kernel/fastmath.erf_rational), activations and residual Adds
fused through a Reshape, a scale by a one-element constant fused into its producer's store,
Split by placement (memory.py), softmax's whole-vector max and exp, the reduction loop of
tiled_matmul two vectors per trip. Each against onnxruntime (or numpy in float64), each
rewrite checked to fire and checked not to fire where it must not."""
import math

import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, make_model, onnxruntime_outputs
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret
from toolchain.memory import plan_memory
from toolchain.passes import run_pipeline
from toolchain.passes.patterns import fold_matmul_bias, fuse_gelu

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(16)
SQRT2 = np.array(math.sqrt(2), F)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F)


def gelu_nodes(x, y, form="div", half_first=False, prefix="g"):
    """PyTorch's exported GELU: x / sqrt2 (or x * 1/sqrt2) -> Erf -> + 1 -> x * . -> * 0.5
    (or 0.5 x first)."""
    p = prefix
    scale = (helper.make_node("Div", [x, f"{p}_sqrt2"], [f"{p}_s"], name=f"{p}/Div") if form == "div" else
             helper.make_node("Mul", [x, f"{p}_isqrt2"], [f"{p}_s"], name=f"{p}/Mul_s"))
    nodes = [scale, helper.make_node("Erf", [f"{p}_s"], [f"{p}_e"], name=f"{p}/Erf"),
             helper.make_node("Add", [f"{p}_e", f"{p}_one"], [f"{p}_e1"], name=f"{p}/Add")]
    if half_first:
        nodes += [helper.make_node("Mul", [x, f"{p}_half"], [f"{p}_h"], name=f"{p}/Mul_h"),
                  helper.make_node("Mul", [f"{p}_h", f"{p}_e1"], [y], name=f"{p}/Mul")]
    else:
        nodes += [helper.make_node("Mul", [x, f"{p}_e1"], [f"{p}_m"], name=f"{p}/Mul"),
                  helper.make_node("Mul", [f"{p}_m", f"{p}_half"], [y], name=f"{p}/Mul_1")]
    inits = {f"{p}_sqrt2": SQRT2, f"{p}_isqrt2": np.array(1 / math.sqrt(2), F), f"{p}_one": np.array(1, F),
             f"{p}_half": np.array(0.5, F)}
    return nodes, inits


def ffn_model(form="div", half_first=False, seq=16, d=64, hidden=128, residual=True):
    """An encoder layer's feed-forward half: MatMul + bias -> GELU -> MatMul + bias (+ x)."""
    g_nodes, g_inits = gelu_nodes("h", "a", form, half_first)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="ff0/MatMul"),
             helper.make_node("Add", ["b1", "m1"], ["h"], name="ff0/Add"),
             *g_nodes,
             helper.make_node("MatMul", ["a", "w2"], ["m2"], name="ff2/MatMul"),
             helper.make_node("Add", ["m2", "b2"], ["f" if residual else "y"], name="ff2/Add")]
    if residual:
        nodes.append(helper.make_node("Add", ["x", "f"], ["y"], name="residual"))
    inits = {"w1": randn(d, hidden, scale=0.3), "b1": randn(hidden), "w2": randn(hidden, d, scale=0.2),
             "b2": randn(d), **g_inits}
    return make_model(nodes, {"x": (F, (1, seq, d))}, {"y": (F, (1, seq, d))}, inits)


# -- GELU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,half_first", [("div", False), ("div", True), ("mul", False), ("mul", True)])
def test_gelu_chain_becomes_one_gelu(form, half_first):
    m = ffn_model(form, half_first)
    g = import_model(m)
    assert fuse_gelu(g)
    g.verify()
    counts = g.op_counts()
    assert counts.get("Gelu") == 1 and "Erf" not in counts and "Div" not in counts
    assert counts["MatMul"] == 2 and "Mul" not in counts
    gelu = next(n for n in g.nodes if n.op == "Gelu")
    assert gelu.attrs["approximate"] == "none"
    assert len(gelu.sources) == 5
    x = randn(1, 16, 64)
    assert_close(interpret(g, [x])[0], onnxruntime_outputs(m, {"x": x})[0], what="after fuse-gelu")


def _chain_model(extra_output=None, one=1.0, sqrt2=SQRT2):
    nodes, inits = gelu_nodes("x", "y")
    inits["g_one"], inits["g_sqrt2"] = np.array(one, F), np.array(sqrt2, F)
    outs = {"y": (F, (4, 8))}
    if extra_output:
        outs[extra_output] = (F, (4, 8))
    return make_model(nodes, {"x": (F, (4, 8))}, outs, inits)


@pytest.mark.parametrize("why,model", [
    ("erf output also a graph output", lambda: _chain_model(extra_output="g_e")),
    ("adds 2, not 1", lambda: _chain_model(one=2.0)),
    ("divides by 2, not sqrt 2", lambda: _chain_model(sqrt2=np.array(2.0, F))),
])
def test_gelu_lookalikes_are_left_alone(why, model, workdir):
    m = model()
    g = import_model(m)
    assert not fuse_gelu(g), why
    assert "Gelu" not in g.op_counts() and g.op_counts()["Erf"] == 1
    x = randn(4, 8, scale=3)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_gelu_values_over_the_whole_range(workdir):
    """erf_rational inside Gelu, against 0.5 x (1 + erf(x / sqrt 2)) in float64 on a dense
    grid: absolute error within 0.5 |x| * 5e-7 (erf's bound) plus rounding; NaN stays NaN,
    +inf stays +inf, large negative inputs give 0 (within that bound)."""
    x = np.concatenate([np.linspace(-12, 12, 4093), [0.0, -0.0, 1e-30, -1e-30, 1e30, np.inf, np.nan]]).astype(F)
    m = make_model([helper.make_node("Gelu", ["x"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)}, opset=20)
    got = compile_and_run_one(m, {"x": x}, workdir)
    x64 = x.astype(np.float64)
    finite = np.isfinite(x64) & (np.abs(x64) < 1e6)
    erf64 = np.vectorize(math.erf)(x64[finite] / math.sqrt(2))
    want = 0.5 * x64[finite] * (1 + erf64)
    err = np.abs(got[finite].astype(np.float64) - want)
    assert (err <= 0.5 * np.abs(x64[finite]) * 5e-7 + 4 * np.spacing(np.abs(want).astype(F))).all(), err.max()
    assert np.isnan(got[-1]) and got[-2] == np.inf and got[-3] == F(1e30)


def compile_and_run_one(m, feeds, workdir):
    from helpers import compile_and_run
    got, _, _ = compile_and_run(m, T, feeds, workdir)
    return got[0]


# -- MatMul + bias as Gemm, activations and residuals through the Reshape -------------------------
def test_matmul_bias_becomes_gemm_and_keeps_values():
    m = ffn_model(residual=False)
    g = import_model(m)
    assert fold_matmul_bias(g)
    g.verify()
    counts = g.op_counts()
    assert counts["Gemm"] == 2 and "MatMul" not in counts and counts.get("Add", 0) == 1  # GELU's + 1 stays
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert gemm.inputs[2].type.shape == (128,)
    x = randn(1, 16, 64)
    assert_close(interpret(g, [x])[0], onnxruntime_outputs(m, {"x": x})[0], what="after fold-matmul-bias")


@pytest.mark.parametrize("why,bias,computed", [
    ("a full (M, N) bias matrix", (16, 8), False),
    ("bias computed at run time", (8,), True),
])
def test_matmul_bias_lookalikes_are_left_alone(why, bias, computed, workdir):
    inits = {"w": randn(12, 8)}
    inputs = {"x": (F, (1, 16, 12))}
    if computed:
        inputs["b"] = (F, bias)
    else:
        inits["b"] = randn(*bias)
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                   inputs, {"y": (F, (1, 16, 8))}, inits)
    g = import_model(m)
    assert not fold_matmul_bias(g), why
    feeds = {"x": randn(1, 16, 12), **({"b": randn(*bias)} if computed else {})}
    check_against_onnxruntime(m, feeds, T, workdir)


@pytest.mark.parametrize("tgt", [T, "cortex-a76"])
def test_feed_forward_half_is_three_kernels(tgt, workdir):
    """MatMul+bias+GELU, MatMul+bias+residual: two Gemms with epilogues (and views) only."""
    m = ffn_model()
    res, _ = check_against_onnxruntime(m, {"x": randn(1, 16, 64)}, tgt, workdir)
    ops = res.manifest["ops"]
    assert ops.get("Gemm") == 2 and not {"Add", "Mul", "Div", "Erf", "Gelu", "MatMul"} & set(ops), ops


def test_gelu_with_two_readers_of_the_gemm_is_not_fused(workdir):
    """The bias-added value is also a graph output: the Gelu stays a node of its own."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
             helper.make_node("Gelu", ["h"], ["y"])]
    m = make_model(nodes, {"x": (F, (1, 6, 8))}, {"y": (F, (1, 6, 16)), "h": (F, (1, 6, 16))},
                   {"w": randn(8, 16), "b": randn(16)}, opset=20)
    g = run_pipeline(import_model(m))
    assert g.op_counts().get("Gelu") == 1
    check_against_onnxruntime(m, {"x": randn(1, 6, 8)}, T, workdir)


# -- a scale by a one-element constant, fused -------------------------------------------------
@pytest.mark.parametrize("op,first", [("Div", False), ("Mul", True), ("Sub", True), ("Sub", False)])
def test_scale_by_one_constant_fused_into_matmul(op, first, workdir):
    """Attention's scores / sqrt(d): the constant's side matters for Sub and Div."""
    ins = ["c", "s"] if first else ["s", "c"]
    m = make_model([helper.make_node("MatMul", ["q", "k"], ["s"]), helper.make_node(op, ins, ["y"])],
                   {"q": (F, (2, 16, 8)), "k": (F, (2, 8, 16))}, {"y": (F, (2, 16, 16))},
                   {"c": np.array(4.0, F)})
    res, _ = check_against_onnxruntime(m, {"q": randn(2, 16, 8), "k": randn(2, 8, 16)}, T, workdir)
    assert res.manifest["ops"] == {"MatMul": 1}


# -- Split by placement ---------------------------------------------------------------------------
def qkv_model(split_output=False, reread=False):
    """qkv projection -> Reshape -> Transpose -> Split on axis 0 -> per-part work."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1, 3]),
             helper.make_node("Split", ["t"], ["q", "k", "v"], axis=0),
             helper.make_node("Add", ["q", "k"], ["qk"]),
             helper.make_node("Mul", ["qk", "v"], ["y"])]
    outs = {"y": (F, (1, 1, 8, 4))}
    if split_output:
        outs["k"] = (F, (1, 1, 8, 4))
    if reread:  # the split's input is read again after it
        nodes.append(helper.make_node("Neg", ["t"], ["z"]))
        outs["z"] = (F, (3, 1, 8, 4))
    return make_model(nodes, {"x": (F, (1, 8, 6))}, outs,
                      {"w": randn(6, 12), "shape": np.array([1, 8, 3, 4], np.int64)})


@pytest.mark.parametrize("kind,placed", [("plain", True), ("split output is a graph output", False),
                                         ("input read after the split", False)])
def test_split_by_placement(kind, placed, workdir):
    m = qkv_model(split_output=kind.startswith("split output"), reread=kind.startswith("input read"))
    g = run_pipeline(import_model(m))
    plan = plan_memory(g, 64)
    split = next(n for n in g.nodes if n.op == "Split")
    assert (id(split) in plan.elided) == placed
    if placed:
        base = plan.of(split.inputs[0]).index
        assert [plan.of(o).index for o in split.outputs] == [base, base + 128, base + 256]
    check_against_onnxruntime(m, {"x": randn(1, 8, 6)}, T, workdir)


# -- softmax, exp, tiled_matmul ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [16, 24, 12])
def test_softmax_rows_by_vectors(n, workdir):
    """Rows a whole number of 8-lane vectors (16, 24: the vector max) and not (12), with
    masked (-inf) entries, a row of equal values and large magnitudes."""
    x = randn(3, 5, n, scale=4)
    x[0, 0, : n // 2] = -np.inf
    x[0, 1, :] = 7.0
    x[1, 2, 3] = 80.0
    x[2, 4] *= 30
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": (F, x.shape)}, {"y": (F, x.shape)})
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_exp_special_values(workdir):
    x = np.array([0, -0.0, 1, -1, 0.5, 88.3, 88.8, 100, -87, -88, -103, -200, np.inf, -np.inf, np.nan,
                  1e-8, -1e-8, 10.25, -10.25], F)
    m = make_model([helper.make_node("Exp", ["x"], ["y"])], {"x": (F, x.shape)}, {"y": (F, x.shape)})
    got = compile_and_run_one(m, {"x": x}, workdir)
    want = np.exp(x.astype(np.float64))
    ok = (want < np.finfo(F).max) & (want > 1.2e-38)
    assert_close(got[ok], want[ok].astype(F), rtol=3e-7, atol=0)
    assert got[7] == np.inf and got[12] == np.inf and got[13] == 0 and got[11] == 0 and np.isnan(got[14])


@pytest.mark.parametrize("kdim, tgt", [(64, T), (40, T), (8, T), (64, "cortex-a76"), (40, "cortex-a76")])
def test_matmul_reduction_unrolled_by_two(kdim, tgt, workdir):
    """64: two vectors per trip on both targets; 40: on 4 lanes (cortex-a76) but not 8."""
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                   {"a": (F, (7, kdim)), "b": (F, (kdim, 20))}, {"y": (F, (7, 20))})
    check_against_onnxruntime(m, {"a": randn(7, kdim), "b": randn(kdim, 20)}, tgt, workdir)


# -- bad inputs -------------------------------------------------------------------------------------
def test_bias_of_the_wrong_length_is_refused_naming_the_add():
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="proj_bias")],
                   {"x": (F, (1, 4, 6))}, {"y": (F, (1, 4, 8))}, {"w": randn(6, 8), "b": randn(5)})
    with pytest.raises(InvalidModelError) as e:
        compile_onnx(m, T)
    assert "proj_bias" in str(e.value) and "Add" in str(e.value)


def test_feed_forward_half_through_the_c_backend(workdir):
    """The same fused kernels written as C (the epilogues lane by lane, the scale and the
    residual read from their buffers)."""
    from test_c_backend import run_c_path
    m = ffn_model()
    x = randn(1, 16, 64)
    got, res = run_c_path(m, T, {"x": x}, workdir)
    assert_close(got[0], onnxruntime_outputs(m, {"x": x})[0], what="C path")
    assert res.manifest["ops"].get("Gemm") == 2
