"""A cheaper training step: elementwise nodes in explicit vectors (in place too), the SGD
update p - lr * g fused into one node, Conv's stride-1 input gradient as a Conv and a
pointwise conv's weight gradient as a Gemm (ops/conv_grad.py).

References: onnxruntime (elementwise graphs), float64 numpy written out here (convolution
gradients by their definition, scattered tap by tap; SGD steps of a Gemm layer), and
central finite differences of the float64 reference for the rewritten rules."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from onnx import helper

from autodiff_helpers import check_vjp, onnx_model
from helpers import check_against_onnxruntime, make_model
from toolchain.compiler import build, compile_onnx
from toolchain.errors import CompileError
from toolchain.frontend.onnx_import import import_model
from toolchain.passes import run_pipeline
from toolchain.passes.autodiff import reverse

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(17)


def w(*shape):
    return rng.standard_normal(shape).astype(F)


# -- elementwise nodes in explicit vectors -------------------------------------------------
def test_elementwise_chain_in_place_matches_onnxruntime(tmp_path):
    """1,003 elements (not a multiple of any vector step: the main loop, the one-register
    loop and the scalar tail all run); Mul by a one-element input (splat once) writes over
    the Add's buffer, Sub then fuses into it; Relu and Neg as vector-safe unary ops."""
    n = 1003
    m = make_model([helper.make_node("Add", ["x", "y"], ["t"]), helper.make_node("Mul", ["t", "s"], ["u"]),
                    helper.make_node("Sub", ["z", "u"], ["v"]), helper.make_node("Relu", ["v"], ["r"]),
                    helper.make_node("Neg", ["r"], ["out"])],
                   {"x": (F, (n,)), "y": (F, (n,)), "s": (F, ()), "z": (F, (n,))}, {"out": (F, (n,))})
    feeds = {"x": w(n), "y": w(n), "s": np.array(0.37, F), "z": w(n)}
    check_against_onnxruntime(m, feeds, T, tmp_path)


def test_elementwise_on_cortex_a76(tmp_path):
    """One emulated case: NEON's four lanes, 4 x 4 per step, 37 elements (2 steps, 1 vector, 1 scalar)."""
    n = 37
    m = make_model([helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Sub", ["p", "t"], ["out"])],
                   {"x": (F, (1, n)), "s": (F, ()), "p": (F, (1, n))}, {"out": (F, (1, n))})
    check_against_onnxruntime(m, {"x": w(1, n), "s": np.array(-1.5, F), "p": w(1, n)}, "cortex-a76", tmp_path)


def test_update_fuses_into_one_node():
    """Sub(p, Mul(g, lr)) becomes one Mul node reading p as its epilogue operand, and the
    variadic Sum does not take an operand (it has no fixed count of own inputs)."""
    m = make_model([helper.make_node("Mul", ["g", "lr"], ["t"]), helper.make_node("Sub", ["p", "t"], ["out"]),
                    helper.make_node("Sum", ["g", "p", "g"], ["s3"]), helper.make_node("Sub", ["s3", "p"], ["out2"])],
                   {"g": (F, (5, 7)), "lr": (F, ()), "p": (F, (5, 7))}, {"out": (F, (5, 7)), "out2": (F, (5, 7))})
    g = run_pipeline(import_model(m))
    ops = [(n.op, [s.op for s in n.epilogue]) for n in g.nodes]
    assert ("Mul", ["Sub"]) in ops
    assert ("Sum", []) in ops and ("Sub", []) in ops


def test_mismatched_elementwise_shapes_name_the_node():
    m = make_model([helper.make_node("Mul", ["g", "lr"], ["t"], name="scale"),
                    helper.make_node("Sub", ["p", "t"], ["out"], name="update")],
                   {"g": (F, (5, 7)), "lr": (F, ()), "p": (F, (5, 6))}, {"out": (F, (5, 7))})
    with pytest.raises(CompileError) as e:
        compile_onnx(m, T)
    assert "update" in str(e.value) and "Sub" in str(e.value)


# -- the training step ---------------------------------------------------------------------
def _gemm_model(wt, bias):
    return onnx_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], {"x": (3, wt.shape[1])},
                      {"W": wt, "b": bias})


def test_sgd_steps_match_numpy():
    """A 37 x 29 Gemm (1,073 weights: every loop of the update runs) trained for two SGD
    steps on MSE against float64 numpy."""
    from toolchain import compile_train
    wt, bias = 0.3 * w(37, 29), w(37)
    x, target = w(3, 29), w(3, 37)
    ct = compile_train(_gemm_model(wt, bias))
    params = ct.params_init()
    lr = 0.05
    losses = [ct.train_step(params, [x], [target], lr) for _ in range(2)]
    W, b = wt.astype(np.float64), bias.astype(np.float64)
    x64, t64 = x.astype(np.float64), target.astype(np.float64)
    want = []
    for _ in range(2):
        y = x64 @ W.T + b
        want.append(np.mean((y - t64) ** 2))
        dy = 2 * (y - t64) / y.size
        W, b = W - lr * dy.T @ x64, b - lr * dy.sum(0)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    np.testing.assert_allclose(ct.param(params, 0), W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ct.param(params, 1), b, rtol=1e-5, atol=1e-6)


def test_update_is_one_vector_loop_in_a_function_of_its_own(tmp_path, monkeypatch):
    """Every kernel a function of its own (a graph over backends.llvm.INLINE_KERNEL_LIMIT
    nodes, as the real models' steps), cortex-a76: each parameter's update is no node of
    its own (W's its gradient Gemm, accumulating onto W as its C; b's Mul then Sub, written over b), and the
    elementwise functions have vector arithmetic only: no scalar loop LLVM would fall back
    to when the output overlaps the input (which it does, in place: that fallback ran
    every time)."""
    import toolchain.backends.llvm as llvm_backend
    monkeypatch.setattr(llvm_backend, "INLINE_KERNEL_LIMIT", 0)
    path = tmp_path / "gemm.onnx"
    path.write_bytes(_gemm_model(w(32, 16), w(32)).SerializeToString())  # sizes whole 4 x 4 steps
    res = build(path, "cortex-a76", "model", tmp_path / "out", train="mse")
    graph = res.compiled.graph
    steps = [(n.op, [s.op for s in n.epilogue]) for n in graph.nodes]
    w_in = res.compiled.train["program"].params[0].primal
    assert any(n.op == "Gemm" and not n.epilogue and n.inputs[2:] == [w_in] for n in graph.nodes)  # W's update
    assert ("Mul", ["Sub"]) in steps  # b's (its gradient a ReduceSum)
    assert ("Mul", ["Mul"]) in steps  # the Gemm's small operand times -learning_rate
    assert not any(n.op == "Sub" for n in graph.nodes)
    bodies = re.findall(r"define internal [^\n]*_Mul_[^\n]*\{\n(.*?)\n\}", res.compiled.llvm_ir, re.S)
    assert len(bodies) == 4  # b's update, the operand's scale, and the loss's square and seed (96 elements)
    for body in bodies:
        assert re.search(r"fmul [^\n]*<\d+ x float>", body)
        # (the operand's scale negates the learning rate once, a scalar before its splat)
        once = re.sub(r"%\.scalar = fneg [^\n<]*float %[^\n]*\n", "", body, count=1)
        assert not re.search(r"= f(sub|mul|neg) [^\n<]*float %", once), body


# -- convolution gradients ---------------------------------------------------------------
def _conv_grads64(x, wt, ct, strides, pads, dilations, group):
    """dL/dx and dL/dW of L = sum(conv(x, W) * ct), by the definition: each output
    element's taps scattered back (float64, zero padding, 2-D)."""
    x, wt, ct = (a.astype(np.float64) for a in (x, wt, ct))
    dx, dw = np.zeros_like(x), np.zeros_like(wt)
    o_, cg = wt.shape[:2]
    m = o_ // group
    n_, _, oh_, ow_ = ct.shape
    for n, o, oh, ow in itertools.product(range(n_), range(o_), range(oh_), range(ow_)):
        for c, th, tw in itertools.product(range(cg), range(wt.shape[2]), range(wt.shape[3])):
            ih = oh * strides[0] - pads[0] + th * dilations[0]
            iw = ow * strides[1] - pads[1] + tw * dilations[1]
            if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
                ci = (o // m) * cg + c
                dx[n, ci, ih, iw] += ct[n, o, oh, ow] * wt[o, c, th, tw]
                dw[o, c, th, tw] += ct[n, o, oh, ow] * x[n, ci, ih, iw]
    return dx, dw


CONVS = {  # name: (x shape, W shape, attrs, the pullback's convolution nodes)
    "pointwise": ((1, 6, 5, 4), (5, 6, 1, 1), {}, {"Conv", "Gemm"}),
    "pointwise-batch2": ((2, 6, 3, 4), (5, 6, 1, 1), {}, {"Conv", "Gemm"}),
    "depthwise-3x3": ((1, 6, 5, 4), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}, {"Conv"}),
    "grouped-dilated": ((2, 4, 7, 5), (6, 2, 3, 2), {"group": 2, "dilations": [2, 1], "pads": [1, 0, 2, 1]},
                        {"Conv"}),
    "full-3x3-uneven-pads": ((2, 3, 6, 5), (4, 3, 3, 3), {"pads": [2, 1, 0, 1]}, {"Conv", "Gemm"}),
    "stride-2": ((1, 3, 6, 5), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, {"Conv", "Gemm"}),
    "stride-2-depthwise-odd": ((1, 4, 7, 9), (4, 1, 3, 3), {"strides": [2, 2], "group": 4, "pads": [1, 1, 1, 1]},
                               {"Conv"}),
    "stride-2x1-uneven": ((2, 3, 8, 5), (2, 3, 3, 2), {"strides": [2, 1], "pads": [0, 1, 1, 0]}, {"Conv", "Gemm"}),
    "stride-3": ((1, 2, 9, 7), (3, 2, 3, 3), {"strides": [3, 3], "pads": [1, 1, 1, 1]}, {"Gemm", "ConvTranspose"}),
    "grouped-stride-2": ((1, 4, 7, 6), (4, 2, 3, 3), {"strides": [2, 2], "group": 2, "pads": [1, 1, 1, 1]}, {"Conv"}),
    "stride-2-5x5": ((1, 4, 9, 8), (3, 4, 5, 5), {"strides": [2, 2], "pads": [2, 1, 2, 2]}, {"Conv", "Gemm"}),
    "stride-2-even-kernel": ((1, 4, 6, 7), (2, 4, 2, 2), {"strides": [2, 2]}, {"Conv", "Gemm"}),
    "taps-3x3": ((2, 4, 6, 5), (3, 4, 3, 3), {"pads": [2, 1, 0, 1]}, {"Conv", "Gemm"}),
    "taps-stride-2-dilated": ((1, 5, 9, 8), (3, 5, 2, 3), {"strides": [2, 2], "dilations": [1, 2], "pads": [1, 0, 1, 2]},
                              {"Gemm", "Conv"}),
    "pad-wider-than-kernel": ((1, 3, 4, 4), (2, 3, 1, 1), {"pads": [1, 1, 1, 1]}, {"Gemm", "ConvTranspose"}),
    "stem-3-channels": ((1, 3, 8, 7), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, {"Conv", "Gemm"}),
    "pointwise-stride-2": ((1, 4, 7, 6), (3, 4, 1, 1), {"strides": [2, 2]}, {"Conv", "Gemm"}),
    # depthwise weight gradients: one Conv, dy its kernel, the row widened to whole vectors
    "depthwise-kws-like": ((1, 8, 25, 5), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}, {"Conv"}),
    "depthwise-strided-dilated-batch2": ((2, 4, 7, 9), (4, 1, 3, 3), {"group": 4, "strides": [2, 2],
                                                                       "dilations": [1, 2], "pads": [1, 2, 0, 1]},
                                         {"Conv"}),
    "depthwise-1x7-unreached": ((2, 3, 5, 12), (3, 1, 1, 7), {"group": 3, "strides": [2, 2], "pads": [0, 3, 0, 0]},
                                {"Conv"}),
}


def _conv_model(case):
    xs, ws, attrs, _ = CONVS[case]
    return onnx_model([helper.make_node("Conv", ["x", "W"], ["y"], **attrs)], {"x": xs}, {"W": 0.5 * w(*ws)})


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_rules_match_finite_differences(case):
    """The rewritten rules against central differences; stride 1 needs no ConvTranspose,
    a pointwise weight gradient is a Gemm, a small ungrouped kernel's a Gemm per tap; stride
    2 is a stride-1 Conv per phase of the input (with a dilation, the stride-1 form over the
    cotangent spread out with zeros); stride 3 and padding wider than the kernel keep the
    ConvTranspose."""
    m = _conv_model(case)
    check_vjp(m)
    prog = reverse(import_model(m), ["W"])
    assert {n.op for n in prog.pullback.nodes if "Conv" in n.op or n.op == "Gemm"} == CONVS[case][3]


@pytest.mark.parametrize("case", ["pointwise-batch2", "depthwise-3x3", "grouped-dilated", "full-3x3-uneven-pads",
                                  "taps-3x3", "taps-stride-2-dilated", "stride-2", "stride-2-depthwise-odd",
                                  "stride-2x1-uneven", "stem-3-channels", "pointwise-stride-2",
                                  "pad-wider-than-kernel", "grouped-stride-2", "stride-2-5x5", "stride-2-even-kernel",
                                  "depthwise-kws-like", "depthwise-strided-dilated-batch2", "depthwise-1x7-unreached"])
def test_compiled_conv_gradients_match_the_definition(case):
    """The compiled pullback (host, in-process) against the gradients by definition."""
    from toolchain import compile_grad
    m = _conv_model(case)
    xs, ws, attrs, _ = CONVS[case]
    wt = next(np.frombuffer(i.raw_data, F).reshape(ws) for i in m.graph.initializer)
    cg = compile_grad(m)
    x = w(*xs)
    (y,), residuals = cg.primal(x)
    ct = w(*y.shape)
    (gx,), (gw,) = cg.pullback(residuals, ct)
    rank = 2
    pads = attrs.get("pads", [0] * 2 * rank)
    dx, dw = _conv_grads64(x, wt, ct, attrs.get("strides", [1, 1]), pads, attrs.get("dilations", [1, 1]),
                           attrs.get("group", 1))
    np.testing.assert_allclose(gx, dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5)


# -- Gemm with run-time weights read along their rows ------------------------------------
@pytest.mark.parametrize("m_, k_, n_, alpha, beta", [(5, 37, 10, 0.5, 2.0), (1, 8, 4, 1.0, 1.0), (2, 5, 3, 1.0, 0.0)])
def test_gemm_runtime_weights_trans_b_matches_onnxruntime(tmp_path, m_, k_, n_, alpha, beta):
    """transB=1 with B a graph input (a training step's Gemms): dot products along both
    operands' rows in blocks (2 or 4 rows of a by 4 of b, the rest one by one), a scalar
    tail of the reduction; with alpha/beta and a bias (beta 0.0: its values do not matter)."""
    m = make_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=alpha, beta=beta)],
                   {"a": (F, (m_, k_)), "b": (F, (n_, k_)), "c": (F, (n_,))}, {"y": (F, (m_, n_))})
    check_against_onnxruntime(m, {"a": w(m_, k_), "b": w(n_, k_), "c": w(n_)}, T, tmp_path)


def test_gemm_runtime_weights_on_cortex_a76(tmp_path):
    """NEON: blocks of 4 x 4 rows (32 registers), 5 rows of a (a block and one row)."""
    m = make_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)],
                   {"a": (F, (5, 29)), "b": (F, (7, 29)), "c": (F, (7,))}, {"y": (F, (5, 7))})
    check_against_onnxruntime(m, {"a": w(5, 29), "b": w(7, 29), "c": w(7)}, "cortex-a76", tmp_path)


# -- views that share their input's buffer emit no code ----------------------------------
def test_a_view_sharing_its_buffer_is_elided(tmp_path, monkeypatch):
    """Reshape between two kernels shares the arena buffer: the plan elides it (no copy of
    a buffer onto itself, which a kernel in a function of its own would really run).
    Every kernel its own function here."""
    import toolchain.backends.llvm as llvm_backend
    monkeypatch.setattr(llvm_backend, "INLINE_KERNEL_LIMIT", 0)
    m = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["v"]),
                    helper.make_node("ReduceSum", ["v", "axes"], ["y"], keepdims=0)],
                   {"x": (F, (3, 20))}, {"y": (F, (6,))},
                   {"s": np.array([6, 10], np.int64), "axes": np.array([1], np.int64)})
    c = compile_onnx(m, T)
    (view,) = [n for n in c.graph.nodes if n.op == "Reshape"]
    assert id(view) in c.plan.elided
    check_against_onnxruntime(m, {"x": w(3, 20)}, T, tmp_path)


def test_gemm_takes_a_runtime_scalar_then_a_same_shape_operand(tmp_path):
    """p - lr * (a^T b) as the dW update of a training step: Mul by a one-element graph
    input, then Sub from a same-shape operand, both fused into the Gemm's store (the
    scalar loaded once); a one-element constant too."""
    m = make_model([helper.make_node("Gemm", ["a", "b"], ["g"], transA=1),
                    helper.make_node("Mul", ["g", "lr"], ["t"]), helper.make_node("Sub", ["p", "t"], ["y"]),
                    helper.make_node("Gemm", ["a", "b2"], ["g2"], transA=1),
                    helper.make_node("Mul", ["g2", "half"], ["y2"])],
                   {"a": (F, (3, 9)), "b": (F, (3, 10)), "b2": (F, (3, 10)), "lr": (F, ()), "p": (F, (9, 10))},
                   {"y": (F, (9, 10)), "y2": (F, (9, 10))}, {"half": np.array(0.5, F)})
    g = run_pipeline(import_model(m))
    steps = [[(s.op, s.operand is not None) for s in n.epilogue] for n in g.nodes if n.op == "Gemm"]
    assert [("Mul", True), ("Sub", True)] in steps and [("Mul", True)] in steps
    feeds = {"a": w(3, 9), "b": w(3, 10), "b2": w(3, 10), "lr": np.array(0.05, F), "p": w(9, 10)}
    check_against_onnxruntime(m, feeds, T, tmp_path)
