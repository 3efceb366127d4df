"""ops/loss.py (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss and their derivative):
against onnxruntime on the host (reductions, class weights, ignore_index including a
negative one, N x C and N x C x d1 x ... shapes, int32 and int64 labels, the log_prob
output, float64), the C path under clang's UB sanitizer, one model on cortex-a76 under QEMU,
out-of-range labels (NaN, never a read outside the buffers), the bad inputs, and the
reverse-mode rule (central differences of the float64 reference, and the compiled pullback)."""
import re

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from autodiff_helpers import check_vjp, onnx_model, pullback64
from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(7)
UBSAN = ["-fsanitize=undefined", "-fsanitize-trap=undefined"]
NLL, SCE = "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"
SCHEMA_REFUSAL = re.compile(r"is tensor\(\w+\); \w+ takes \w+ in \{|is tensor\(\w+\) but ")


def labels(shape, classes, dtype=np.int64, ignore=None):
    t = rng.integers(0, classes, shape).astype(dtype)
    if ignore is not None:
        t.reshape(-1)[::3] = ignore  # every third sample ignored
    return t


def loss_model(op, x, t, w=None, log_prob=False, opset=18, out_dtype=None, **attrs):
    feeds = {"x": x, "t": t} if w is None else {"x": x, "t": t, "w": w}
    shape = t.shape if attrs.get("reduction", "mean") == "none" else ()
    outs = {"y": (out_dtype or x.dtype, shape)}
    if log_prob:
        outs["lp"] = (x.dtype, x.shape)
    node = helper.make_node(op, list(feeds), list(outs), **attrs)
    return make_model([node], {k: (v.dtype, v.shape) for k, v in feeds.items()}, outs, opset=opset), feeds


X2 = rng.standard_normal((4, 5)).astype(F)
X3 = rng.standard_normal((3, 5, 4)).astype(F)
X5 = rng.standard_normal((2, 4, 3, 2, 3)).astype(F)
W5 = rng.uniform(0.2, 2.0, 5).astype(F)
W4 = rng.uniform(0.2, 2.0, 4).astype(F)

# id: (op, x, labels, weight, log_prob, opset, attrs)
CASES = {
    "nll-none": (NLL, X2, labels(4, 5), None, False, 13, {"reduction": "none"}),
    "nll-mean-default": (NLL, X3, labels((3, 4), 5), None, False, 22, {}),
    "nll-sum-weight": (NLL, X3, labels((3, 4), 5), W5, False, 18, {"reduction": "sum"}),
    "nll-mean-weight-ii": (NLL, X3, labels((3, 4), 5, ignore=2), W5, False, 22, {"ignore_index": 2}),
    "nll-none-negative-ii-int32": (NLL, X5, labels((2, 3, 2, 3), 4, np.int32, ignore=-1), None, False, 18,
                                   {"reduction": "none", "ignore_index": -1}),
    "nll-mean-ii-unused": (NLL, X2, labels(4, 5), W5, False, 13, {"ignore_index": 17}),
    "nll-mean-all-ignored": (NLL, X2, np.full(4, 3, np.int64), None, False, 18, {"ignore_index": 3}),
    "nll-float64": (NLL, X3.astype(np.float64), labels((3, 4), 5, ignore=0), W5.astype(np.float64), False, 18,
                    {"ignore_index": 0}),
    "sce-mean": (SCE, X2, labels(4, 5), None, False, 13, {}),
    "sce-none-logprob": (SCE, X3, labels((3, 4), 5), None, True, 13, {"reduction": "none"}),
    "sce-sum-weight-int32": (SCE, X2, labels(4, 5, np.int32), W5, False, 18, {"reduction": "sum"}),
    "sce-mean-weight-ii-5d": (SCE, X5, labels((2, 3, 2, 3), 4, ignore=1), W4, True, 13, {"ignore_index": 1}),
    "sce-mean-negative-ii": (SCE, X3, labels((3, 4), 5, ignore=-5), None, False, 18, {"ignore_index": -5}),
    "sce-none-weight-ii": (SCE, X5, labels((2, 3, 2, 3), 4, ignore=0), W4, True, 18,
                           {"reduction": "none", "ignore_index": 0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_against_onnxruntime(case, workdir):
    op, x, t, w, lp, opset, attrs = CASES[case]
    m, feeds = loss_model(op, x, t, w, lp, opset, **attrs)
    check_against_onnxruntime(m, feeds, T, workdir)


def test_against_the_onnx_reference(workdir):
    """A second, independent oracle: onnx's own numpy implementation (2-D with weights and a
    label equal to ignore_index, where onnxruntime and the reference agree by construction)."""
    x, t = rng.standard_normal((6, 7)).astype(F), labels(6, 7, ignore=4)
    for op in (NLL, SCE):
        m, feeds = loss_model(op, x, t, W5[:1].repeat(7) * np.arange(1, 8, dtype=F), op == SCE, 18,
                              ignore_index=4)
        want = ReferenceEvaluator(m).run(None, feeds)
        got = compile_and_run(m, T, feeds, workdir)[0]
        for g, w_ in zip(got, want):
            assert_close(g, w_, what=op)


def mixed_model():
    """Both losses, every reduction, in one graph (the NLL loss reads the SCE's log_prob)."""
    x = rng.standard_normal((3, 4, 5)).astype(F)
    t = labels((3, 5), 4, ignore=-1)
    nodes = [helper.make_node(SCE, ["x", "t", "w"], ["sce", "lp"], reduction="none", ignore_index=-1),
             helper.make_node(NLL, ["lp", "t", "w"], ["nll"], reduction="mean", ignore_index=-1),
             helper.make_node(NLL, ["lp", "t"], ["nsum"], reduction="sum", ignore_index=-1)]
    outs = {"sce": (F, (3, 5)), "lp": (F, (3, 4, 5)), "nll": (F, ()), "nsum": (F, ())}
    m = make_model(nodes, {"x": (F, x.shape), "t": (np.int64, t.shape)}, outs, {"w": W4}, opset=18)
    return m, {"x": x, "t": t}


def test_mixed_model_on_cortex_a76(workdir):
    m, feeds = mixed_model()
    check_against_onnxruntime(m, feeds, "cortex-a76", workdir)


def test_mixed_model_c_path_under_ubsan(workdir):
    m, feeds = mixed_model()
    got = run_c_path(m, T, feeds, workdir, flags=UBSAN, tag="-loss")[0]
    for g, w_ in zip(got, onnxruntime_outputs(m, feeds)):
        assert_close(g, w_)


@pytest.mark.parametrize("op", [NLL, SCE])
def test_out_of_range_labels_give_nan_and_stay_inside_the_buffers(op, workdir):
    """Invalid per the spec (onnxruntime stops with an error): a label outside [-C, C) that is
    not ignore_index makes its sample's loss NaN (and the reduced loss NaN); the other samples
    are untouched, and a label in [-C, 0) counts from the end (the function body's
    GatherElements). Both backends (the C path under the UB sanitizer) stay in their buffers."""
    x = rng.standard_normal((6, 4)).astype(F)
    t = np.array([0, 9, -5, 3, -1, 1 << 40], np.int64)
    bad = np.array([False, True, True, False, False, True])
    good = np.where(bad, 0, t)
    m, feeds = loss_model(op, x, t, W4, reduction="none")
    want = onnxruntime_outputs(loss_model(op, x, good, W4, reduction="none")[0], {"x": x, "t": good, "w": W4})[0]
    want = np.where(bad, np.nan, want).astype(F)
    assert_close(compile_and_run(m, T, feeds, workdir)[0][0], want, what="object")
    assert_close(run_c_path(m, T, feeds, workdir, flags=UBSAN, tag=f"-oor-{op}")[0][0], want, what="C")
    m, feeds = loss_model(op, x, t, W4, reduction="mean")
    assert np.isnan(compile_and_run(m, T, feeds, workdir)[0][0])


# -- bad inputs -------------------------------------------------------------------------------
X = X3
T34 = labels((3, 4), 5)


@pytest.mark.parametrize("op,feeds,attrs,kind,text", [
    (NLL, {"x": X, "t": T34}, {"reduction": "avg"}, InvalidModelError, "reduction must be one of none, sum, mean"),
    (SCE, {"x": X, "t": T34[:, :3]}, {}, InvalidModelError, "do not match"),
    (NLL, {"x": X[0, 0], "t": T34[0, :1]}, {}, InvalidModelError, "needs shape (N, C, d1, ...)"),
    (SCE, {"x": X, "t": T34, "w": W4}, {}, InvalidModelError, "the weight input must be float32[5]"),
    (NLL, {"x": X, "t": T34.astype(F)}, {}, InvalidModelError, "the labels must be int32 or int64"),
    (SCE, {"x": X.astype(np.float64), "t": T34}, {}, UnsupportedError, "float64 is not supported"),
])
def test_bad_inputs(op, feeds, attrs, kind, text):
    m = make_model([helper.make_node(op, list(feeds), ["y"], name="bad", **attrs)],
                   {k: (v.dtype, v.shape) for k, v in feeds.items()}, {"y": (next(iter(feeds.values())).dtype, None)},
                   opset=18)
    with pytest.raises((InvalidModelError, UnsupportedError)) as e:
        compile_onnx(m, T)
    msg = str(e.value)
    assert e.type is kind and (text in msg or SCHEMA_REFUSAL.search(msg)), msg
    assert "node 'bad'" in msg and f"({op})" in msg, msg


# -- reverse mode ------------------------------------------------------------------------------
def const(name, v):
    dt = 7 if v.dtype == np.int64 else 1
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dt, v.shape, v.reshape(-1)))


def grad_model(op, shape, t, w=None, log_prob=False, trained_weights=False, **attrs):
    """x -> [LogSoftmax for NLL] -> loss; labels as a Constant node, class weights as one
    too, or as an initializer (a parameter: its cotangent is checked as well)."""
    nodes = [const("t", t)] + ([const("w", w)] if w is not None and not trained_weights else [])
    src = "x"
    if op == NLL:
        nodes.append(helper.make_node("LogSoftmax", ["x"], ["ls"], axis=1))
        src = "ls"
    ins = [src, "t"] + (["w"] if w is not None else [])
    outs = ("y", "lp") if log_prob else ("y",)
    nodes.append(helper.make_node(op, ins, list(outs), **attrs))
    return onnx_model(nodes, {"x": shape}, {"w": w} if trained_weights else None, outputs=outs)


GRADS = {
    "sce-mean": (SCE, (4, 5), labels(4, 5), None, False, {}),
    "sce-sum-weight": (SCE, (4, 5), labels(4, 5), W5, False, {"reduction": "sum"}),
    "sce-none-weight-ii-3d": (SCE, (3, 5, 4), labels((3, 4), 5, ignore=2), W5, False,
                              {"reduction": "none", "ignore_index": 2}),
    "sce-mean-weight-negative-ii-5d": (SCE, (2, 4, 3, 2, 3), labels((2, 3, 2, 3), 4, ignore=-1), W4, False,
                                       {"ignore_index": -1}),
    "sce-mean-logprob": (SCE, (3, 5, 2), labels((3, 2), 5, ignore=0), None, True, {"ignore_index": 0}),
    "nll-mean-weight-ii": (NLL, (3, 5, 4), labels((3, 4), 5, ignore=1), W5, False, {"ignore_index": 1}),
    "nll-none": (NLL, (4, 5), labels(4, 5), None, False, {"reduction": "none"}),
}
# class weights as parameters: (id, reduction, ignore_index)
TRAINED_WEIGHTS = [("sce-mean", "mean", -1), ("sce-sum", "sum", 2), ("sce-none", "none", None),
                   ("nll-mean", "mean", 0), ("nll-none", "none", -2)]


@pytest.mark.parametrize("case", list(GRADS))
def test_vjp_matches_finite_differences(case):
    op, shape, t, w, lp, attrs = GRADS[case]
    check_vjp(grad_model(op, shape, t, w, lp, **attrs))


@pytest.mark.parametrize("case, trained", [("sce-mean-weight-negative-ii-5d", True), ("sce-none-weight-ii-3d", True),
                                           ("nll-mean-weight-ii", False)])
def test_compiled_pullback_matches_float64(case, trained):
    """The shipped object (x86-64-v3, in-process) against the float64 pullback checked above
    (with the class weights a parameter: their cotangent too)."""
    from toolchain import compile_grad
    op, shape, t, w, lp, attrs = GRADS[case]
    m = grad_model(op, shape, t, w, lp, trained_weights=trained, **attrs)
    cg = compile_grad(m)
    x = rng.standard_normal(shape).astype(F)
    outs, residuals = cg.primal(x)
    _, ys, _, cts, grads = pullback64(m, [x.astype(np.float64)])
    for y, r in zip(outs, ys):
        np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-5)
    cg.arena[...] = 0xFF
    gin, gpar = cg.pullback(residuals, *[np.asarray(c, F) for c in cts])
    assert len(gin) + len(gpar) == len(grads) == 1 + trained
    for got, want in zip(gin + gpar, grads):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case, reduction, ii", TRAINED_WEIGHTS, ids=[c[0] for c in TRAINED_WEIGHTS])
def test_vjp_in_trained_class_weights(case, reduction, ii):
    """Class weights that are parameters get their cotangent too (edgec.LossWeightGrad)."""
    op = SCE if case.startswith("sce") else NLL
    t = labels((3, 4), 5, ignore=ii)
    attrs = {"reduction": reduction} if ii is None else {"reduction": reduction, "ignore_index": ii}
    prog = check_vjp(grad_model(op, (3, 5, 4), t, W5, op == SCE, trained_weights=True, **attrs))
    assert [p.name for p in prog.params] == ["w"] and prog.params[0].pullback is not None


@pytest.mark.parametrize("case", ["sce-mean-weight-negative-ii-5d", "nll-mean-weight-ii"])
def test_c_path_pullback_matches_float64(case, tmp_path):
    """The portable C build of primal and pullback (edgec.LossGrad's C lowering), compiled by
    zig cc for x86-64-v3 and run by test_autodiff's driver."""
    import subprocess

    import onnx
    from test_autodiff import _driver
    from toolchain.compiler import build
    from toolchain.harness.runner import launcher, run_program, zig_cc
    from toolchain.targets import get_profile

    op, shape, t, w, lp, attrs = GRADS[case]
    m = grad_model(op, shape, t, w, lp, trained_weights=True, **attrs)
    onnx.save(m, tmp_path / "m.onnx")
    res = build(tmp_path / "m.onnx", T, "model", tmp_path / "out", emit="c", grad="reverse")
    (tmp_path / "main.c").write_text(_driver(res.manifest))
    exe = tmp_path / "main"
    sources = [str(tmp_path / "main.c"), str(tmp_path / "out" / "model.c")]
    flags = ["-std=c11", *UBSAN, f"-I{tmp_path / 'out'}", *sources, "-o", str(exe)]
    proc = subprocess.run(zig_cc(get_profile(T)) + flags, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    x = rng.standard_normal(shape).astype(F)
    _, ys, _, cts, grads = pullback64(m, [x.astype(np.float64)])
    (tmp_path / "in.bin").write_bytes(b"".join(np.asarray(a, F).tobytes() for a in [x, *cts]))
    assert len(grads) == 2  # the input's and the class weights' cotangents
    run_program(launcher(get_profile(T)) + [str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], timeout=60)
    flat = np.frombuffer((tmp_path / "out.bin").read_bytes(), F)
    start = 0
    for want in list(ys) + list(grads):
        got = flat[start:start + want.size].reshape(want.shape)
        start += want.size
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert start == flat.size


def test_pullback_with_an_out_of_range_label():
    """The documented rule, compiled: with sum, the bad sample's row of d scores is NaN and the
    others are g w_l (softmax - onehot(l)) written out in numpy; with mean all of it is NaN."""
    from toolchain import compile_grad
    t = np.array([1, 7, -1, 0], np.int64)  # 7: out of range; -1: class 4
    x = rng.standard_normal((4, 5)).astype(F)
    for reduction in ("sum", "mean"):
        cg = compile_grad(grad_model(SCE, (4, 5), t, W5, reduction=reduction))
        outs, residuals = cg.primal(x)
        gin, _ = cg.pullback(residuals, np.array(0.5, F))
        assert np.isnan(outs[0]) and np.isnan(gin[0][1]).all()
        if reduction == "mean":
            assert np.isnan(gin[0]).all()
            continue
        p = np.exp(x - x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cls = np.array([1, 0, 4, 0])
        want = 0.5 * W5[cls][:, None] * (p - np.eye(5)[cls])
        np.testing.assert_allclose(gin[0][[0, 2, 3]], want[[0, 2, 3]], rtol=1e-5, atol=1e-6)
