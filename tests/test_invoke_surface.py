"""The invoke surface is the edgec CLI: every task prints help on --help instead of running,
every `edgec build` option is reachable through `invoke build`, a killed `invoke build`
takes its compiler with it and leaves nothing; and every bad input or unwritable output is
one `edgec: error:` line, a non-zero exit, and no file written, found before compiling."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ROOT, make_model
from onnx import helper

F = np.float32
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TASKS = ["build", "firmware", "targets", "test", "bench", "ci", "size", "profile", "quantize", "compare", "fuzz"]


def invoke(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "invoke", *args], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=timeout)


def edgec(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=ENV, timeout=120)


def relu_model(path, **kw):
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="act")],
                         {"x": (F, (1, 8))}, {"y": (F, (1, 8))}, **kw), str(path))
    return path


def two_dim_model(path):
    """Two inputs with their own symbolic dimension: `--dim` must be repeatable."""
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["z"], ["w"])],
                         {"x": (F, ("a", 4)), "z": (F, ("b", 3))}, {"y": (F, ("a", 4)), "w": (F, ("b", 3))}),
              str(path))
    return path


def files_under(d: Path) -> set:
    return {str(p.relative_to(d)) for p in d.rglob("*")} if d.exists() else set()


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, f"one line expected, got:\n{err}"
    assert err.startswith("edgec: error:"), err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


# -- help, not a run ---------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_every_task_prints_help(task, tmp_path):
    before = files_under(ROOT / "build")
    proc = invoke(task, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Usage: inv[oke]") and f" {task} " in proc.stdout.splitlines()[0]
    assert "Docstring:" in proc.stdout and proc.stderr == ""
    assert files_under(ROOT / "build") == before, f"`invoke {task} --help` wrote files"


def test_build_help_lists_every_cli_option():
    proc = invoke("build", "--help")
    for flag in ("--target", "--model", "--name", "--out", "--dim", "--emit", "--dump-ir", "--flash-budget",
                 "--ram-budget"):
        assert flag in proc.stdout, flag
    cli = edgec("build", "--help").stdout
    import re
    for flag in set(re.findall(r"--[a-z][a-z-]+", cli)) - {"--help"}:
        assert flag in proc.stdout, f"edgec build {flag} is not reachable through invoke build"


def test_build_without_target_is_one_line():
    assert_one_line_error(invoke("build"), "--target")


# -- every option reachable -----------------------------------------------------------------
def test_invoke_build_passes_every_option(tmp_path):
    model = two_dim_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = invoke("build", "--target", "x86-64-v3", "--model", str(model), "--out", str(out), "--name", "net",
                  "--dim", "a=2", "--dim", "b=5", "--emit", "c", "--flash-budget", "1000000",
                  "--ram-budget", "1000000", "--dump-ir")
    assert proc.returncode == 0, proc.stderr
    assert "// ---- after import ----" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["net.c", "net.cmake", "net.h", "net.json", "net.mk"]
    man = json.loads((out / "net.json").read_text())
    assert [i["shape"] for i in man["inputs"]] == [[2, 4], [5, 3]]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    over = invoke("build", "--target", "x86-64-v3", "--model", str(model), "--out", str(out), "--name", "net",
                  "--dim", "a=2", "--dim", "b=5", "--flash-budget", "1")
    assert_one_line_error(over, "flash budget")
    over = invoke("build", "--target", "x86-64-v3", "--model", str(model), "--out", str(out), "--name", "net",
                  "--dim", "a=2", "--dim", "b=5", "--ram-budget", "1")
    assert_one_line_error(over, "RAM budget")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- a killed invoke takes the compiler with it ----------------------------------------------------
def _processes_mentioning(text: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{p.name}: {cmd}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_invoke_build_leaves_nothing(sig, tmp_path):
    out = tmp_path / f"killed-{sig.name}"
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "build", "--target", "x86-64-v3", "--out", str(out)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until the compiler runs (the bundled model takes seconds to compile), then signal invoke's pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("toolchain" in p for p in _processes_mentioning(str(out))):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the build finished before the signal: make the test model bigger"
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("edgec: error:"), err
    time.sleep(1.0)
    assert _processes_mentioning(str(out)) == [], "a compiler outlived its invoke"
    assert not out.exists(), files_under(out)
    assert [p.name for p in tmp_path.iterdir()] == [], "temporaries left beside --out"


# -- bad inputs: one line, before compiling, nothing written ---------------------------------------
def _bad_out_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    return {"file": (a_file, "not a directory"), "under_file": (a_file / "sub" / "out", "not a directory"),
            "proc": (Path("/proc/edgec-cannot-write-here"), "not writable")}


@pytest.mark.parametrize("case", ["file", "under_file", "proc"])
def test_unusable_out_fails_before_compiling(case, tmp_path):
    out, needle = _bad_out_cases(tmp_path)[case]
    before = files_under(tmp_path)
    # the model does not exist: the --out error proves the check runs before the model is even read
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "missing.onnx"), "--out", str(out))
    assert_one_line_error(proc, "--out", needle)
    assert files_under(tmp_path) == before
    assert not out.exists() or out.is_file()


def test_artifact_name_taken_by_a_directory(tmp_path):
    out = tmp_path / "out"
    (out / "model.h").mkdir(parents=True)
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(relu_model(tmp_path / "m.onnx")), "--out", str(out))
    assert_one_line_error(proc, "model.h", "directory")
    assert files_under(out) == {"model.h"}


@pytest.mark.parametrize("dim", ["batch=99999999999999999999", "batch=0", "batch=-1", "batch=2147483648",
                                 "batch=\u00b2", "batch=", "=3", "batch=1e3", "batch=3\nx"])
def test_bad_dim_is_one_line(dim, tmp_path):
    out = tmp_path / "out"
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(relu_model(tmp_path / "m.onnx")), "--out", str(out),
                 "--dim", dim)
    assert_one_line_error(proc, "--dim")
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--flash-budget", "lots"], "--flash-budget"),
    (["--ram-budget", "99999999999999999999999"], "--ram-budget"),
    (["--emit", "asm"], "--emit"),
    (["--target", "x86\n-64-v3"], "unknown target"),
    (["--name", "a\nb"], "--name"),
    (["--bogus"], "--bogus"),
])
def test_bad_options_are_one_line(args, needle, tmp_path):
    out = tmp_path / "out"
    base = {"--target": "x86-64-v3", "--model": str(relu_model(tmp_path / "m.onnx")), "--out": str(out)}
    argv = ["build"] + [x for k, v in base.items() if k not in args for x in (k, v)] + args
    assert_one_line_error(edgec(*argv), needle)
    assert not out.exists()


def test_bad_model_path_in_message_stays_one_line(tmp_path):
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "no\nsuch.onnx"),
                 "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, "not found", "no\\nsuch.onnx")


def test_hostile_node_name_in_an_error_stays_one_line(tmp_path):
    bad = make_model([helper.make_node("Unique", ["x"], ["y"], name="evil\nedgec: error: forged\r\x1b[2J")],
                     {"x": (F, (1, 8))}, {"y": (F, (1, 8))})
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    proc = edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "Unique", "evil\\nedgec: error: forged\\r\\x1b[2J")
    assert not (tmp_path / "o").exists()


# -- size reports ------------------------------------------------------------------------
def test_size_json_into_missing_directory_and_errors(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    report = tmp_path / "reports" / "deep" / "size.json"
    proc = edgec("size", "--target", "x86-64-v3", "--model", str(model), "--out", str(out), "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())
    assert [p.name for p in report.parent.iterdir()] == ["size.json"], "temporaries left beside the report"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    before = files_under(tmp_path)
    for args, needle in ((["--json", str(tmp_path / "reports")], "is a directory"),
                         (["--json", str(a_file / "size.json")], "not a directory"),
                         (["--html", str(a_file / "x" / "size.html")], "not a directory"),
                         (["--out", str(a_file)], "not a directory")):
        base = ["size", "--target", "x86-64-v3", "--model", str(model), "--out", str(out)]
        if args[0] == "--out":
            base = base[:-2]
        assert_one_line_error(edgec(*base, *args), args[0], needle)
        assert files_under(tmp_path) == before


# -- the output set is replaced as a whole -------------------------------------------------------
def test_switching_emit_kind_leaves_no_stale_files(tmp_path):
    from toolchain.compiler import build

    model = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("not ours")
    common = {"model.h", "model.json", "model.cmake", "model.mk", "other.txt"}
    build(model, "x86-64-v3", "model", out)
    assert files_under(out) == common | {"model.o", "libmodel.a"}
    build(model, "x86-64-v3", "model", out, emit="c")
    assert files_under(out) == common | {"model.c"}
    build(model, "x86-64-v3", "model", out)
    assert files_under(out) == common | {"model.o", "libmodel.a"}
    assert (out / "other.txt").read_text() == "not ours"


@pytest.mark.parametrize("fail_at", [1, 6, 7, 11])  # first and last move aside, first and last rename in
def test_failure_mid_swap_keeps_the_previous_set(fail_at, tmp_path, monkeypatch):
    """The k-th rename of the swap fails: the previous complete set is back, no temporaries."""
    from toolchain import compiler, emit

    model = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    compiler.build(model, "x86-64-v3", "model", out)  # object set
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename, calls = os.rename, []

    def flaky_rename(src, dst, *a, **kw):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device (injected)")
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(emit.os, "rename", flaky_rename)
    with pytest.raises(Exception, match="injected"):
        compiler.build(model, "x86-64-v3", "model", out, emit="c")  # a different set: c instead of object
    monkeypatch.undo()
    assert len(calls) >= fail_at
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]


def test_failure_writing_a_new_directory_leaves_nothing(tmp_path, monkeypatch):
    from toolchain import compiler, emit

    model = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "new" / "deeper" / "out"

    def no_rename(src, dst, *a, **kw):
        raise OSError(5, "I/O error (injected)")

    monkeypatch.setattr(emit.os, "rename", no_rename)
    with pytest.raises(Exception, match="injected"):
        compiler.build(model, "x86-64-v3", "model", out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], "directories or temporaries left"


def test_temporaries_of_a_killed_build_are_swept(tmp_path):
    """A SIGKILLed build cannot clean up; the next build of the same name removes what it left
    (its process is gone), and leaves a live build's private directory alone."""
    from toolchain.compiler import build

    model = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    build(model, "x86-64-v3", "model", out)
    dead = out / ".model.tmp-999999999-abcd"  # pid beyond any pid_max
    (dead / ".previous").mkdir(parents=True)
    (dead / "model.h").write_text("half")
    live = out / f".model.tmp-{os.getpid()}-efgh"
    live.mkdir()
    beside = tmp_path / "fresh.tmp-999999999-ijkl"
    beside.mkdir()
    build(model, "x86-64-v3", "model", out, emit="c")
    build(model, "x86-64-v3", "model", tmp_path / "fresh")
    assert not dead.exists() and live.exists() and not beside.exists()
