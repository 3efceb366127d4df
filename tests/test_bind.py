"""Operands given at run time and graph inputs bound at build time.

- Clip's min/max and Trilu's k as graph inputs are read from their buffers at run time
  (checked against onnxruntime on every target; out-of-range k, NaN, int8 bounds);
  constant ones stay attributes (the fast path: fusable into the producer's store).
- `--bind NAME=VALUES` / `bind={...}` (compile_onnx, build, compile_model): the input
  becomes a constant, leaves the C contract and the manifest lists it; the cache key and
  build id depend on its value; bad values are refused naming the input; an operand that
  must be a compile-time constant suggests `--bind` with the graph inputs it comes from.
- tests/node_suite.py counts a case that passes only with binding as `pass (bound)`.
"""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ROOT, check_against_onnxruntime, make_model, onnxruntime_outputs
from onnx import helper, numpy_helper

from toolchain import cache
from toolchain.cli import main
from toolchain.compiler import build, compile_onnx
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.targets import get_profile

HOST = "x86-64-v3"
F = np.float32
native = pytest.mark.skipif(not get_profile(HOST).runs_natively(), reason="needs an x86-64-v3 host")


def clip_trilu(dtype=F, upper=1):
    """Clip(x, lo, hi) then Trilu(., k): every operand a graph input."""
    return make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
                       helper.make_node("Trilu", ["c", "k"], ["y"], upper=upper)],
                      {"x": (dtype, [2, 3, 5]), "lo": (dtype, []), "hi": (dtype, []), "k": (np.int64, [])},
                      {"y": (dtype, [2, 3, 5])}, opset=14)


def unsqueeze(opset=13):
    return make_model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")],
                      {"x": (F, [2, 3]), "axes": (np.int64, [1])}, {"y": (F, None)}, opset=opset)


def slice_model():
    """Slice with starts/ends from graph inputs, then Mul by a third input: the output shape
    depends on the values."""
    return make_model([helper.make_node("Slice", ["x", "starts", "ends"], ["s"]),
                       helper.make_node("Mul", ["s", "g"], ["y"])],
                      {"x": (F, [4, 6]), "starts": (np.int64, [2]), "ends": (np.int64, [2]), "g": (F, [1])},
                      {"y": (F, None)})


# -- run-time operands --------------------------------------------------------------------
def test_clip_and_trilu_operands_read_at_run_time(target, workdir):
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 3, 5)).astype(F), "lo": np.array(-0.4, F), "hi": np.array(0.7, F), "k": np.array(-1)}
    check_against_onnxruntime(clip_trilu(), feeds, target, workdir)


@native
def test_c_path_reads_run_time_operands(workdir):
    from test_c_backend import check

    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 3, 5)).astype(F), "lo": np.array(-0.3, F), "hi": np.array(0.2, F),
             "k": np.array(2)}
    check(clip_trilu(F, 0), feeds, HOST, workdir)


@native
@pytest.mark.parametrize("upper", [0, 1])
def test_trilu_k_at_run_time_any_value(upper):
    """One build serves every k, out-of-range ones included (clamped: the same result)."""
    import toolchain

    m = clip_trilu(np.int64, upper)
    cm = toolchain.compile_model(m, HOST)
    x = np.arange(-15, 15, dtype=np.int64).reshape(2, 3, 5)
    for k in (-9, -3, -2, 0, 1, 3, 4, 5, 2**40, -2**62, 2**63 - 1):
        feeds = {"x": x, "lo": np.array(-10), "hi": np.array(100), "k": np.array(k)}
        want = onnxruntime_outputs(m, feeds)[0]
        np.testing.assert_array_equal(cm(*feeds.values())[0], want, err_msg=f"k={k}")


@native
def test_clip_run_time_bounds_nan_inverted_and_one_sided():
    import toolchain

    x = np.array([-3, -1, 0, 0.5, 2, np.nan, np.inf, -np.inf], F)
    both = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                      {"x": (F, [8]), "lo": (F, []), "hi": (F, [])}, {"y": (F, [8])})
    cm = toolchain.compile_model(both, HOST)
    for lo, hi in ((-1, 1), (1, -1), (-np.inf, 0.25)):  # min > max gives max (onnxruntime's order)
        feeds = {"x": x, "lo": np.array(lo, F), "hi": np.array(hi, F)}
        np.testing.assert_array_equal(cm(*feeds.values())[0], onnxruntime_outputs(both, feeds)[0])
    only_max = make_model([helper.make_node("Clip", ["x", "", "hi"], ["y"])],
                          {"x": (np.int8, [6]), "hi": (np.int8, [])}, {"y": (np.int8, [6])})
    xi = np.array([-128, -5, 0, 5, 100, 127], np.int8)
    five = np.array(5, np.int8)
    got = toolchain.compile_model(only_max, HOST)(xi, five)[0]
    np.testing.assert_array_equal(got, onnxruntime_outputs(only_max, {"x": xi, "hi": five})[0])


def test_constant_bounds_stay_attributes_and_fuse():
    """The constant case is today's: Clip folds its bounds and fuses into the Conv's store;
    with a bound at run time it keeps the input and stays a node of its own."""
    w = np.ones((2, 1, 1, 1), F)

    def model(lo_const):
        inits = {"w": w, "hi": np.array(6, F), **({"lo": np.array(0, F)} if lo_const else {})}
        ins = {"x": (F, [1, 1, 4, 4]), **({} if lo_const else {"lo": (F, [])})}
        return make_model([helper.make_node("Conv", ["x", "w"], ["c"]),
                           helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                          ins, {"y": (F, [1, 2, 4, 4])}, inits)

    g = compile_onnx(model(True), HOST).graph
    assert [n.op for n in g.nodes] == ["Conv"] and [s.op for s in g.nodes[0].epilogue] == ["Clip"]
    g = compile_onnx(model(False), HOST).graph
    clip = [n for n in g.nodes if n.op == "Clip"]
    assert len(clip) == 1 and clip[0].attrs["max"] == 6.0 and len(clip[0].inputs) == 2
    assert clip[0].inputs[1].name == "lo" and not clip[0].inputs[1].is_const


@pytest.mark.parametrize("node, ins, msg", [
    (helper.make_node("Clip", ["x", "lo"], ["y"]), {"lo": (F, [2])}, "min (input 1) must be a single float32"),
    (helper.make_node("Clip", ["x", "lo"], ["y"]), {"lo": (np.float64, [])}, "min"),
])
def test_bad_run_time_operands_are_refused(node, ins, msg):
    m = make_model([node], {"x": (F, [4]), **ins}, {"y": (F, [4])})
    with pytest.raises(InvalidModelError, match="Clip") as e:
        compile_onnx(m, HOST)
    assert msg in str(e.value)


# -- binding ------------------------------------------------------------------------------
def test_bind_makes_the_input_a_constant_and_drops_it():
    c = compile_onnx(slice_model(), HOST, bind={"starts": np.array([1, 2]), "ends": np.array([3, -1])})
    assert [v.name for v in c.graph.inputs] == ["x", "g"]
    assert c.graph.outputs[0].type.shape == (2, 3)


@native
def test_bound_model_computes_what_onnxruntime_does_with_those_values(tmp_path):
    import toolchain

    m = slice_model()
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((4, 6)).astype(F), np.array([2.5], F)
    for starts, ends in (([1, 2], [3, -1]), ([0, 0], [4, 6]), ([-3, 1], [100, 2])):
        b = {"starts": np.array(starts), "ends": np.array(ends)}
        cm = toolchain.compile_model(m, HOST, bind=b)
        assert [n for n, _, _ in cm.inputs] == ["x", "g"]
        want = onnxruntime_outputs(m, {"x": x, "g": g, **b})[0]
        np.testing.assert_allclose(cm(x, g)[0], want, rtol=1e-6)


@pytest.mark.parametrize("bind, needles", [
    ({"axis": np.array([1])}, ["no input 'axis'", "'x', 'axes'"]),
    ({"axes": np.array([1], np.int32)}, ["'axes'", "int32", "int64 of shape [1]"]),
    ({"axes": np.array([1, 2])}, ["'axes'", "shape [2]"]),
    ({"axes": np.array(1)}, ["'axes'", "shape []"]),
    ({"axes": "1.5"}, ["--bind axes", "'1.5' is not an integer"]),
    ({"axes": "1,2"}, ["--bind axes", "2 values"]),
    ({"axes": "1,,2"}, ["--bind axes", "empty value"]),
    ({"axes": [2**63]}, ["--bind axes", "out of range for int64"]),
    ({"axes": [1.5]}, ["--bind axes", "not an integer"]),
    ({"axes": "@/nonexistent/a.npy"}, ["--bind axes", "file not found"]),
])
def test_bad_bindings_name_the_input(bind, needles):
    with pytest.raises(InvalidModelError) as e:
        compile_onnx(unsqueeze(), HOST, bind=bind)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_a_list_of_numbers_is_converted_exactly():
    c = compile_onnx(unsqueeze(), HOST, bind={"axes": [-2]})
    assert c.graph.outputs[0].type.shape == (2, 1, 3)


def test_refusal_suggests_bind_naming_the_graph_inputs():
    with pytest.raises(UnsupportedError) as e:
        compile_onnx(unsqueeze(), HOST)
    assert "it is the graph input 'axes'" in str(e.value) and "--bind axes=..." in str(e.value)
    assert e.value.bind_inputs == ["axes"] and e.value.node == "unsq"
    # computed from two inputs: both named
    m = make_model([helper.make_node("Add", ["a", "b"], ["axes"]),
                    helper.make_node("Unsqueeze", ["x", "axes"], ["y"])],
                   {"x": (F, [2, 3]), "a": (np.int64, [1]), "b": (np.int64, [1])}, {"y": (F, None)})
    with pytest.raises(UnsupportedError) as e:
        compile_onnx(m, HOST)
    assert e.value.bind_inputs == ["a", "b"] and "--bind a=... --bind b=..." in str(e.value)
    c = compile_onnx(m, HOST, bind={"a": np.array([1]), "b": np.array([1])})
    assert c.graph.outputs[0].type.shape == (2, 3, 1)


def test_a_constant_operand_from_a_data_input_suggests_nothing():
    """An operand computed from the data itself (not a graph input's own value): the error
    still says which input; a Shape of an input is folded and never needs binding."""
    m = make_model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
                   {"x": (F, [2, 3])}, {"y": (F, [2, 3])})
    assert compile_onnx(m, HOST).graph.outputs[0].type.shape == (2, 3)


def _cli(tmp_path, *args):
    return main(["build", "--target", HOST, "--out", str(tmp_path / "out"), *args])


def test_cli_bind_manifest_header_and_npy(tmp_path, capsys):
    path = tmp_path / "s.onnx"
    onnx.save(slice_model(), str(path))
    np.save(tmp_path / "ends.npy", np.array([4, 5]))
    assert _cli(tmp_path, "--model", str(path), "--bind", "starts=1, 0", "--bind", f"ends=@{tmp_path}/ends.npy") == 0
    out = capsys.readouterr().out
    assert "bound     starts = [1, 0] (int64, shape [2])" in out
    m = json.loads((tmp_path / "out" / "model.json").read_text())
    assert [i["name"] for i in m["inputs"]] == ["x", "g"] and m["outputs"][0]["shape"] == [3, 5]
    assert [(b["name"], b["values"]) for b in m["bound_inputs"]] == [("starts", [1, 0]), ("ends", [4, 5])]
    h = (tmp_path / "out" / "model.h").read_text()
    assert "#define MODEL_NUM_INPUTS   2" in h and "MODEL_INPUT1_ELEMS 1u" in h and "MODEL_INPUT2" not in h
    old_id = m["build_id"]
    assert _cli(tmp_path, "--model", str(path), "--bind", "starts=1,1", "--bind", "ends=4,5") == 0
    assert json.loads((tmp_path / "out" / "model.json").read_text())["build_id"] != old_id


@pytest.mark.parametrize("args, needles", [
    (["--bind", "axes"], ["--bind wants NAME=VALUES", "'axes'"]),
    (["--bind", "axes=1", "--bind", "axes=2"], ["--bind axes given twice"]),
    (["--bind", "nope=1"], ["no input 'nope'", "its inputs: 'x', 'axes'"]),
    (["--bind", "axes=x"], ["'x' is not an integer"]),
    ([], ["--bind axes=..."]),
])
def test_cli_bind_errors_are_one_line(tmp_path, capsys, args, needles):
    path = tmp_path / "u.onnx"
    onnx.save(unsqueeze(), str(path))
    assert _cli(tmp_path, "--model", str(path), *args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgec: error:")
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "out" / "model.json").exists()


def test_invoke_build_passes_bind(tmp_path):
    path = tmp_path / "u.onnx"
    onnx.save(unsqueeze(), str(path))
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--target", HOST, "--model", str(path),
                           "--out", str(tmp_path / "o"), "--bind", "axes=-1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "o" / "model.json").read_text())
    assert m["bound_inputs"][0]["values"] == [-1] and m["outputs"][0]["shape"] == [2, 3, 1]


def test_cache_key_depends_on_the_bound_value(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEC_CACHE", "1")
    cache._memory.clear()
    path = tmp_path / "u.onnx"
    onnx.save(unsqueeze(), str(path))
    a = build(path, HOST, out=tmp_path / "a", bind={"axes": "0"})
    b = build(path, HOST, out=tmp_path / "b", bind={"axes": "2"})
    again = build(path, HOST, out=tmp_path / "c", bind={"axes": np.array([0])})
    assert a.compiled is not None and b.compiled is not None and again.compiled is None  # the last: a hit
    assert a.manifest["outputs"][0]["shape"] == [1, 2, 3] and b.manifest["outputs"][0]["shape"] == [2, 3, 1]
    assert again.manifest == a.manifest
    ev = [e for e in cache.events if e["source"] == "compiled"][-1]
    assert [i["name"] for i in ev["fields"]["inputs"]] == ["x"] and "axes" in ev["fields"]["options"]["bind"]


# -- the node suite -----------------------------------------------------------------------
def _case(root, name, model, ins, outs):
    d = root / name / "test_data_set_0"
    d.mkdir(parents=True)
    (root / name / "model.onnx").write_bytes(model.SerializeToString())
    for kind, arrays in (("input", ins), ("output", outs)):
        for j, a in enumerate(arrays):
            (d / f"{kind}_{j}.pb").write_bytes(numpy_helper.from_array(np.asarray(a)).SerializeToString())


@native
def test_node_suite_counts_pass_bound_apart(tmp_path):
    from node_suite import run_one, summarize

    x = np.arange(6, dtype=F).reshape(2, 3)
    _case(tmp_path, "unsq", unsqueeze(), [x, np.array([1])], [x.reshape(2, 1, 3)])
    _case(tmp_path, "unsq_wrong", unsqueeze(), [x, np.array([1])], [x.reshape(2, 1, 3) + 1])
    relu = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, [2, 3])}, {"y": (F, [2, 3])})
    _case(tmp_path, "relu", relu, [x - 2], [np.maximum(x - 2, 0)])
    res = {n: run_one(str(tmp_path), n, HOST, with_ort=False) for n in ("unsq", "unsq_wrong", "relu")}
    assert res["unsq"]["status"] == "pass (bound)" and res["unsq"]["bound"] == ["axes"]
    assert res["unsq"]["bound_every_input"] is False
    assert res["relu"]["status"] == "pass" and "bound" not in res["relu"]
    assert res["unsq_wrong"]["status"] == "fail" and res["unsq_wrong"]["message"].startswith("with --bind axes:")
    off = run_one(str(tmp_path), "unsq", HOST, with_ort=False, bind=False)
    assert off["status"] == "unsupported" and "--bind axes=..." in off["message"]
    index = {"onnx": onnx.__version__, "total": 3,
             "cases": {n: {"dtypes": ["float32"] if n == "relu" else ["float32", "int64"], "ops": ["X"]}
                       for n in res}}
    s = summarize(res, index, HOST)
    assert s["pass_all"] == (1, 3) and s["pass_bound_all"] == (2, 3) and s["bound_only"] == ["unsq"]
    assert s["bound_every_input"] == []
    assert s["status"] == {"pass": 1, "pass (bound)": 1, "fail": 1}
    assert [r for r, _ in s["reasons"]] == ["after --bind: wrong result: X"]


@pytest.mark.parametrize("starts, ends", [([2, 0], [1, 6]), ([5, 0], [9, 6])])
def test_an_empty_result_builds(starts, ends):
    """Bound operands can make an empty tensor (a Slice past the end): it is a 0-byte value
    (empty tensors are supported), the output's shape has the zero the spec gives."""
    b = {"starts": np.array(starts), "ends": np.array(ends)}
    c = compile_onnx(slice_model(), HOST, bind=b)
    assert 0 in c.graph.outputs[0].type.shape
