"""SGD's update folded into the weight gradient's product (passes/train.py
_sgd_into_product): W_new = Gemm(A, B * (-lr * alpha), C=W), accumulated over W's own bytes.

The fused form is used where it is exact (plain SGD, a Gemm or 2-D MatMul weight whose
gradient is one product read by nothing else); momentum and a shared weight (its gradient a
sum of products) keep the general update. References are float64 numpy written out here by
hand (no edgec code), over several steps so that a wrong sign or scale of the step, or a
weight read after it was overwritten, shows in the losses and the parameters."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from autodiff_helpers import onnx_model

LR = 0.05
ALPHA = 0.5  # the first Gemm's alpha: folded into the step's scale


def _w(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)


def gemm_mlp(seed=31):
    """x (4x8) -> Gemm(W1 (16x8), b1, alpha, transB=1) -> Relu -> Gemm(W2 (16x5), b2) -> y:
    both of Gemm's weight layouts, a batch of 4 (dW sums over it), an alpha."""
    w = _w(seed)
    inits = {"W1": w(16, 8), "b1": w(16), "W2": w(16, 5), "b2": w(5)}
    m = onnx_model([helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1, alpha=ALPHA),
                    helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Gemm", ["r", "W2", "b2"], ["y"])], {"x": (4, 8)}, inits)
    return m, inits


def gemm_mlp_steps(P, x, t, lr, steps, mu=None):
    P = {k: v.astype(np.float64) for k, v in P.items()}
    V = {k: np.zeros_like(v) for k, v in P.items()}
    x, t = x.astype(np.float64), t.astype(np.float64)
    losses = []
    for _ in range(steps):
        h = ALPHA * (x @ P["W1"].T) + P["b1"]
        r = np.maximum(h, 0)
        y = r @ P["W2"] + P["b2"]
        losses.append(np.mean((y - t) ** 2))
        dy = 2 * (y - t) / y.size
        dh = (dy @ P["W2"].T) * (h > 0)
        grads = {"W2": r.T @ dy, "b2": dy.sum(0), "W1": ALPHA * dh.T @ x, "b1": dh.sum(0)}
        _apply(P, V, grads, lr, mu)
    return losses, P, V


def matmul_layer(seed=32):
    """x (3x8) -> MatMul(W (8x6)) -> Add(b) -> y: the MatMul weight's gradient x^T dy."""
    w = _w(seed)
    inits = {"W": w(8, 6), "b": w(6)}
    m = onnx_model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                   {"x": (3, 8)}, inits)
    return m, inits


def matmul_steps(P, x, t, lr, steps):
    P = {k: v.astype(np.float64) for k, v in P.items()}
    x, t = x.astype(np.float64), t.astype(np.float64)
    losses = []
    for _ in range(steps):
        y = x @ P["W"] + P["b"]
        losses.append(np.mean((y - t) ** 2))
        dy = 2 * (y - t) / y.size
        _apply(P, {}, {"W": x.T @ dy, "b": dy.sum(0)}, lr, None)
    return losses, P


def shared_weight(seed=33):
    """x (2x8) -> Gemm(W, transB=1) -> Relu -> Gemm(W, transB=1) -> y: one weight read by two
    Gemms, its gradient the sum of two products."""
    w = _w(seed)
    inits = {"W": w(8, 8)}
    m = onnx_model([helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Gemm", ["r", "W"], ["y"], transB=1)], {"x": (2, 8)}, inits)
    return m, inits


def shared_steps(P, x, t, lr, steps):
    W = P["W"].astype(np.float64)
    x, t = x.astype(np.float64), t.astype(np.float64)
    losses = []
    for _ in range(steps):
        h = x @ W.T
        r = np.maximum(h, 0)
        y = r @ W.T
        losses.append(np.mean((y - t) ** 2))
        dy = 2 * (y - t) / y.size
        dh = (dy @ W) * (h > 0)
        W = W - lr * (dy.T @ r + dh.T @ x)
    return losses, {"W": W}


def _apply(P, V, grads, lr, mu):
    for k, g in grads.items():
        if mu is None:
            P[k] = P[k] - lr * g
        else:
            V[k] = mu * V[k] + g
            P[k] = P[k] - lr * V[k]


def _data(shape_x, shape_y, seed=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape_x).astype(np.float32), rng.standard_normal(shape_y).astype(np.float32)


def _train(m, names, x, t, steps, **kw):
    from toolchain import compile_train
    ct = compile_train(m, **kw)
    assert [p["name"] for p in ct.manifest["train"]["params"]] == names
    params, state = ct.params_init(), ct.opt_state_init()
    losses = [ct.train_step(params, [x], [t], LR, *([state] if state is not None else [])) for _ in range(steps)]
    return losses, {n: ct.param(params, i) for i, n in enumerate(names)}


def _updates(m, optimizer="sgd", pipeline=False):
    """{parameter name: (its update's node, the parameter's graph input)} of the step graph
    (after the pass pipeline with `pipeline`)."""
    from toolchain.compiler import import_model
    from toolchain.passes import run_pipeline
    from toolchain.passes.train import train_graph
    tp = train_graph(import_model(m, "m", None), [t.name for t in m.graph.initializer], optimizer=optimizer)
    if pipeline:
        run_pipeline(tp.graph)
    updated = tp.graph.outputs[1:1 + len(tp.params)]
    return {p.name: (v.producer, p.primal) for p, v in zip(tp.params, updated)}, tp.graph


def _fused(node, primal) -> bool:
    """The update is one Gemm accumulating onto the parameter (its C), nothing after it."""
    return node.op == "Gemm" and len(node.inputs) == 3 and node.inputs[2] is primal and not node.epilogue \
        and node.attrs["beta"] == 1.0 and node.attrs["alpha"] == 1.0


@pytest.mark.parametrize("pipeline", [False, True])
def test_sgd_weight_update_is_the_gradient_gemm(pipeline):
    """Under SGD each Gemm/MatMul weight's update is the gradient's own Gemm with C = the
    weight: no elementwise node reads the weight or a materialized gradient of it, and the
    passes (epilogue fusion, CSE) keep it so. Biases keep the elementwise update."""
    for model, weights in ((gemm_mlp, ("W1", "W2")), (matmul_layer, ("W",))):
        m, _ = model()
        ups, g = _updates(m, pipeline=pipeline)
        for name in weights:
            node, primal = ups[name]
            assert _fused(node, primal), (name, node)
            readers = [n for n in g.nodes if any(v is primal for v in n.inputs)]
            assert not any(n.op in ("Sub", "Mul", "Add") for n in readers), [(n.op, n.name) for n in readers]
        for name in set(ups) - set(weights):
            assert ups[name][0].op == "Sub" or pipeline, (name, ups[name][0])


def test_momentum_and_shared_weights_keep_the_general_update():
    """Momentum needs the gradient itself (the velocity); a shared weight's gradient is a
    sum of two products: neither is folded into a product."""
    m, _ = gemm_mlp()
    ups, _ = _updates(m, optimizer="momentum")
    assert all(not _fused(*ups[n]) and ups[n][0].op == "Sub" for n in ("W1", "W2"))
    m, _ = shared_weight()
    ups, _ = _updates(m)
    assert not _fused(*ups["W"]) and ups["W"][0].op == "Sub"


def test_sgd_fused_gemm_layers_match_numpy():
    """Six SGD steps of a two-Gemm MLP (transB weights with alpha, plain weights, batch 4),
    every parameter trained: losses and parameters against float64 numpy."""
    m, inits = gemm_mlp()
    x, t = _data((4, 8), (4, 5))
    names = ["W1", "b1", "W2", "b2"]
    losses, got = _train(m, names, x, t, 6)
    want_losses, P, _ = gemm_mlp_steps(inits, x, t, LR, 6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert losses[-1] < losses[0]
    for n in names:
        np.testing.assert_allclose(got[n], P[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_momentum_gemm_layers_match_numpy():
    """The same MLP under momentum (mu 0.7, the general update): against float64 numpy."""
    m, inits = gemm_mlp()
    x, t = _data((4, 8), (4, 5))
    names = ["W1", "b1", "W2", "b2"]
    losses, got = _train(m, names, x, t, 6, optimizer="momentum", momentum=0.7)
    want_losses, P, _ = gemm_mlp_steps(inits, x, t, LR, 6, mu=0.7)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for n in names:
        np.testing.assert_allclose(got[n], P[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_sgd_fused_matmul_layer_matches_numpy():
    """A MatMul weight (its gradient x^T dy, the Transpose read as transA) under SGD."""
    m, inits = matmul_layer()
    x, t = _data((3, 8), (3, 6))
    losses, got = _train(m, ["W", "b"], x, t, 6)
    want_losses, P = matmul_steps(inits, x, t, LR, 6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for n in ("W", "b"):
        np.testing.assert_allclose(got[n], P[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_sgd_shared_weight_matches_numpy():
    """One weight read by two Gemms (unfused: its gradient is a sum) under SGD."""
    m, inits = shared_weight()
    x, t = _data((2, 8), (2, 8))
    losses, got = _train(m, ["W"], x, t, 6)
    want_losses, P = shared_steps(inits, x, t, LR, 6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    np.testing.assert_allclose(got["W"], P["W"], rtol=1e-4, atol=1e-5)
