"""Bounded batch dimensions (--dim N<=8): one library for every batch size up to the
bound, run on every target and compared with onnxruntime at N = 1, 3 and 8; out-of-bound
sizes refused by the compiled code; graphs that mix items of the batch refused at build."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_close, make_model
from onnx import helper

import toolchain
from toolchain.compiler import build, compile_onnx
from toolchain.errors import CompileError, UnsupportedError
from toolchain.harness.clib import build_c_library
from toolchain.harness.oracle import onnxruntime_outputs
from toolchain.harness.runner import HarnessError, link_harness, run_model
from toolchain.targets import get_profile

T = "x86-64-v3"
F = np.float32
BOUND = 8


def batch_model(softmax_axis=1, extra=()):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, input [N,3,8,8]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G"], ["g"], transB=1, name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], axis=softmax_axis, name="softmax"), *extra]
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(F), "B": rng.standard_normal(4).astype(F),
             "G": rng.standard_normal((5, 4)).astype(F)}
    return make_model(nodes, {"x": (F, ["N", 3, 8, 8])}, {"y": (F, ["N", 5])}, inits, opset=17)


def feeds(n):
    return {"x": np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(F)}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bounded") / "batch.onnx"
    onnx.save(batch_model(), path)
    return path


def test_bounded_batch_matches_onnxruntime_on_target(target, model_path, workdir):
    out = workdir / f"bounded-{target}"
    res = build(model_path, target, "model", out, dims={"N": (1, BOUND)})
    profile = get_profile(target)
    exe = link_harness(out, "model", profile)
    model = onnx.load(model_path)
    for n in (1, 3, BOUND):
        f = feeds(n)
        got = run_model(exe, profile, [f["x"]], [(F, (n, 5))], env={"EDGEC_DIMS": str(n)}).outputs[0]
        assert_close(got, onnxruntime_outputs(model, f)[0], what=f"{target} N={n}")
    # model_run is the same at the bound
    f = feeds(BOUND)
    got = run_model(exe, profile, [f["x"]], [(F, (BOUND, 5))]).outputs[0]
    assert_close(got, onnxruntime_outputs(model, f)[0], what=f"{target} model_run")
    # out of bounds: the entry point returns MODEL_ERR_DIM, the harness reports it
    for n in (BOUND + 1, 0):
        with pytest.raises(HarnessError, match="run returned 1"):
            run_model(exe, profile, [feeds(max(n, 1))["x"]], [(F, (max(n, 1), 5))], env={"EDGEC_DIMS": str(n)})
    assert res.manifest["bounded_dims"] == {"N": {"min": 1, "max": BOUND, "axis": 0}}


def test_header_states_the_bound_and_sizes_at_it(model_path, workdir):
    out = workdir / "bounded-header"
    build(model_path, T, "net", out, dims={"N": (1, BOUND)})
    header = (out / "net.h").read_text()
    for line in ("#define NET_DIM_N_MAX 8", "#define NET_DIM_N_MIN 1", "#define NET_ERR_DIM      1",
                 f"#define NET_INPUT0_BYTES {BOUND * 3 * 8 * 8 * 4}u", f"#define NET_INPUT0_ITEM_BYTES {3 * 8 * 8 * 4}u",
                 "int net_run_dims(const void *const *inputs, void *const *outputs, void *arena, const int32_t *dims);"):
        assert line in header
    manifest = json.loads((out / "net.json").read_text())
    assert manifest["inputs"][0]["shape"] == [BOUND, 3, 8, 8]
    assert set(manifest["stack_bytes"]) == {"net_run", "net_run_dims"}


def test_arena_is_one_items_and_never_more_than_the_static_build(model_path):
    model = onnx.load(model_path)
    bounded = compile_onnx(model, T, dims={"N": (1, BOUND)}).plan.arena_size
    one = compile_onnx(model, T, dims={"N": 1}).plan.arena_size
    at_bound = compile_onnx(model, T, dims={"N": BOUND}).plan.arena_size
    print(f"arena: bounded N<={BOUND} {bounded} B, static N=1 {one} B, static N={BOUND} {at_bound} B")
    assert bounded == one < at_bound


def test_c_path_matches_onnxruntime(model_path, workdir):
    out = workdir / "bounded-c"
    build(model_path, T, "model", out, emit="c", dims={"N": (1, BOUND)})
    profile = get_profile(T)
    build_c_library(out, "model", profile)
    exe = link_harness(out, "model", profile)
    f = feeds(3)
    got = run_model(exe, profile, [f["x"]], [(F, (3, 5))], env={"EDGEC_DIMS": "3"}).outputs[0]
    assert_close(got, onnxruntime_outputs(onnx.load(model_path), f)[0], what="C path N=3")
    with pytest.raises(HarnessError, match="run returned 1"):
        run_model(exe, profile, [feeds(1)["x"]], [(F, (1, 5))], env={"EDGEC_DIMS": "9"})


def test_python_api_takes_any_size_in_the_bound(model_path):
    cm = toolchain.compile_model(model_path, dims={"N": (1, BOUND)})
    model = onnx.load(model_path)
    for n in (2, 5):
        assert_close(cm(feeds(n)["x"])[0], onnxruntime_outputs(model, feeds(n))[0], what=f"N={n}")
    with pytest.raises(CompileError, match=r"'N' = 9 is outside 1\.\.8"):
        cm(np.zeros((9, 3, 8, 8), F))
    with pytest.raises(CompileError, match=r"input 'x': expected shape \('N', 3, 8, 8\)"):
        cm(np.zeros((2, 3, 8, 9), F))


def test_real_model_with_a_symbolic_batch(workdir):
    """A model nobody here wrote for this: the transformer encoder exported from PyTorch,
    with its batch axis renamed to a symbol (the Reshapes it holds are batch-1 literals,
    so it is refused, naming a tensor), and the fully-connected autoencoder (batch-safe)."""
    results = {}
    for stem in ("fc_autoencoder", "transformer_encoder"):
        m = onnx.load(ROOT / "tests" / "models" / f"{stem}.onnx")
        for vi in [*m.graph.input, *m.graph.output]:
            vi.type.tensor_type.shape.dim[0].dim_param = "N"
        try:
            cm = toolchain.compile_model(m, dims={"N": (1, 4)})
        except UnsupportedError as e:
            results[stem] = str(e)
            continue
        shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
        x = np.random.default_rng(1).standard_normal((3, *shape)).astype(F)
        want = onnxruntime_outputs(m, {m.graph.input[0].name: x})
        for g_, w in zip(cm(x), want):
            assert_close(g_, w, what=f"{stem} N=3")
        results[stem] = "ok"
    print(results)
    assert results["fc_autoencoder"] == "ok"


@pytest.mark.parametrize("case,message", [
    ("softmax-axis0", r"node 'softmax' \(Softmax\) mixes items of the batch"),
    ("reduce-over-batch", r"node 'sum' \(ReduceSum\) reduces or mixes over the batch axis"),
    ("reshape-merges-batch", r"tensor 'm' is \[1, 5\] for a batch of 1 and \[1, 10\] for 2"),
    ("batch-size-as-data", r"node 'div' \(Div\) reads a value computed from the batch size as data"),
])
def test_graphs_that_mix_items_are_refused(case, message):
    if case == "softmax-axis0":
        m = batch_model(softmax_axis=0)
    else:
        extra = {
            "reduce-over-batch": [helper.make_node("ReduceSum", ["y", "ax"], ["z"], keepdims=1, name="sum")],
            "reshape-merges-batch": [helper.make_node("Reshape", ["y", "flat1"], ["m"], name="merge"),
                                     helper.make_node("Reshape", ["m", "back"], ["z"], name="back")],
            "batch-size-as-data": [helper.make_node("Shape", ["y"], ["s"], name="shape"),
                                   helper.make_node("Gather", ["s", "zero"], ["n"], name="pick"),
                                   helper.make_node("Cast", ["n"], ["nf"], to=1, name="cast"),
                                   helper.make_node("Div", ["y", "nf"], ["z"], name="div")],
        }[case]
        m = batch_model(extra=extra)
        m.graph.output[0].name = "z"
        for name, arr in {"ax": np.array([0], np.int64), "flat1": np.array([1, -1], np.int64),
                          "back": np.array([-1, 5], np.int64), "zero": np.array(0, np.int64)}.items():
            m.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    with pytest.raises(UnsupportedError, match=message):
        compile_onnx(m, T, dims={"N": (1, BOUND)})


def test_two_bounded_dims_are_refused():
    with pytest.raises(UnsupportedError, match="one bounded dimension per build"):
        compile_onnx(batch_model(), T, dims={"N": (1, 8), "M": (1, 2)})


@pytest.mark.parametrize("spec,message", [
    ("N<=0", r"--dim N<=0 is out of range \(1\.\.65536\)"),
    ("N<=x", "--dim wants NAME=N or NAME<=N"),
    ("N<=70000", "out of range"),
])
def test_cli_refuses_bad_bounds(spec, message, model_path, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", "--model", str(model_path),
                           "--target", T, "--out", str(tmp_path / "o"), "--dim", spec],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert message.replace("\\", "") in proc.stderr or __import__("re").search(message, proc.stderr)
    assert not (tmp_path / "o").exists()


def test_an_input_without_the_batch_is_shared_by_every_item():
    """x [N, 4] + b [4] (b a graph input without N): b is passed as it is to each item."""
    model = make_model([helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                       {"x": (F, ["N", 4]), "b": (F, [4])}, {"y": (F, ["N", 4])})
    cm = toolchain.compile_model(model, dims={"N": (1, 6)})
    assert [("batch_dim" in t) for t in cm.manifest["inputs"]] == [True, False]
    rng = np.random.default_rng(4)
    x, b = rng.standard_normal((5, 4)).astype(F), rng.standard_normal(4).astype(F)
    assert_close(cm(x, b)[0], np.maximum(x + b, 0), what="shared input")
