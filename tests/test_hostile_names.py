"""Names from the model reach generated text (header comments, the model's file name, the
Make fragment's paths): none of them may break or inject into what edgec writes. Models
whose tensor, node and file names are hostile are built on both paths, the header (and the
C source) compiled with the strictest flags, and the model run and compared."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, make_model
from onnx import helper

F = np.float32
T = "x86-64-v3"  # runs natively: these tests are about text, not instruction sets
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]

HOSTILE = {
    "comment_close": "*/ #error injected",
    "newline": "a\n#error injected\nb",
    "quote_backslash": 'q"\\" \\',
    "trigraph": "??/\n#error spliced ??= ??' ??!",
    "line_splice": "tail\\",
    "non_ascii": "caf\u00e9 \u20ac \U0001F600 \u202e",
    "controls": "\x01\x07\t\x7f\r",
    "comment_open": "/* nested /*",
    "invalid_utf8": "INVALID_UTF8",  # replaced by invalid bytes in the serialized model
}
BAD_BYTES = b"\xff\xfe*/\xc3 \x80\x80bad!"  # invalid UTF-8 (and a comment close), as long as the marker
assert len(BAD_BYTES) == len(b"INVALID_UTF8")


W = [(np.arange(6, dtype=F).reshape(2, 3) - 2.5) * (i + 1) for i in range(len(HOSTILE))]


def hostile_model(where: str) -> bytes:
    """where="tensors": one input x_i and one output y_i = x_i + w_i per hostile text, each
    tensor named with it (the header lists every input and output). where="node": one
    chain x -> Add(w_0) -> ... -> y whose nodes and intermediate tensors carry the texts."""
    texts = list(HOSTILE.values())
    if where == "tensors":
        nodes = [helper.make_node("Add", [f"in {h}", f"w {h}"], [f"out {h}"], name=f"add{i}")
                 for i, h in enumerate(texts)]
        m = make_model(nodes, {f"in {h}": (F, (2, 3)) for h in texts}, {f"out {h}": (F, (2, 3)) for h in texts},
                       {f"w {h}": W[i] for i, h in enumerate(texts)})
    else:
        names = ["x"] + [f"t {h}" for h in texts[:-1]] + ["y"]
        nodes = [helper.make_node("Add", [names[i], f"w{i}"], [names[i + 1]], name=f"node {h}")
                 for i, h in enumerate(texts)]
        m = make_model(nodes, {"x": (F, (2, 3))}, {"y": (F, (2, 3))}, {f"w{i}": W[i] for i in range(len(texts))})
    data = m.SerializeToString()
    assert data.count(b"INVALID_UTF8") >= 1
    return data.replace(b"INVALID_UTF8", BAD_BYTES)


def expected(where: str) -> np.ndarray:
    x = np.arange(6, dtype=F) * F(0.5) - F(1.0)
    if where == "tensors":
        return np.concatenate([x + w.ravel() for w in W])
    for w in W:
        x = x + w.ravel()
    return x


def zig_cc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ziglang", "cc", *args], capture_output=True, text=True, cwd=cwd)


MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "model.h"
/* every tensor of these models is float32 [2, 3] */
typedef char dtype_is_float32[(MODEL_INPUT0_DTYPE_ID == 1 && MODEL_OUTPUT0_DTYPE_ID == 1) ? 1 : -1];
typedef char bytes_agree[(MODEL_INPUT0_BYTES == 4 * MODEL_INPUT0_ELEMS && MODEL_INPUT0_ELEMS == 6) ? 1 : -1];
typedef char arena_not_empty[(MODEL_ARENA_SIZE > 0) ? 1 : -1];
static unsigned char arena_raw[MODEL_ARENA_SIZE + MODEL_ARENA_ALIGN];
int main(void) {
    static float x[MODEL_NUM_INPUTS][6], y[MODEL_NUM_OUTPUTS][6];
    const void *in[MODEL_NUM_INPUTS];
    void *out[MODEL_NUM_OUTPUTS];
    unsigned char *arena = arena_raw + (MODEL_ARENA_ALIGN - (uintptr_t)arena_raw % MODEL_ARENA_ALIGN);
    size_t i, j;
    for (j = 0; j < MODEL_NUM_INPUTS; j++) {
        in[j] = x[j];
        for (i = 0; i < 6; i++) x[j][i] = (float)i * 0.5f - 1.0f;
    }
    for (j = 0; j < MODEL_NUM_OUTPUTS; j++) out[j] = y[j];
    if (model_run(in, out, arena) != 0) return 3;
    printf("%s %s", MODEL_BUILD_ID, MODEL_INPUT0_DTYPE);
    for (j = 0; j < MODEL_NUM_OUTPUTS; j++)
        for (i = 0; i < 6; i++) printf(" %.9g", y[j][i]);
    printf("\n");
    return 0;
}
"""


def build_and_run(where: str, emit: str, tmp: Path, model_file: bytes = b"model.onnx"):
    data = hostile_model(where)
    model_path = os.path.join(os.fsencode(tmp), model_file)
    with open(model_path, "wb") as f:
        f.write(data)
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", "--target", T, "--model", model_path,
                           "--out", str(out), "--emit", emit], capture_output=True, cwd=ROOT, env=ENV)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    header = (out / "model.h").read_bytes()
    assert header.isascii(), "non-ASCII in the header"
    text = header.decode()
    for line in text.splitlines():  # every line is a directive, a comment, or the prototype
        assert not line.rstrip().endswith("\\"), f"line splice in the header: {line!r}"
        assert "??" not in line, f"trigraph in the header: {line!r}"
    (tmp / "main.c").write_text(MAIN)
    cc = zig_cc(*STRICT, f"-I{out}", "-c", "main.c", "-o", "main.o", cwd=tmp)
    assert cc.returncode == 0, cc.stderr
    if emit == "c":
        cc = zig_cc(*STRICT, f"-I{out}", "-c", str(out / "model.c"), "-o", "model_c.o", cwd=tmp)
        assert cc.returncode == 0, cc.stderr
        objs = ["model_c.o"]
    else:
        objs = [str(out / "libmodel.a")]
    link = zig_cc("main.o", *objs, "-o", "app", cwd=tmp)
    assert link.returncode == 0, link.stderr
    run = subprocess.run([str(tmp / "app")], capture_output=True, text=True, check=True)
    build_id, dtype, *values = run.stdout.split()
    manifest = json.loads((out / "model.json").read_text())
    assert build_id == manifest["build_id"] and len(build_id) == 32
    assert dtype == "float32"
    np.testing.assert_array_equal(np.array(values, dtype=F), expected(where))
    return out, header


@pytest.mark.parametrize("emit", ["object", "c"])
def test_hostile_tensor_names(emit, tmp_path):
    _, header = build_and_run("tensors", emit, tmp_path)
    text = header.decode()
    assert text.count("/* input ") == len(HOSTILE) == text.count("/* output ")
    assert "input 0: 'in * / #error injected'" in text  # still named, made inert


@pytest.mark.parametrize("emit", ["object", "c"])
def test_hostile_node_names(emit, tmp_path):
    build_and_run("node", emit, tmp_path)


def test_hostile_model_file_name(tmp_path):
    name = b"m *\\ #error x \n ??= ??( \" \xff\xfe caf\xc3\xa9\x01.onnx"  # no '/': a file name
    _, header = build_and_run("tensors", "object", tmp_path, model_file=name)
    first = header.decode().splitlines()[0]
    assert first.startswith("/* model.h: generated by edgec") and first.endswith("*/")
    assert "\\xff\\xfe" in first and "\\x0a" in first and "\\x5c" in first and "??" not in first


def test_c_comment_text_is_inert():
    from toolchain.contract import c_comment_text
    for s in list(HOSTILE.values()) + [BAD_BYTES, "*/*/", "???/", "**//", "\\\n", "??" * 5 + "/"]:
        t = c_comment_text(s)
        assert t.isascii() and t.isprintable()
        assert "*/" not in t and "/*" not in t and "??" not in t and not t.endswith("\\")
        assert "\n" not in t
    assert c_comment_text("plain_name.1") == "plain_name.1"


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
@pytest.mark.parametrize("emit", ["object", "c"])
def test_make_fragment_with_spaces_in_paths(emit, tmp_path):
    proj = tmp_path / "my project"
    out = proj / "build dir" / "x86 64"
    model = proj / "m.onnx"
    proj.mkdir()
    model.write_bytes(hostile_model("tensors"))
    from toolchain.compiler import build
    build(model, T, "model", out, emit=emit)
    (proj / "main.c").write_text(MAIN)
    (proj / "Makefile").write_text(
        "CC = gcc\n"
        "include build\\ dir/x86\\ 64/model.mk\n"
        "app: main.c $(MODEL_LIB)\n"
        "\t$(CC) $(MODEL_CFLAGS) main.c $(MODEL_LIB) -o $@\n"
        "show:\n"
        "\t@echo $(MODEL_LIB)\n"
        "\t@test -f $(MODEL_LIB) && echo exists\n")
    for goal in ("app", "show"):
        proc = subprocess.run(["make", goal], capture_output=True, text=True, cwd=proj)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2] == "build dir/x86 64/libmodel.a" and lines[-1] == "exists"
    run = subprocess.run([str(proj / "app")], capture_output=True, text=True, check=True)
    assert run.stdout.split()[1] == "float32"
    np.testing.assert_array_equal(np.array(run.stdout.split()[2:], dtype=F), expected("tensors"))
    # included by its absolute path (escaped) from another directory with spaces
    other = tmp_path / "other dir"
    other.mkdir()
    esc = str(out / "model.mk").replace(" ", "\\ ")
    (other / "Makefile").write_text(f"include {esc}\nshow:\n\t@test -f $(MODEL_LIB) && echo $(MODEL_LIB)\n")
    proc = subprocess.run(["make", "show"], capture_output=True, text=True, cwd=other)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == str(out / "libmodel.a")


@pytest.mark.skipif(not shutil.which("cmake"), reason="cmake is not installed")
def test_cmake_fragment_with_spaces_in_paths(tmp_path):
    proj = tmp_path / "my project"
    out = proj / "build dir" / "x86 64"
    proj.mkdir()
    (proj / "m.onnx").write_bytes(hostile_model("tensors"))
    from toolchain.compiler import build
    build(proj / "m.onnx", T, "model", out)
    (proj / "main.c").write_text(MAIN)
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(app C)\n"
        'include("${CMAKE_SOURCE_DIR}/build dir/x86 64/model.cmake")\n'
        "add_executable(app main.c)\ntarget_link_libraries(app PRIVATE edgec::model)\n")
    bdir = tmp_path / "cmake build"
    for cmd in (["cmake", "-S", str(proj), "-B", str(bdir), "-DCMAKE_C_COMPILER=gcc"], ["cmake", "--build", str(bdir)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run = subprocess.run([str(bdir / "app")], capture_output=True, text=True, check=True)
    assert run.stdout.split()[1] == "float32"
    np.testing.assert_array_equal(np.array(run.stdout.split()[2:], dtype=F), expected("tensors"))
