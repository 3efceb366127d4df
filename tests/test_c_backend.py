"""The portable C path (`build(..., emit="c")`): the same op lowerings emitted as C99, compiled
by zig cc for every target and run under the target's instruction set, against onnxruntime;
agreement with the LLVM path on the real models; the C compiles with the strict flags under
gcc and clang (zig cc), includes only <stdint.h>/<stddef.h> and leaves nothing undefined;
the CMake and Make fragments link a program in one line."""
import hashlib
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import ALL_TARGETS, ROOT, assert_close, host_and_one_emulated, make_model, onnxruntime_outputs
from test_models import MODELS, NAMES, feeds_for
from toolchain.cli import main as cli_main
from toolchain.backends.c import compile_c
from toolchain.harness.clib import build_c_library
from toolchain.compiler import build
from toolchain.errors import CompileError, InvalidModelError
from toolchain.harness.runner import link_harness, run_model
from toolchain.inspect.elf import check_self_contained, read_object
from toolchain.targets import all_profiles, get_profile

T = "x86-64-v3"
RNG = np.random.default_rng(7)


def save(model: onnx.ModelProto, workdir):
    data = model.SerializeToString()
    path = workdir / f"{hashlib.sha1(data).hexdigest()[:12]}.onnx"
    path.write_bytes(data)
    return path


def run_c_path(model, target, feeds, workdir, flags=(), tag=""):
    """Build with emit="c", compile <name>.c into lib<name>.a for the target (zig cc, strict
    flags), link the shared C harness, run natively or under qemu-user."""
    path = model if not isinstance(model, onnx.ModelProto) else save(model, workdir)
    out = workdir / f"c-{target}-{path.stem}{tag}"
    res = build(path, target, "model", out, emit="c")
    profile = get_profile(target)
    build_c_library(out, "model", profile, flags=flags)
    exe = link_harness(out, "model", profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    ordered = [feeds[i["name"]] for i in res.manifest["inputs"]]
    return run_model(exe, profile, ordered, specs).outputs, res


def run_llvm_path(path, target, feeds, workdir):
    out = workdir / f"o-{target}-{path.stem}"
    res = build(path, target, "model", out)
    profile = get_profile(target)
    exe = link_harness(out, "model", profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    return run_model(exe, profile, [feeds[i["name"]] for i in res.manifest["inputs"]], specs).outputs


def check(model, feeds, target, workdir, **kw):
    want = onnxruntime_outputs(model, feeds)
    got, res = run_c_path(model, target, feeds, workdir, **kw)
    for j, (g, w) in enumerate(zip(got, want)):
        compare(g, w, f"C path on {target}, output {j}")
    return res


def compare(got, want, what):
    """assert_close, and NaN and infinities where they are expected, exactly."""
    if np.asarray(want).dtype.kind == "f":
        fin = np.isfinite(want)
        np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=what)
        got, want = np.where(fin, got, 0), np.where(fin, want, 0)
    assert_close(got, want, what=what)


# -- models --------------------------------------------------------------------------------
def vision_model():
    """Conv (+fused Relu), MaxPool, BatchNorm, global pool, Gemm, Softmax: the CNN path."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["p", "s", "bb", "mu", "var"], ["n"]),
        helper.make_node("GlobalAveragePool", ["n"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["l"], transB=1),
        helper.make_node("Softmax", ["l"], ["y"], axis=1),
    ]
    inits = {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "b": RNG.standard_normal(4).astype(np.float32),
             "s": RNG.uniform(0.5, 1.5, 4).astype(np.float32), "bb": RNG.standard_normal(4).astype(np.float32),
             "mu": RNG.standard_normal(4).astype(np.float32), "var": RNG.uniform(0.5, 2, 4).astype(np.float32),
             "fw": RNG.standard_normal((5, 4)).astype(np.float32), "fb": RNG.standard_normal(5).astype(np.float32)}
    m = make_model(nodes, {"x": (np.float32, [1, 3, 8, 8])}, {"y": (np.float32, [1, 5])}, inits)
    return m, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def math_model():
    """The inline math functions (exp/log/tanh/erf/sigmoid/pow/sqrt/floor) and LayerNorm,
    whose bit tricks (float<->int reinterpretation, shifts) are the C path's subtle part."""
    ops = ["Exp", "Tanh", "Erf", "Sigmoid", "Floor", "Ceil", "Softplus"]
    nodes = [helper.make_node(op, ["x"], [f"y_{op}"]) for op in ops]
    nodes += [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Log", ["a"], ["y_Log"]),
              helper.make_node("Sqrt", ["a"], ["y_Sqrt"]),
              helper.make_node("Pow", ["a", "e"], ["y_Pow"]),
              helper.make_node("LayerNormalization", ["x", "g", "be"], ["y_LN"], axis=-1),
              helper.make_node("ReduceMax", ["x"], ["y_Max"], axes=[1], keepdims=0)]
    outs = {f"y_{op}": (np.float32, [4, 16]) for op in ops + ["Log", "Sqrt", "Pow", "LN"]}
    outs["y_Max"] = (np.float32, [4])
    inits = {"e": np.array(1.7, np.float32), "g": RNG.standard_normal(16).astype(np.float32),
             "be": RNG.standard_normal(16).astype(np.float32)}
    m = make_model(nodes, {"x": (np.float32, [4, 16])}, outs, inits, opset=17)
    x = (RNG.standard_normal((4, 16)) * 4).astype(np.float32)
    x[0, :4] = [0.0, -0.0, 1e-3, 30.0]
    return m, {"x": x}


def int_model():
    """Integer and boolean data: Gather with negative int64 indices, Cast, comparisons,
    Where, integer Add/Mul/Div, and uint8/bool outputs."""
    nodes = [
        helper.make_node("Gather", ["x", "idx"], ["gx"], axis=1),
        helper.make_node("Cast", ["gx"], ["gi"], to=TensorProto.INT32),
        helper.make_node("Add", ["gi", "k32"], ["ai"]),
        helper.make_node("Mul", ["ai", "k32"], ["mi"]),
        helper.make_node("Div", ["mi", "d32"], ["y_div"]),
        helper.make_node("Greater", ["x", "thr"], ["gt"]),
        helper.make_node("Where", ["gt", "x", "thr"], ["y_where"]),
        helper.make_node("Cast", ["gt"], ["y_bool_u8"], to=TensorProto.UINT8),
        helper.make_node("Equal", ["y_div", "k32"], ["y_eq"]),
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
        helper.make_node("Cast", ["xi"], ["y_back"], to=TensorProto.FLOAT),
    ]
    inits = {"idx": np.array([[0, -1], [2, -3]], np.int64), "k32": np.array([3], np.int32),
             "d32": np.array([-2], np.int32), "thr": np.array(0.25, np.float32)}
    outs = {"y_div": (np.int32, [3, 2, 2]), "y_where": (np.float32, [3, 5]), "y_bool_u8": (np.uint8, [3, 5]),
            "y_eq": (np.bool_, [3, 2, 2]), "y_back": (np.float32, [3, 5])}
    m = make_model(nodes, {"x": (np.float32, [3, 5])}, outs, inits)
    return m, {"x": (RNG.standard_normal((3, 5)) * 20).astype(np.float32)}


def movement_model():
    """Copies and index remapping: Transpose, Concat, Slice, Pad, Resize, Split."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Concat", ["x", "t"], ["c"], axis=1),
        helper.make_node("Slice", ["c", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Pad", ["s", "pads"], ["y_pad"], mode="reflect"),
        helper.make_node("Resize", ["x", "", "scales"], ["y_resize"], mode="linear"),
        helper.make_node("Split", ["c"], ["y_a", "y_b"], axis=1),
    ]
    inits = {"st": np.array([1, 0], np.int64), "en": np.array([4, 6], np.int64),
             "ax": np.array([1, 3], np.int64), "sp": np.array([2, 2], np.int64),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "scales": np.array([1, 1, 2, 1.5], np.float32)}
    outs = {"y_pad": (np.float32, [1, 2, 8, 5]), "y_resize": (np.float32, [1, 2, 12, 9]),
            "y_a": (np.float32, [1, 2, 6, 6]), "y_b": (np.float32, [1, 2, 6, 6])}
    m = make_model(nodes, {"x": (np.float32, [1, 2, 6, 6])}, outs, inits)
    return m, {"x": RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)}


# -- agreement with onnxruntime ---------------------------------------------------------------
@pytest.mark.parametrize("make, where", list(host_and_one_emulated(
    [vision_model, math_model, int_model, movement_model], ["vision", "math", "int", "movement"])))
def test_c_path_matches_onnxruntime(make, where, workdir):
    model, feeds = make()
    check(model, feeds, where, workdir)


# C-path agreement in the slow run: the largest real models, and the FC and LSTM models whose
# kernels (Gemm, the recurrent step) the KWS, GRU and transformer cases already take through C
HEAVY = ("resnet8_cifar10", "mobilenet_v1_025_vww", "fc_autoencoder", "lstm", "lstm_bidir")


@pytest.mark.parametrize("model_path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p
                                        for p in MODELS], ids=NAMES)
def test_real_model_c_path_agrees_with_onnxruntime_and_llvm_path(model_path, workdir):
    model = onnx.load(str(model_path))
    feeds = feeds_for(model)
    want = onnxruntime_outputs(model, feeds)
    got, res = run_c_path(model_path, T, feeds, workdir)
    llvm = run_llvm_path(model_path, T, feeds, workdir)
    for j, (g, w, o) in enumerate(zip(got, want, llvm)):
        assert_close(g, w, what=f"{model_path.stem} C path vs onnxruntime, output {j}")
        assert_close(g, o, what=f"{model_path.stem} C path vs LLVM path, output {j}")


@pytest.mark.parametrize("tgt", [t if t in ("x86-64-v3", "cortex-a53") else pytest.param(t, marks=pytest.mark.slow)
                                 for t in ALL_TARGETS])
def test_bundled_model_c_path_on_every_target(tgt, workdir):
    """The default model (KWS DS-CNN) through the C path on each instruction set (the host and
    one emulated target by default; the C path's node cases sample cortex-a76 and rv64gcv)."""
    path = ROOT / "models" / "kws_dscnn.onnx"
    model = onnx.load(str(path))
    check(model, feeds_for(model), tgt, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("model_path", MODELS, ids=NAMES)
def test_real_models_c_path_on_every_target(model_path, target, workdir):
    model = onnx.load(str(model_path))
    check(model, feeds_for(model), target, workdir)


@pytest.mark.parametrize("make", [math_model, int_model, movement_model], ids=["math", "int", "movement"])
def test_c_path_has_no_undefined_behaviour(make, workdir):
    """Compiled with clang's undefined-behaviour sanitizer in trap mode, the C runs the
    models without tripping it: no signed overflow, bad shift, out-of-range conversion,
    misaligned or out-of-bounds access (any would kill the program with SIGILL)."""
    model, feeds = make()
    check(model, feeds, T, workdir, flags=["-fsanitize=undefined", "-fsanitize-trap=undefined"],
          tag="-ubsan")


def test_portable_sqrt_is_correctly_rounded(target, workdir):
    """-DEDGEC_PORTABLE forces the plain-C sqrt (no builtin, no asm): bit-exact with the
    IEEE square root on special values, subnormals and random floats."""
    x = np.concatenate([
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 1.0, 2.0, 4.0, 1e-45, 1e-40, 1.1754942e-38,
                  3.4028235e38], np.float32),
        RNG.uniform(0, 10, 200).astype(np.float32),
        (2.0 ** RNG.uniform(-149, 127, 200)).astype(np.float32)]).astype(np.float32)
    model = make_model([helper.make_node("Sqrt", ["x"], ["y"])], {"x": (np.float32, [x.size])},
                       {"y": (np.float32, [x.size])})
    got, _ = run_c_path(model, target, {"x": x}, workdir, flags=["-DEDGEC_PORTABLE"], tag="-portable")
    with np.errstate(invalid="ignore"):
        want = np.sqrt(x)
    np.testing.assert_array_equal(got[0].view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
    assert np.isnan(got[0][np.isnan(want)]).all()


# -- the promises of the emitted C ---------------------------------------------------------------
@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    """The math, int and vision models in one C file each, for the source-level checks."""
    out = tmp_path_factory.mktemp("cbuild")
    builds = {}
    for make in (vision_model, math_model, int_model):
        model, _ = make()
        path = out / f"{make.__name__}.onnx"
        onnx.save(model, str(path))
        builds[make.__name__] = build(path, T, "net", out / make.__name__, emit="c")
    return builds


def test_writes_source_header_manifest_and_fragments(c_build):
    res = c_build["math_model"]
    assert sorted(res.paths) == ["cmake", "header", "make", "manifest", "source"]
    assert all(p.is_file() for p in res.paths.values())
    assert not (res.paths["source"].parent / "net.o").exists()  # the C path writes no object
    header = res.paths["header"].read_text()
    assert "int net_run(const void *const *inputs, void *const *outputs, void *arena);" in header
    assert "#define NET_ARENA_SIZE" in header


def test_includes_only_stdint_and_stddef(c_build):
    for res in c_build.values():
        for kind in ("source", "header"):
            includes = re.findall(r"^\s*#\s*include\s*(\S+)", res.paths[kind].read_text(), flags=re.M)
            assert set(includes) <= {"<stdint.h>", "<stddef.h>"}, (kind, includes)


def test_weights_are_static_const_aligned(c_build):
    src = c_build["vision_model"].paths["source"].read_text()
    weights = re.findall(r"^static const (\w+) net_w\d+\[\d+\] EDGEC_ALIGN\(64\)", src, flags=re.M)
    assert len(weights) == 8 and set(weights) == {"float"}
    obj = compile_c(src, get_profile(T))
    info = read_object(obj)
    assert sorted(s.name for s in info.symbols if s.binding == "STB_GLOBAL") == ["net_build_id", "net_run"]
    from elftools.elf.elffile import ELFFile
    import io
    rodata = [s for s in ELFFile(io.BytesIO(obj)).iter_sections() if s.name.startswith(".rodata")
              and s["sh_size"] >= 4 * 4 * 3 * 3 * 3]
    assert rodata and max(s["sh_addralign"] for s in rodata) >= 64


def _undefined_and_exports(obj: bytes):
    info = read_object(obj)
    return info.undefined, [s.name for s in info.symbols if s.binding == "STB_GLOBAL"]


@pytest.mark.parametrize("opt", ["-O2", *(pytest.param(o, marks=pytest.mark.slow) for o in ("-O0", "-O3", "-Os"))])
def test_strict_flags_with_zig_cc_leave_nothing_undefined(c_build, target, opt):
    """clang (zig cc) for the target's triple and CPU, -std=c99 -Wall -Wextra -Werror
    -pedantic, at every optimization level: no warning, no undefined symbol (no memcpy,
    memset, sqrtf...), only <name>_run exported, no writable data."""
    profile = get_profile(target)
    no_ubsan = ["-fno-sanitize=undefined"] if opt == "-O0" else []  # zig cc's debug default
    for name, res in c_build.items():
        src = res.paths["source"].read_text()
        for flags in ([], ["-DEDGEC_PORTABLE"]):
            obj = compile_c(src, profile, flags=flags + no_ubsan, opt=opt)
            undefined, exports = _undefined_and_exports(obj)
            assert undefined == [] and sorted(exports) == ["net_build_id", "net_run"], (name, opt, flags)
            check_self_contained(read_object(obj), profile, "net")


@pytest.mark.parametrize("opt", ["-O0", "-O2", "-O3"])
def test_strict_flags_with_gcc_leave_nothing_undefined(c_build, opt):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for this test (apt-get install -y gcc)"
    for name, res in c_build.items():
        for flags in ([], ["-DEDGEC_PORTABLE"], ["-ffreestanding"]):
            obj = compile_c(res.paths["source"].read_text(), None, cc=[gcc], flags=flags, opt=opt)
            undefined, exports = _undefined_and_exports(obj)
            assert undefined == [] and sorted(exports) == ["net_build_id", "net_run"], (name, opt, flags)


def test_gcc_built_c_path_runs_correctly(workdir):
    """The program built by gcc (not clang) from the C also computes the right values."""
    model, feeds = math_model()
    path = save(model, workdir)
    out = workdir / "gcc-math"
    build(path, T, "model", out, emit="c")
    build_c_library(out, "model", get_profile(T), cc=["gcc"])
    exe = link_harness(out, "model", get_profile(T))
    res_specs = [(np.float32, (4, 16))] * 11 + [(np.float32, (4,))]
    got = run_model(exe, get_profile(T), [feeds["x"]], res_specs).outputs
    for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(model, feeds))):
        compare(g, w, f"gcc-built C path, output {j}")


def test_strict_compile_failure_is_a_compile_error():
    with pytest.raises(CompileError, match="does not compile cleanly"):
        compile_c("int f(void) { int unused; return 0; }\n", get_profile(T))


def test_unknown_emit_is_rejected(workdir):
    model, _ = vision_model()
    with pytest.raises(InvalidModelError, match="--emit must be one of object, c, got 'asm'"):
        build(save(model, workdir), T, "model", workdir / "bad", emit="asm")


def test_cli_emit_c(workdir, capsys):
    model, _ = vision_model()
    out = workdir / "cli-c"
    assert cli_main(["build", "--target", "cortex-a53", "--model", str(save(model, workdir)),
                     "--out", str(out), "--emit", "c", "--name", "kws"]) == 0
    printed = capsys.readouterr().out
    assert "kws.c" in printed and (out / "kws.c").is_file() and (out / "kws.cmake").is_file()
    assert not (out / "libkws.a").exists()


# -- build-system integration ---------------------------------------------------------------------
APP = r"""
#include <stdio.h>
#include "net.h"
static unsigned char arena[NET_ARENA_SIZE] __attribute__((aligned(NET_ARENA_ALIGN)));
int main(void) {
    static float x[NET_INPUT0_ELEMS], y[NET_OUTPUT0_ELEMS];
    const void *in[] = {x};
    void *out[] = {y};
    FILE *f = fopen("x.bin", "rb");
    if (!f || fread(x, sizeof x, 1, f) != 1) return 2;
    fclose(f);
    if (net_run(in, out, arena)) return 3;
    f = fopen("y.bin", "wb");
    fwrite(y, sizeof y, 1, f);
    fclose(f);
    return 0;
}
"""


def _run_app(exe, cwd, x):
    (cwd / "x.bin").write_bytes(x.tobytes())
    subprocess.run([str(exe)], cwd=cwd, check=True)
    return np.frombuffer((cwd / "y.bin").read_bytes(), np.float32)


@pytest.mark.parametrize("emit", ["object", "c"])
def test_cmake_target_links_in_one_line(emit, tmp_path):
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed for this test (apt-get install -y cmake)"
    model, feeds = vision_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    build(path, T, "net", tmp_path / "artifacts", emit=emit)
    proj = tmp_path / "app"
    proj.mkdir()
    (proj / "main.c").write_text(APP)
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(app C)\n"
        f"include({tmp_path / 'artifacts' / 'net.cmake'})\n"
        "add_executable(app main.c)\ntarget_link_libraries(app PRIVATE edgec::net)\n")
    bdir = tmp_path / "b"
    for cmd in ([cmake, "-S", str(proj), "-B", str(bdir), "-DCMAKE_C_COMPILER=gcc"], [cmake, "--build", str(bdir)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    got = _run_app(bdir / "app", tmp_path, feeds["x"])
    assert_close(got.reshape(1, 5), onnxruntime_outputs(model, feeds)[0], what=f"cmake app ({emit})")


@pytest.mark.parametrize("emit", ["object", "c"])
def test_make_fragment_links_in_one_line(emit, tmp_path):
    make = shutil.which("make")
    assert make, "make is needed for this test (apt-get install -y make)"
    model, feeds = vision_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    build(path, T, "net", tmp_path / "artifacts", emit=emit)
    (tmp_path / "main.c").write_text(APP)
    (tmp_path / "Makefile").write_text(
        "CC = gcc\ninclude artifacts/net.mk\n"
        "app: main.c $(NET_LIB)\n\t$(CC) $(NET_CFLAGS) main.c $(NET_LIB) -o $@\n")
    proc = subprocess.run([make, "-C", str(tmp_path), "app"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = _run_app(tmp_path / "app", tmp_path, feeds["x"])
    assert_close(got.reshape(1, 5), onnxruntime_outputs(model, feeds)[0], what=f"make app ({emit})")


def test_every_profile_is_covered():
    """The target fixture's matrix is the set of qemu-user/native profiles (a new one gets C-path
    tests); the board profiles (run.mode system) get theirs from the firmware on their boards."""
    from helpers import ALL_TARGETS
    profiles = all_profiles()
    assert sorted(ALL_TARGETS) == sorted(n for n, p in profiles.items() if p.run_mode == "user")
    assert all(p.run_mode in ("user", "system") for p in profiles.values())
