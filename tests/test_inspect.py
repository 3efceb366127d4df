"""Size, symbols, stack and budgets read from the artifacts, checked against independent
readings: the ELF section headers and symbol table parsed by hand here (struct, not
pyelftools), and the frame of a function whose size is known."""
import json
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import ROOT, make_model
from toolchain.backends.llvm_object import call_graph, compile_ir, dynamic_allocas
from toolchain.compiler import build
from toolchain.emit import ar_archive
from toolchain.errors import CompileError, InternalError
from toolchain.inspect.elf import check_library, check_self_contained, read_object
from toolchain.inspect.size import diff, html_chart, size_report
from toolchain.inspect.stack import stack_usage
from toolchain.targets import get_profile

F = np.float32
rng = np.random.default_rng(5)
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4


def mlp(path, width=32):
    m = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
                    helper.make_node("Tanh", ["h"], ["y"])],
                   {"x": (F, (1, 16))}, {"y": (F, (1, width))},
                   {"w": rng.standard_normal((width, 16)).astype(F), "b": rng.standard_normal(width).astype(F)})
    onnx.save(m, str(path))
    return path


def raw_sections(data: bytes):
    """(name, flags, size) of every section, from the ELF64 little-endian headers."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = heads[shstrndx][4]

    def name(off):
        end = data.index(b"\0", strtab_off + off)
        return data[strtab_off + off:end].decode()

    return [(name(h[0]), h[2], h[5]) for h in heads]


def raw_symbols(data: bytes):
    """{name: size} of named symbols defined in the object, from .symtab by hand."""
    sections = raw_sections(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, = struct.unpack_from("<H", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(len(sections))]
    symtab = next(h for (n, _, _), h in zip(sections, heads) if n == ".symtab")
    strtab = heads[symtab[6]]  # sh_link
    out = {}
    for off in range(symtab[4], symtab[4] + symtab[5], 24):
        st_name, st_info, _, st_shndx, _, st_size = struct.unpack_from("<IBBHQQ", data, off)
        if st_name and st_shndx and st_info & 0xF in (1, 2):  # OBJECT, FUNC
            end = data.index(b"\0", strtab[4] + st_name)
            out[data[strtab[4] + st_name:end].decode()] = st_size
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("size")
    model = mlp(d / "m.onnx")
    return d, model, {}


def built(builds, target):
    d, model, cache = builds
    if target not in cache:
        build(model, target, "net", d / target)
        cache[target] = d / target
    return cache[target]


def test_report_agrees_with_section_headers(builds, target):
    out = built(builds, target)
    report = size_report(out, "net")
    data = (out / "net.o").read_bytes()
    alloc = [(n, f, s) for n, f, s in raw_sections(data) if f & SHF_ALLOC]
    text = sum(s for n, f, s in alloc if f & SHF_EXECINSTR)
    writable = sum(s for n, f, s in alloc if f & SHF_WRITE)
    readonly = sum(s for n, f, s in alloc if not f & (SHF_WRITE | SHF_EXECINSTR))
    assert report.sections == {n: s for n, _, s in alloc}
    assert report.code_bytes == text
    assert report.flash_bytes == text + readonly + writable
    assert writable == 0  # weights are read-only, state lives in the arena
    man = json.loads((out / "net.json").read_text())
    assert report.ram_bytes == man["arena"]["size"] + report.stack_bytes["net_run"]
    assert {s["name"]: s["size"] for s in report.symbols} == raw_symbols(data)
    # the weights are there, read-only: as symbols (as the model gave them, or packed for a
    # kernel's tile), or folded by LLVM into literal pools where every load of them is at a
    # constant address (this small model: all of them)
    weights = sum(s["size"] for s in report.symbols if s["name"].startswith("net_w") or "_packed" in s["name"])
    assert weights <= man["weight_bytes"] <= readonly


def test_stack_reported_for_every_entry(builds, target):
    report = size_report(built(builds, target), "net")
    assert set(report.stack_bytes) == {"net_run"}
    # 0 is a real answer: a leaf that keeps everything in registers needs no frame where the
    # return address stays in a register (AArch64, RISC-V); test_stack_of_a_known_large_frame
    # checks the figure itself
    assert 0 <= report.stack_bytes["net_run"] < 64 * 1024
    # the header states the same figure for firmware to reserve
    header = (built(builds, target) / "net.h").read_text()
    assert f"#define NET_STACK_SIZE   {report.stack_bytes['net_run']}u " in header


def test_a_run_time_sized_stack_buffer_is_found_by_function():
    ir_text = """
define void @fixed(i64 %n) {
  %a = alloca [4 x float], align 16
  ret void
}
define void @sized(i64 %n) {
  %a = alloca float, i64 %n, align 16
  ret void
}
"""
    assert dynamic_allocas(ir_text) == ["sized"]


BIG_FRAME_IR = """
define void @big(ptr %p, i64 %i) noredzone "warn-stack-size"="0" {
  %a = alloca [1000 x i32], align 16
  %q = getelementptr [1000 x i32], ptr %a, i64 0, i64 %i
  store volatile i32 1, ptr %q
  call void @small(ptr %a, i64 %i)
  ret void
}
define internal void @small(ptr %p, i64 %i) noinline noredzone "warn-stack-size"="0" {
  %a = alloca [64 x i32], align 16
  %q = getelementptr [64 x i32], ptr %a, i64 0, i64 %i
  store volatile i32 1, ptr %q
  %v = load volatile i32, ptr %q
  store i32 %v, ptr %p
  ret void
}
"""


def test_stack_of_a_known_large_frame(target):
    """4000 bytes of locals in `big`, 256 in `small` which it calls: the worst case of
    `big` holds both, and not much more than their sum."""
    profile = get_profile(target)
    obj, optimized, frames = compile_ir(BIG_FRAME_IR, profile)
    stack = stack_usage(frames, call_graph(optimized), ["big", "small"], profile.return_address_bytes)
    assert 256 <= stack["small"] <= 256 + 64
    assert 4000 + stack["small"] <= stack["big"] <= 4000 + stack["small"] + 64


def test_recursion_is_refused():
    with pytest.raises(CompileError, match="recursion"):
        stack_usage({"f": 16, "g": 16}, {"f": {"g"}, "g": {"f"}}, ["f"])


def test_injected_undefined_symbol_is_caught():
    ir = """declare float @expf(float)
define float @net_run(float %x) { %y = call float @expf(float %x)
  ret float %y }"""
    profile = get_profile("cortex-a76")
    obj, _, _ = compile_ir(ir, profile)
    with pytest.raises(CompileError, match="expf"):
        check_self_contained(read_object(obj), profile, "net")


def test_symbol_outside_prefix_is_caught():
    obj, _, _ = compile_ir("define i32 @helper() { ret i32 0 }", get_profile("rv64gc"))
    with pytest.raises(CompileError, match="outside the 'net_' prefix.*helper"):
        check_self_contained(read_object(obj), get_profile("rv64gc"), "net")


def test_writable_data_is_caught():
    obj, _, _ = compile_ir("@net_state = global i32 0\ndefine i32 @net_run() { ret i32 0 }",
                           get_profile("x86-64-v3"))
    with pytest.raises(CompileError, match="writable data"):
        check_self_contained(read_object(obj), get_profile("x86-64-v3"), "net")


def test_wrong_machine_library_is_caught(builds):
    x86 = (built(builds, "x86-64-v3") / "net.o").read_bytes()
    lib = ar_archive([("net.o", x86, ["net_run"])])
    with pytest.raises(CompileError, match="library member net.o: object machine is EM_X86_64.*EM_AARCH64"):
        check_library(lib, get_profile("cortex-a76"), "net")


def test_wrong_float_abi_is_caught(builds):
    """An object for the hard-float ABI checked against a soft-float profile."""
    import dataclasses
    obj = read_object((built(builds, "rv64gc") / "net.o").read_bytes())
    soft = dataclasses.replace(get_profile("rv64gc"), elf_flags=[
        {"mask": 0x6, "value": 0x0, "meaning": "soft-float ABI"}, {"mask": 0x1, "value": 0x1, "meaning": "RVC"}])
    with pytest.raises(InternalError, match=r"lack soft-float ABI \(flags & 0x6 is 0x4"):
        check_self_contained(obj, soft, "net")


def test_wrong_elf_class_is_caught(builds):
    """An ELF64 object checked against a 32-bit profile of the same machine."""
    import dataclasses
    obj = read_object((built(builds, "cortex-a76") / "net.o").read_bytes())
    with pytest.raises(InternalError, match="object is ELF64, target cortex-a76 needs ELF32"):
        check_self_contained(obj, dataclasses.replace(get_profile("cortex-a76"), elf_class=32), "net")


def test_size_command_catches_a_tampered_library(builds, tmp_path):
    import shutil
    out = tmp_path / "b"
    shutil.copytree(built(builds, "cortex-a76"), out)
    obj, _, _ = compile_ir("declare void @malloc(i64)\ndefine void @net_run() { call void @malloc(i64 4)\n"
                           "  ret void }", get_profile("cortex-a76"))
    (out / "libnet.a").write_bytes(ar_archive([("net.o", obj, ["net_run"])]))
    proc = subprocess.run([sys.executable, "-m", "toolchain", "size", "--target", "cortex-a76", "--name", "net",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "malloc" in proc.stderr


@pytest.mark.parametrize("budget", ["flash", "ram"])
def test_budget_below_the_figure_fails_and_writes_nothing(builds, tmp_path, budget):
    d, model, _ = builds
    man = json.loads((built(builds, "cortex-a76") / "net.json").read_text())
    figure = man[f"{budget}_bytes"]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", "--target", "cortex-a76", "--model",
                           str(model), "--name", "net", "--out", str(out), f"--{budget}-budget", str(figure - 1)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert f"{'flash' if budget == 'flash' else 'RAM'} budget exceeded: {figure:,} bytes" in proc.stderr
    assert "largest contributors" in proc.stderr
    assert not out.exists()
    ok = subprocess.run([sys.executable, "-m", "toolchain", "build", "--target", "cortex-a76", "--model",
                         str(model), "--name", "net", "--out", str(out), f"--{budget}-budget", str(figure)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr


def test_profile_budget_applies(builds, tmp_path, monkeypatch):
    import dataclasses
    import toolchain.compiler as compiler
    tight = dataclasses.replace(get_profile("rv64gcv"), budgets={"flash_bytes": 100})
    monkeypatch.setattr(compiler, "get_profile", lambda name: tight)
    with pytest.raises(CompileError, match="flash budget exceeded"):
        build(builds[1], "rv64gcv", "net", tmp_path / "o")


def test_json_html_and_diff(builds, tmp_path):
    d, _, _ = builds
    small = built(builds, "x86-64-v3")
    wide = tmp_path / "wide"
    build(mlp(tmp_path / "w.onnx", width=96), "x86-64-v3", "net", wide)
    proc = subprocess.run([sys.executable, "-m", "toolchain", "size", "--target", "x86-64-v3", "--name", "net",
                           "--out", str(wide), "--json", str(tmp_path / "s.json"), "--html", str(tmp_path / "s.html")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    js = json.loads((tmp_path / "s.json").read_text())
    for key in ("sections", "flash_bytes", "ram_bytes", "arena_bytes", "stack_bytes", "undefined", "symbols"):
        assert key in js
    assert js["undefined"] == [] and {"name", "size", "section"} <= set(js["symbols"][0])
    page = (tmp_path / "s.html").read_text()
    assert "<table>" in page and js["symbols"][0]["name"] in page
    text = diff(size_report(small, "net"), size_report(wide, "net"))
    weights_growth = (96 - 32) * (16 + 1) * 4  # 64 more rows of w and of b
    weight_line = next(line for line in text.splitlines() if line.endswith("[weight]"))
    assert weight_line.split()[0] == f"{weights_growth:+,d}"
    assert "[flash]" in text
    assert html_chart(size_report(small, "net")).startswith("<!doctype html>")


def test_weights_live_in_their_own_read_only_section(tmp_path):
    """`.rodata.<name>.weights` on both paths, so a linker script can place them."""
    from toolchain.compiler import compile_onnx

    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"])], {"x": (np.float32, [1, 64])},
                       {"y": (np.float32, [1, 300])}, {"w": np.random.default_rng(0).standard_normal((64, 300))
                                                       .astype(np.float32)})
    for emit in ("object", "c"):
        c = compile_onnx(model, "cortex-a76", name="net", emit=emit)
        assert c.info.sections.get(".rodata.net.weights", 0) >= 64 * 300 * 4, (emit, c.info.sections)
        assert not c.info.writable


@pytest.mark.parametrize("where", ["x86-64-v3", "cortex-a76", "rv64gcv"])
def test_external_weights_match_the_default_build_bit_for_bit(where, tmp_path):
    """--weights external: the object holds no weight bytes, <name>_weights.bin does, and
    <name>_run_ext given its address computes exactly what the default build computes."""
    from toolchain.compiler import build
    from toolchain.harness.runner import link_harness, run_model
    from toolchain.targets import get_profile

    model = ROOT / "models" / "kws_dscnn.onnx"
    profile = get_profile(where)
    x = np.random.default_rng(3).standard_normal((1, 1, 49, 10)).astype(np.float32)
    outs = {}
    for weights in ("internal", "external"):
        out = tmp_path / weights
        res = build(model, where, "model", out, weights=weights)
        exe = link_harness(out, "model", profile)
        env = {"EDGEC_WEIGHTS": str(out / "model_weights.bin")} if weights == "external" else None
        specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
        outs[weights] = run_model(exe, profile, [x], specs, env=env).outputs[0]
    assert outs["internal"].tobytes() == outs["external"].tobytes()
    blob = (tmp_path / "external" / "model_weights.bin").read_bytes()
    obj = (tmp_path / "external" / "model.o").read_bytes()
    for const in res.compiled.graph.constants():  # no weight of the compiled graph is in the object
        head = const.data.tobytes()[:64]
        if len(head) == 64:
            assert head not in obj, const.name
    assert not any(s.startswith(".rodata.model.weights") for s in read_object(obj).sections)
    # the blob holds what the kernels read, as the default build's weight section does: a
    # weight packed at compile time is there once, in its packed form only
    inside = read_object((tmp_path / "internal" / "model.o").read_bytes()).sections[".rodata.model.weights"]
    assert inside <= len(blob) <= inside + 64 * len(res.compiled.graph.constants()), (inside, len(blob))
    header = (tmp_path / "external" / "model.h").read_text()
    assert f"#define MODEL_WEIGHTS_SIZE  {len(blob)}u" in header
    assert f"UINT64_C(0x{_fnv1a64(blob):016x})" in header
    assert "int model_run_ext(const void *weights," in header and "int model_run(" not in header
    assert "int model_check_weights(const void *weights);" in header and "#define MODEL_ERR_WEIGHTS  2" in header


def _fnv1a64(data: bytes) -> int:
    """FNV-1a 64 as its authors define it (offset basis and prime from the FNV reference)."""
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) % 2**64
    return h


def test_fnv1a64_known_answer():
    # the FNV reference's test vectors: "" and "a"
    assert _fnv1a64(b"") == 0xCBF29CE484222325 and _fnv1a64(b"a") == 0xAF63DC4C8601EC8C


def test_external_weights_are_checked(tmp_path):
    """<name>_check_weights accepts the build's own blob and refuses one changed byte;
    <name>_run_ext refuses a NULL or misaligned address with ERR_WEIGHTS, writing nothing."""
    import ctypes

    from toolchain.compiler import build
    from toolchain.harness.runner import HarnessError, link_harness, run_model
    from toolchain.targets import get_profile

    profile = get_profile("x86-64-v3")
    res = build(ROOT / "tests" / "models" / "fc_autoencoder.onnx", "x86-64-v3", "model", tmp_path,
                weights="external")
    blob = (tmp_path / "model_weights.bin").read_bytes()
    so = tmp_path / "model.so"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-shared", "-o", str(so), str(tmp_path / "model.o")],
                   check=True)
    lib = ctypes.CDLL(str(so))
    buf = ctypes.create_string_buffer(len(blob) + 128)
    base = -ctypes.addressof(buf) % 64
    ctypes.memmove(ctypes.addressof(buf) + base, blob, len(blob))
    assert lib.model_check_weights(ctypes.c_void_p(ctypes.addressof(buf) + base)) == 0
    buf[base + len(blob) // 2] = bytes([blob[len(blob) // 2] ^ 1])
    assert lib.model_check_weights(ctypes.c_void_p(ctypes.addressof(buf) + base)) == 2
    assert lib.model_check_weights(None) == 2
    (inp,), (out,) = res.manifest["inputs"], res.manifest["outputs"]
    x = (ctypes.c_float * int(np.prod(inp["shape"])))()
    y = (ctypes.c_float * int(np.prod(out["shape"])))(*([7.0] * int(np.prod(out["shape"]))))
    arena = ctypes.create_string_buffer(res.manifest["arena"]["size"] + 128)
    ins, outs = (ctypes.c_void_p * 1)(ctypes.addressof(x)), (ctypes.c_void_p * 1)(ctypes.addressof(y))
    aligned_arena = ctypes.c_void_p(ctypes.addressof(arena) + (-ctypes.addressof(arena) % 64))
    for bad in (None, ctypes.c_void_p(ctypes.addressof(buf) + base + 4)):
        assert lib.model_run_ext(bad, ins, outs, aligned_arena) == 2
        assert list(y) == [7.0] * len(y)  # nothing written
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0x80]))
    exe = link_harness(tmp_path, "model", profile)
    spec = [(out["dtype"], tuple(out["shape"]))]
    with pytest.raises(HarnessError, match="model_check_weights returned 2"):
        run_model(exe, profile, [np.zeros(inp["shape"], np.float32)], spec, env={"EDGEC_WEIGHTS": str(corrupt)})


@pytest.mark.parametrize("emit", ["object", "c"])
def test_the_library_exports_its_build_id_equal_to_the_header(emit, tmp_path):
    """<name>_build_id: firmware compares it with <NAME>_BUILD_ID at start-up."""
    import io
    import re

    from elftools.elf.elffile import ELFFile

    from toolchain.backends.c import compile_c

    out = tmp_path / emit
    res = build(ROOT / "models" / "kws_dscnn.onnx", "cortex-a76", "net", out, emit=emit)
    obj = (out / "net.o").read_bytes() if emit == "object" else compile_c((out / "net.c").read_text(),
                                                                          get_profile("cortex-a76"))
    elf = ELFFile(io.BytesIO(obj))
    (sym,) = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == "net_build_id"]
    assert sym["st_info"]["bind"] == "STB_GLOBAL"
    section = elf.get_section(sym["st_shndx"])
    value = section.data()[sym["st_value"]:sym["st_value"] + sym["st_size"]]
    header = (out / "net.h").read_text()
    macro = re.search(r'#define NET_BUILD_ID\s+"([0-9a-f]{32})"', header).group(1)
    assert value == macro.encode() + b"\0" == res.manifest["build_id"].encode() + b"\0"
    assert "extern const char net_build_id[];" in header
    assert not section.header["sh_flags"] & 0x1  # SHF_WRITE: read-only
