"""Shape-deciding graph inputs (a reduction's axes, a Reshape's shape) given at run time:
the build specializes them to the values the declared output shapes allow, keeps them in
the C contract and checks them at run time (frontend/specialize.py). References: numpy."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import toolchain
from helpers import compile_and_run, make_model
from toolchain.compiler import compile_onnx
from toolchain.contract import ERR_INPUT_VALUE
from toolchain.errors import CompileError, UnsupportedError
from toolchain.harness.runner import HarnessError

F, I64 = np.float32, np.int64
X = np.random.default_rng(3).standard_normal((3, 4, 5)).astype(np.float32)


def reduce_model(out_shape, keepdims=1):
    return make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims)],
                      {"x": (F, (3, 4, 5)), "axes": (I64, (1,))}, {"y": (F, out_shape)}, opset=18)


def test_reduction_axes_from_the_declared_shape_either_sign():
    """[3, 4, 5] -> [3, 1, 5]: only axis 1 (or -2) fits; both forms run, the input stays."""
    run = toolchain.compile_model(reduce_model((3, 1, 5)), "x86-64-v3")
    assert [n for n, _, _ in run.inputs] == ["x", "axes"]
    want = X.sum(axis=1, keepdims=True)
    for axes in ([1], [-2]):
        (got,) = run(X, np.array(axes, np.int64))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_value_the_build_did_not_take_is_refused_at_run_time():
    run = toolchain.compile_model(reduce_model((3, 1, 5)), "x86-64-v3")
    with pytest.raises(CompileError, match=f"returned {ERR_INPUT_VALUE}"):
        run(X, np.array([2], np.int64))


def test_manifest_and_header_list_the_accepted_values(tmp_path):
    _, res, _ = compile_and_run(reduce_model((3, 1, 5)), "x86-64-v3", {"x": X, "axes": np.array([1], np.int64)},
                                tmp_path)
    assert res.manifest["specialized_inputs"] == [{"inputs": ["axes"], "accepted": [[-2], [1]]}]
    header = res.paths["header"].read_text()
    assert f"#define MODEL_ERR_INPUT_VALUE {ERR_INPUT_VALUE}" in header and "axes" in header


def test_values_that_compute_different_results_each_run():
    """[3, 4, 4] -> [3, 4] with keepdims=0: axis 1 and axis 2 both fit and differ; the build
    computes both and the input's value selects."""
    x = np.random.default_rng(4).standard_normal((3, 4, 4)).astype(np.float32)
    m = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                   {"x": (F, (3, 4, 4)), "axes": (I64, (1,))}, {"y": (F, (3, 4))}, opset=18)
    run = toolchain.compile_model(m, "x86-64-v3")
    for axis in (1, 2, -1, -2):
        (got,) = run(x, np.array([axis], np.int64))
        np.testing.assert_allclose(got, x.sum(axis=axis), rtol=1e-5, atol=1e-6)
    with pytest.raises(CompileError, match=f"returned {ERR_INPUT_VALUE}"):
        run(x, np.array([0], np.int64))  # [4, 4]: not the declared shape


def test_too_many_different_results_are_refused_naming_them():
    """CumSum of a [2, 2, 2, 2, 2] tensor: five axes, five results; --bind is the way."""
    m = make_model([helper.make_node("CumSum", ["x", "axis"], ["y"])],
                   {"x": (F, (2, 2, 2, 2, 2)), "axis": (I64, ())}, {"y": (F, (2, 2, 2, 2, 2))}, opset=14)
    with pytest.raises(UnsupportedError, match=r"--bind axis=.*compute 5 different results") as e:
        compile_onnx(m, "x86-64-v3")
    assert str(e.value).count("node 'CumSum_0'") == 1 and e.value.node == "CumSum_0"


def test_reshape_shape_accepts_its_equivalent_forms():
    """shape [4, 15] also as [4, -1], [-1, 15] (the same reshape): all accepted."""
    m = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                   {"x": (F, (3, 4, 5)), "shape": (I64, (2,))}, {"z": (F, (4, 15))})
    run = toolchain.compile_model(m, "x86-64-v3")
    for shape in ([4, 15], [4, -1], [-1, 15]):
        (got,) = run(X, np.array(shape, np.int64))
        np.testing.assert_array_equal(got, np.maximum(X.reshape(4, 15), 0))
    with pytest.raises(CompileError, match=f"returned {ERR_INPUT_VALUE}"):
        run(X, np.array([15, 4], np.int64))


@pytest.mark.parametrize("tgt,emit", [("x86-64-v3", "c"), ("cortex-a76", "object")])
def test_the_check_on_the_c_path_and_an_emulated_target(tmp_path, tgt, emit):
    feeds = {"x": X, "axes": np.array([-2], np.int64)}
    got, _, _ = compile_and_run(reduce_model((3, 1, 5)), tgt, feeds, tmp_path, emit=emit)
    np.testing.assert_allclose(got[0], X.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(HarnessError, match=f"run returned {ERR_INPUT_VALUE}"):
        compile_and_run(reduce_model((3, 1, 5)), tgt, {**feeds, "axes": np.array([0], np.int64)}, tmp_path,
                        emit=emit)


def test_undeclared_output_shapes_keep_the_binding_error():
    m = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])],
                   {"x": (F, (3, 4, 5)), "axes": (I64, (1,))}, {"y": (F, None)}, opset=18)
    with pytest.raises(UnsupportedError, match="--bind axes="):
        compile_onnx(m, "x86-64-v3")


@pytest.mark.parametrize("emit", ["object", "c"])
def test_a_float_input_compared_exactly(tmp_path, emit):
    """Resize's scales as a graph input: [1, 1, 2, 3] from [1, 1, 2, 2] -> [1, 1, 4, 6]; the check
    compares floats exactly (2.0000002 is refused)."""
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    m = make_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
                   {"x": (F, (1, 1, 2, 2)), "scales": (F, (4,))}, {"y": (F, (1, 1, 4, 6))})
    scales = np.array([1, 1, 2, 3], np.float32)
    got, res, _ = compile_and_run(m, "x86-64-v3", {"x": x, "scales": scales}, tmp_path, emit=emit)
    np.testing.assert_array_equal(got[0], x.repeat(2, axis=2).repeat(3, axis=3))
    assert res.manifest["specialized_inputs"][0]["accepted"] == [[1.0, 1.0, 2.0, 3.0]]
    near = scales.copy()
    near[2] = np.nextafter(np.float32(2), np.float32(3))
    with pytest.raises(HarnessError, match=f"run returned {ERR_INPUT_VALUE}"):
        compile_and_run(m, "x86-64-v3", {"x": x, "scales": near}, tmp_path, emit=emit)


def test_the_command_line_says_what_it_checks(tmp_path):
    import contextlib
    import io

    from toolchain.cli import main

    path = tmp_path / "m.onnx"
    path.write_bytes(reduce_model((3, 1, 5)).SerializeToString())
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["build", "--model", str(path), "--target", "x86-64-v3", "--out", str(tmp_path / "out")])
    assert rc in (0, None)
    assert "checked   axes in {[-2], [1]}" in buf.getvalue() and "MODEL_ERR_INPUT_VALUE" in buf.getvalue()


@pytest.mark.parametrize("emit", ["object", "c"])
def test_an_empty_axes_input(tmp_path, emit):
    """ReduceSum with axes of shape [0] (reduce everything): one possible value, no check to fail."""
    m = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                   {"x": (F, (3, 4, 5)), "axes": (I64, (0,))}, {"y": (F, (1, 1, 1))}, opset=18)
    got, _, _ = compile_and_run(m, "x86-64-v3", {"x": X, "axes": np.zeros(0, np.int64)}, tmp_path, emit=emit)
    np.testing.assert_allclose(got[0], X.sum(keepdims=True), rtol=1e-5)
