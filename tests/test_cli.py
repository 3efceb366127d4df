"""The command line and the artifacts it writes: errors are part of the interface
(clear message naming node/op/limit, non-zero exit, nothing written), and what is
written must be a real archive, a header that says the truth, and byte-reproducible."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import ALL_TARGETS, ROOT, make_model

F = np.float32


def edgec(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def small_model(path, **kw):
    rng = np.random.default_rng(1)
    m = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
         helper.make_node("Relu", ["h"], ["y"], name="act")],
        {"x": (F, (1, 8))}, {"y": (F, (1, 4))},
        {"w": rng.standard_normal((4, 8)).astype(F), "b": rng.standard_normal(4).astype(F)}, **kw)
    onnx.save(m, str(path))
    return path


def assert_clean_failure(proc, out_dir, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.startswith("edgec: error:"), err
    assert len(err.splitlines()) == 1, f"one clear line expected, got:\n{err}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    assert not out_dir.exists() or not any(out_dir.iterdir()), "a failed build wrote files"


# -- bad inputs ---------------------------------------------------------------------
def test_unknown_target_lists_known_ones(tmp_path):
    out = tmp_path / "out"
    proc = edgec("build", "--target", "cortex-m99", "--model", str(small_model(tmp_path / "m.onnx")),
                 "--out", str(out))
    assert_clean_failure(proc, out, "cortex-m99", "cortex-a76", "rv64gcv", "x86-64-v3")


def test_unsupported_op_names_node_and_op(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["h"], name="first"),
                    helper.make_node("Unique", ["h"], ["y"], name="the_culprit")],
                   {"x": (F, (2, 5))}, {"y": (F, (2, 5))})
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out))
    assert_clean_failure(proc, out, "Unique", "the_culprit", "unsupported")


@pytest.mark.parametrize("content", [b"", b"not a protobuf at all \xff\xfe" * 10, b"\x08\x07\x12"])
def test_malformed_file(tmp_path, content):
    (tmp_path / "bad.onnx").write_bytes(content)
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "bad.onnx"), "--out", str(out))
    assert proc.returncode != 0
    assert proc.stderr.startswith("edgec: error:") and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_missing_model_file(tmp_path):
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "nope.onnx"), "--out", str(out))
    assert_clean_failure(proc, out, "nope.onnx", "not found")


def test_bad_shapes_name_the_node(tmp_path):
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm_bad")],
                   {"x": (F, (2, 5))}, {"y": (F, (2, 3))}, {"w": np.zeros((4, 3), F)})
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out))
    assert_clean_failure(proc, out, "mm_bad", "MatMul")


def test_symbolic_dim_must_be_bound(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, ("batch", 4))}, {"y": (F, ("batch", 4))})
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out))
    assert_clean_failure(proc, out, "batch", "--dim")
    ok = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
               "--dim", "batch=3")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "model.json").read_text())["inputs"][0]["shape"] == [3, 4]


@pytest.mark.parametrize("name", ["9lives", "has-dash", "a b", ""])
def test_bad_name(tmp_path, name):
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(small_model(tmp_path / "m.onnx")),
                 "--out", str(out), "--name", name)
    assert_clean_failure(proc, out, "--name")


def test_unsupported_opset(tmp_path):
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model",
                 str(small_model(tmp_path / "m.onnx", opset=99)), "--out", str(out))
    assert_clean_failure(proc, out, "opset", "99")


def test_failed_build_keeps_previous_artifacts_intact(tmp_path):
    """Atomic writes: a failing rebuild into a populated directory changes nothing there."""
    out = tmp_path / "out"
    assert edgec("build", "--target", "x86-64-v3", "--model", str(small_model(tmp_path / "m.onnx")),
                 "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = make_model([helper.make_node("Unique", ["x"], ["y"])], {"x": (F, (1, 8))}, {"y": (F, (1, 8))})
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "bad.onnx"), "--out", str(out))
    assert proc.returncode != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- what a good build writes ------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = small_model(d / "m.onnx")
    out = d / "out"
    proc = edgec("build", "--target", "cortex-a76", "--model", str(model), "--out", str(out), "--name", "kws")
    assert proc.returncode == 0, proc.stderr
    return d, model, out, proc.stdout


def test_build_prints_paths_and_figures(built):
    _, _, out, stdout = built
    for f in ("kws.o", "libkws.a", "kws.h", "kws.json"):
        assert str(out / f) in stdout
    manifest = json.loads((out / "kws.json").read_text())
    assert f"{manifest['arena']['size']} bytes" in stdout
    assert f"weights {manifest['weight_bytes']} bytes" in stdout


def test_library_is_a_real_archive(built):
    _, _, out, _ = built
    listing = subprocess.run(["ar", "t", str(out / "libkws.a")], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == ["kws.o"]
    index = subprocess.run(["nm", "--print-armap", str(out / "libkws.a")], capture_output=True, text=True)
    assert "kws_run in kws.o" in index.stdout
    extracted = subprocess.run(["ar", "p", str(out / "libkws.a"), "kws.o"], capture_output=True, check=True)
    assert extracted.stdout == (out / "kws.o").read_bytes()


def test_header_matches_model(built, tmp_path):
    """The header's macros, read back by a C compiler, agree with the ONNX file's shapes."""
    _, model, out, _ = built
    m = onnx.load(str(model))
    prog = tmp_path / "probe.c"
    prog.write_text('#include <stdio.h>\n#include "kws.h"\n'
                    "int main(void){printf(\"%u %u %d %d %u %u\\n\", KWS_ARENA_SIZE, KWS_ARENA_ALIGN,"
                    " KWS_NUM_INPUTS, KWS_NUM_OUTPUTS, KWS_INPUT0_ELEMS, KWS_OUTPUT0_ELEMS);"
                    " int (*f)(const void *const *, void *const *, void *) = kws_run; (void)f; return 0;}\n")
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", f"-I{out}", str(prog), "-c", "-o", str(exe) + ".o"],
                   check=True)
    subprocess.run(["gcc", f"-I{out}", str(prog), "-o", str(exe), "-Wl,--unresolved-symbols=ignore-all"],
                   check=True)
    arena, align, nin, nout, in0, out0 = map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                                                  check=True).stdout.split())
    dims = lambda vi: int(np.prod([d.dim_value for d in vi.type.tensor_type.shape.dim]))  # noqa: E731
    assert (nin, nout) == (len(m.graph.input), len(m.graph.output))
    assert in0 == dims(m.graph.input[0]) and out0 == dims(m.graph.output[0])
    assert align >= 16 and align & (align - 1) == 0
    assert arena % align == 0
    manifest = json.loads((out / "kws.json").read_text())
    # the header never says 0 (a zero-length array is not ISO C): at least one alignment unit
    assert arena == max(manifest["arena"]["size"], align)
    assert manifest["arena"]["size"] >= manifest["arena"]["lower_bound"]


def test_manifest_describes_the_build(built):
    _, model, out, _ = built
    man = json.loads((out / "kws.json").read_text())
    import hashlib
    assert man["hashes"]["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert man["target"]["name"] == "cortex-a76"
    assert man["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [1, 8], "elems": 8, "bytes": 32}
    assert man["outputs"][0]["shape"] == [1, 4]
    assert man["weight_bytes"] == (4 * 8 + 4) * 4
    assert man["macs"] == 4 * 8
    assert sum(man["ops"].values()) >= 1


def test_only_prefixed_symbols_exported(built):
    _, _, out, _ = built
    syms = subprocess.run(["nm", "-g", "--defined-only", str(out / "kws.o")], capture_output=True,
                          text=True, check=True).stdout.split("\n")
    names = [line.split()[-1] for line in syms if line.strip()]
    assert names and all(n.startswith("kws_") for n in names), names
    undefined = subprocess.run(["nm", "-u", str(out / "kws.o")], capture_output=True, text=True, check=True)
    assert undefined.stdout.strip() == ""


@pytest.mark.parametrize("tgt", [t if t in ("x86-64-v3", "cortex-a76", "rv64gcv")
                                 else pytest.param(t, marks=pytest.mark.slow) for t in ALL_TARGETS])
def test_builds_are_byte_reproducible(tmp_path, tgt):
    """Same inputs, different output directories and processes: identical bytes (three
    instruction sets by default, every target in the slow run)."""
    model = small_model(tmp_path / "m.onnx")
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        proc = edgec("build", "--target", tgt, "--model", str(model), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]


def test_dump_ir_shows_each_pass_that_changed_the_graph(tmp_path):
    """--dump-ir prints the graph after import and after every pass that changed it (and
    only those), ending with the schedules chosen for the target."""
    from toolchain.frontend.onnx_import import import_model
    from toolchain.passes import run_pipeline
    from toolchain.targets import get_profile

    model = small_model(tmp_path / "m.onnx")
    log = []
    run_pipeline(import_model(onnx.load(str(model))), vector=get_profile("x86-64-v3").vector_unit, log=log)
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(model), "--out", str(tmp_path / "out"), "--dump-ir")
    assert proc.returncode == 0, proc.stderr
    dumped = re.findall(r"// ---- after (\S+) ----", proc.stderr)
    assert dumped == ["import"] + [name for name, changed in log if changed]
    assert "infer-shapes" not in dumped  # types were right at import: nothing to print
    assert dumped[-1] == "choose-schedules"
    assert re.search(r"= Gemm\(.*\[matmul \d+x\d+x8", proc.stderr)


def test_targets_and_ops_listed():
    proc = edgec("targets")
    assert proc.returncode == 0
    for t in ("cortex-a76", "cortex-a53", "rv64gc", "rv64gcv", "x86-64-v3"):
        assert re.search(rf"^{re.escape(t)}\s", proc.stdout, re.M), t
    ops = edgec("ops").stdout.split()
    for op in ("Conv", "Gemm", "MatMul", "Softmax", "Relu", "Reshape"):
        assert op in ops
