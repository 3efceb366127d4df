"""The harness as the toolchain's proof: exact instruction counts that scale with the
work, guest failures reported clearly (never a hang), and the correctness report."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from helpers import compile_and_run, make_model
from toolchain.bench import bench, error_report
from toolchain.harness.plugin import count_instructions
from toolchain.harness.runner import HarnessError, link_harness, run_model, run_program, zig_cc
from toolchain.targets import get_profile

F = np.float32
rng = np.random.default_rng(11)


def gemm_model(width, depth=64, batch=4):
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                      {"x": (F, (batch, depth))}, {"y": (F, (batch, width))},
                      {"w": rng.standard_normal((width, depth)).astype(F), "b": rng.standard_normal(width).astype(F)})


def built(model, target, workdir, feeds):
    _, res, _ = compile_and_run(model, target, feeds, workdir)
    profile = get_profile(target)
    exe = link_harness(res.paths["library"].parent, "model", profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    return exe, profile, [feeds[i["name"]] for i in res.manifest["inputs"]], specs, res


@pytest.mark.parametrize("where", ["cortex-a76", "rv64gcv", "x86-64-v3"])
def test_instruction_count_is_exactly_repeatable(where, workdir):
    x = rng.standard_normal((4, 64)).astype(F)
    exe, profile, inputs, specs, _ = built(gemm_model(32), where, workdir, {"x": x})
    first = count_instructions(exe, profile, inputs, specs, runs=3)
    second = count_instructions(exe, profile, inputs, specs, runs=4)
    print(f"{where}: {first.per_inference} guest instructions per inference")
    assert first.per_inference == second.per_inference > 0


@pytest.mark.parametrize("where", ["cortex-a53", "rv64gc"])
def test_instruction_count_scales_with_work(where, workdir):
    x = rng.standard_normal((4, 64)).astype(F)
    counts = {}
    for width in (64, 128):
        exe, profile, inputs, specs, _ = built(gemm_model(width), where, workdir, {"x": x})
        counts[width] = count_instructions(exe, profile, inputs, specs, runs=3).per_inference
    ratio = counts[128] / counts[64]
    print(f"{where}: width 64 -> {counts[64]}, width 128 -> {counts[128]} (x{ratio:.2f})")
    assert 1.6 <= ratio <= 2.4


def test_arena_too_small_is_a_clear_failure(harness):
    x = rng.standard_normal((1, 64)).astype(F)
    m = make_model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Exp", ["h"], ["e"]),
                    helper.make_node("Add", ["e", "x"], ["y"])], {"x": (F, (1, 64))}, {"y": (F, (1, 64))})
    _, res, _ = harness(m, "cortex-a76", {"x": x})
    arena = res.manifest["arena"]["size"]
    assert arena > 0
    with pytest.raises(HarnessError, match="wrote past its arena"):
        harness(m, "cortex-a76", {"x": x}, arena_bytes=arena // 4)


C_PROGRAMS = {
    "segfault": "int main(void){ volatile int *p = (int *)16; return *p; }",
    "exit7": '#include <stdio.h>\nint main(void){ puts("about to fail"); return 7; }',
    "loop": "int main(void){ for (volatile int i = 0;; i++) {} }",
}


@pytest.fixture(scope="module")
def guest_programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("guest")
    profile = get_profile("cortex-a53")
    exes = {}
    for name, src in C_PROGRAMS.items():
        (d / f"{name}.c").write_text(src + "\n")
        subprocess.run(zig_cc(profile) + [str(d / f"{name}.c"), "-o", str(d / name)], check=True)
        exes[name] = d / name
    return profile, exes


def test_guest_crash_names_the_signal(guest_programs):
    from toolchain.harness.runner import launcher
    profile, exes = guest_programs
    with pytest.raises(HarnessError, match="SIGSEGV"):
        run_program(launcher(profile) + [str(exes["segfault"])], timeout=60)


def test_guest_exit_code_and_last_output(guest_programs):
    from toolchain.harness.runner import launcher
    profile, exes = guest_programs
    with pytest.raises(HarnessError, match=r"exit code 7(.|\n)*about to fail"):
        run_program(launcher(profile) + [str(exes["exit7"])], timeout=60)


def test_guest_hang_times_out(guest_programs):
    from toolchain.harness.runner import launcher
    profile, exes = guest_programs
    with pytest.raises(HarnessError, match="timed out after 2 s"):
        run_program(launcher(profile) + [str(exes["loop"])], timeout=2)


def test_missing_qemu_is_named(workdir):
    from toolchain.harness.runner import launcher
    fake = dataclasses.replace(get_profile("rv64gc"), qemu="qemu-riscv64-not-installed")
    with pytest.raises(HarnessError, match="qemu-riscv64-not-installed.*apt-get install"):
        launcher(fake)


def test_model_that_writes_its_input_is_caught(tmp_path):
    """The contract says only outputs and arena are written: the harness checks it."""
    (tmp_path / "bad.h").write_text(
        "#define BAD_ARENA_SIZE 64u\n#define BAD_ARENA_ALIGN 16u\n#define BAD_NUM_INPUTS 1\n"
        "#define BAD_NUM_OUTPUTS 1\nint bad_run(const void *const *inputs, void *const *outputs, void *arena);\n")
    (tmp_path / "bad.c").write_text(
        "int bad_run(const void *const *in, void *const *out, void *arena) {\n"
        "  (void)arena; ((float *)in[0])[0] = 42.0f; ((float *)out[0])[0] = 1.0f; return 0; }\n")
    profile = get_profile("cortex-a76")
    subprocess.run(zig_cc(profile) + ["-c", str(tmp_path / "bad.c"), "-o", str(tmp_path / "bad.o")], check=True)
    subprocess.run([sys.executable, "-m", "ziglang", "ar", "rcs", str(tmp_path / "libbad.a"),
                    str(tmp_path / "bad.o")], check=True)
    exe = link_harness(tmp_path, "bad", profile)
    with pytest.raises(HarnessError, match="wrote to input 0"):
        run_model(exe, profile, [np.zeros(4, F)], [("float32", (4,))])


def test_error_report_finds_the_worst_element():
    want = np.array([[1.0, 2.0], [100.0, -3.0]])
    got = want.copy()
    got[1, 1] = -3.01   # the worst by the allclose criterion
    got[1, 0] = 100.05  # larger absolute error, but within rtol for its size
    r = error_report(got, want)
    assert r.worst_index == (1, 1) and not r.ok
    assert r.max_abs == pytest.approx(0.05) and r.max_rel == pytest.approx(0.01 / 3)
    assert error_report(want, want).ok and error_report(want, want).max_abs == 0
    assert not error_report(want[:1], want).ok


def test_bench_reports_the_figures(tmp_path):
    model = tmp_path / "g.onnx"
    model.write_bytes(gemm_model(48).SerializeToString())
    r = bench(model, "cortex-a76", tmp_path, runs=3)
    assert r.ok, r.error
    assert isinstance(r.insns_per_inference, int) and r.insns_per_inference > 0
    assert r.macs == 4 * 48 * 64 and r.insns_per_mac == pytest.approx(r.insns_per_inference / r.macs)
    assert r.median_ns > 0 and r.p99_ns >= r.median_ns and r.timing == "emulated"
    from toolchain.bench import write_json
    write_json([r], tmp_path / "b.json")
    row = json.loads((tmp_path / "b.json").read_text())[0]
    for key in ("model", "target", "insns_per_inference", "insns_per_mac", "median_ns", "p99_ns"):
        assert key in row


@pytest.mark.skipif(not get_profile("x86-64-v3").runs_natively(), reason="the clock probe is x86-64 code")
def test_measured_clock_is_the_cores_and_scales_with_the_chain():
    """The % of peak rests on this figure: it must be a plausible core clock, and the same
    whether the chain is short or long (a probe that measured loop overhead would not be)."""
    from toolchain.bench import measure_clock_mhz

    short, long_ = measure_clock_mhz(50, 2_000_000), measure_clock_mhz(200, 500_000)
    assert 500 < short < 7000 and 500 < long_ < 7000
    assert abs(short - long_) / long_ < 0.25
