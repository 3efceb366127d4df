"""`invoke bench --train / --grad reverse`: instructions per training step and per primal +
pullback next to those per inference, counted by the QEMU plugin on cortex-a76 (N steps
minus 1 step). The losses the training harness reports are checked against SGD on the MSE
loss written out here in float64 numpy, starting from the model's weights."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from autodiff_helpers import onnx_model
from toolchain.bench import LEARNING_RATE, Result, bench, bench_train, main, seeded_inputs, train_table
from toolchain.harness.plugin import count_instructions
from toolchain.harness.runner import HarnessError, link_train_harness

F = np.float32


def mlp():
    """x (4, 8) -> Gemm(W1, b1) -> Relu -> Gemm(W2, b2) -> y (4, 5)."""
    rng = np.random.default_rng(5)
    inits = {"W1": rng.standard_normal((16, 8)), "b1": rng.standard_normal(16),
             "W2": 0.5 * rng.standard_normal((5, 16)), "b2": rng.standard_normal(5)}
    m = onnx_model([helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)], {"x": (4, 8)}, inits)
    return m, {k: v.astype(F).astype(np.float64) for k, v in inits.items()}


def numpy_losses(P, x, lr, steps):
    """The MSE loss against a zero target before each of `steps` SGD steps, in float64."""
    P, losses = dict(P), []
    for _ in range(steps):
        h = x @ P["W1"].T + P["b1"]
        r = np.maximum(h, 0)
        y = r @ P["W2"].T + P["b2"]
        losses.append(np.mean(y ** 2))
        dy = 2 * y / y.size
        dh = (dy @ P["W2"]) * (h > 0)
        grads = {"W2": dy.T @ r, "b2": dy.sum(0), "W1": dh.T @ x, "b1": dh.sum(0)}
        P = {k: P[k] - lr * grads[k] for k in P}
    return losses


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-train")
    m, inits = mlp()
    onnx.save(m, tmp / "mlp.onnx")
    r = bench(tmp / "mlp.onnx", "cortex-a76", tmp, runs=2, train="mse", grad="reverse")
    return tmp, m, inits, r


def test_training_step_costs_more_than_an_inference_and_counts_repeat(benched):
    tmp, m, inits, r = benched
    assert r.ok, r.error
    assert 0 < r.insns_per_inference < r.insns_per_train_step
    assert r.train_ratio == pytest.approx(r.insns_per_train_step / r.insns_per_inference)
    # the same executable counted again, twice: exactly the bench's figure each time
    from toolchain.targets import get_profile
    profile = get_profile("cortex-a76")
    exe = link_train_harness(tmp / "cortex-a76-mlp-train", "model", profile, LEARNING_RATE, out=tmp / "again")
    x = seeded_inputs(m)["x"]
    data = [x, np.zeros((4, 5), F)]
    counts = [count_instructions(exe, profile, data, [("float32", (2,))], runs=3).per_inference for _ in range(2)]
    assert counts == [r.insns_per_train_step] * 2
    # the first and third step's losses: finite, and those of SGD in float64
    first, third = r.extra["train_losses"]
    assert np.isfinite([first, third]).all()
    want = numpy_losses(inits, x.astype(np.float64), LEARNING_RATE, 3)
    np.testing.assert_allclose([first, third], [want[0], want[2]], rtol=1e-4)
    assert third < first


def test_primal_and_pullback_are_counted_apart(benched):
    _, _, _, r = benched
    assert r.insns_per_primal > 0 and r.insns_per_pullback > 0
    assert r.grad_ratio == pytest.approx((r.insns_per_primal + r.insns_per_pullback) / r.insns_per_inference)
    text = train_table([r])
    assert "insns/step" in text and f"{r.insns_per_train_step:,d}" in text and f"{r.train_ratio:.2f}x" in text


def test_bad_requests_are_refused_clearly(benched, tmp_path):
    tmp, *_ = benched
    with pytest.raises(HarnessError, match="system-mode"):
        bench_train(Result("mlp", "cortex-m4"), tmp / "mlp.onnx", "cortex-m4", tmp_path, "mse", None)
    with pytest.raises(ValueError, match="only reverse mode"):
        bench_train(Result("mlp", "cortex-a76"), tmp / "mlp.onnx", "cortex-a76", tmp_path, None, "forward")
    from toolchain.targets import get_profile
    with pytest.raises(HarnessError, match="neither a --train nor a --grad reverse build"):
        link_train_harness(tmp / "cortex-a76-mlp", "model", get_profile("cortex-a76"))  # the inference build
    with pytest.raises(SystemExit):
        main(["--train", "--no-count", "--model", str(tmp / "mlp.onnx")])


def test_a_failing_training_build_is_recorded_not_raised(tmp_path):
    """An op without a derivative rule: the inference figures stay, the error names the op."""
    m = onnx_model([helper.make_node("Floor", ["x"], ["y"])], {"x": (2, 3)})
    onnx.save(m, tmp_path / "floor.onnx")
    r = bench(tmp_path / "floor.onnx", "cortex-a76", tmp_path, runs=2, compare=False, train="mse")
    assert not r.ok and r.insns_per_inference > 0 and r.insns_per_train_step == 0
    assert r.error.startswith("train: ") and "Floor" in r.error
