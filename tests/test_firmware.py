"""Bare-metal proof: the example firmware (firmware/) runs the bundled model with no OS, no
libc and no heap on QEMU's full-system aarch64 `virt` board with a Cortex-A76, linked once
against lib<name>.a from the object path and once built from the C path, and compares with
onnxruntime's outputs; a falsified expectation must fail with a non-zero exit status."""
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT
from toolchain import firmware
from toolchain.errors import CompileError
from toolchain.inspect.elf import read_object
from toolchain.targets import get_profile

TARGET = "cortex-a76"


@pytest.fixture(scope="module")
def qemu_system():
    board = firmware.board_for(get_profile(TARGET))
    assert shutil.which(board["qemu"]), f"install {board['apt_package']}: apt-get install -y {board['apt_package']}"


@pytest.mark.parametrize("path", ["object", "c"])
def test_firmware_boots_and_passes(path, qemu_system, tmp_path):
    (v,) = firmware.run(None, TARGET, tmp_path, paths=(path,))
    assert v.returncode == 0, v.output
    line = next(ln for ln in v.output.splitlines() if ln.startswith(("PASS", "FAIL")))
    assert line.startswith("PASS max_abs_err=") and " mismatches=0/" in line, line
    assert float(line.split("max_abs_err=")[1].split()[0]) <= 1e-3


def test_image_has_no_libc_no_heap_nothing_undefined(qemu_system, tmp_path):
    image = firmware.build_image(firmware.DEFAULT_MODEL, get_profile(TARGET), "c", tmp_path)
    info = read_object(image.read_bytes())
    names = {s.name for s in info.symbols}
    assert info.undefined == []
    assert not names & {"malloc", "free", "calloc", "sbrk", "_sbrk", "printf", "memcpy", "memset"}
    assert "model_run" in names and "_start" in names


@pytest.mark.parametrize("path", ["object", "c"])
def test_mismatch_fails_with_nonzero_exit(path, qemu_system, tmp_path):
    (v,) = firmware.run(None, TARGET, tmp_path, paths=(path,), corrupt=True)
    assert v.returncode == 1, v.output
    assert any(ln.startswith("FAIL max_abs_err=") for ln in v.output.splitlines()), v.output


@pytest.mark.slow  # the same boots as test_firmware_boots_and_passes, through the command line
def test_command_line_reports_both_paths(qemu_system, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolchain.firmware", "--target", TARGET, "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["object", "c"]
    assert all("PASS max_abs_err=" in ln for ln in lines)
    bad = subprocess.run([sys.executable, "-m", "toolchain.firmware", "--target", TARGET, "--out", str(tmp_path),
                          "--path", "c", "--corrupt-expected"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_target_without_a_board_is_refused():
    with pytest.raises(CompileError, match="no bare-metal board for target rv64gc"):
        firmware.board_for(get_profile("rv64gc"))


def test_integer_and_boolean_outputs(qemu_system, tmp_path):
    """Outputs of every element kind the checker knows (int32, uint8, bool, float) compare exactly."""
    from test_c_backend import int_model

    model, _ = int_model()
    path = tmp_path / "int.onnx"
    path.write_bytes(model.SerializeToString())
    for v in firmware.run(path, TARGET, tmp_path):
        assert v.returncode == 0 and "PASS max_abs_err=0.000000e+00" in v.output, (v.path, v.output)


@pytest.mark.slow
@pytest.mark.parametrize("model_path", sorted((ROOT / "tests" / "models").glob("*.onnx")), ids=lambda p: p.stem)
def test_real_models_boot_on_both_paths(model_path, qemu_system, tmp_path):
    for v in firmware.run(model_path, TARGET, tmp_path):
        assert v.passed, (v.path, v.output)


@pytest.mark.parametrize("path", ["object", pytest.param("c", marks=pytest.mark.slow)])
def test_cortex_m55_firmware_boots_on_the_mps3_board(path, tmp_path):
    """The same firmware on a Cortex-M55 (MPS3 AN547, Helium): semihosting output and exit."""
    (v,) = firmware.run(None, "cortex-m55", tmp_path, paths=(path,))
    assert v.returncode == 0 and "PASS max_abs_err=" in v.output, v.output
    (bad,) = firmware.run(None, "cortex-m55", tmp_path / "bad", paths=(path,), corrupt=True)
    assert bad.returncode == 1 and "FAIL max_abs_err=" in bad.output, bad.output


def _reserved_stack(image) -> int:
    from elftools.elf.elffile import ELFFile

    with open(image, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        at = {n: symtab.get_symbol_by_name(n)[0]["st_value"] for n in ("__stack_bottom", "__stack_top")}
    return at["__stack_top"] - at["__stack_bottom"]


@pytest.mark.parametrize("board_target", [pytest.param("cortex-a76", marks=pytest.mark.slow), "cortex-m4"])
def test_firmware_reserving_exactly_model_stack_size_runs_the_model(board_target, tmp_path):
    """The image reserves MODEL_STACK_SIZE plus the firmware's own frames and no more; the
    model runs in it, and the stack it really used (painted and scanned by main.c) is within
    the header's bound."""
    (v,) = firmware.run(None, board_target, tmp_path, paths=("object",))
    header = (tmp_path / "object" / "model.h").read_text()
    bound = int(header.split("#define MODEL_STACK_SIZE")[1].split()[0].rstrip("u"))
    assert _reserved_stack(v.image) == (bound + firmware.FIRMWARE_FRAMES + 15) // 16 * 16
    assert v.passed, v.output
    used, printed_bound = map(int, v.output.split(" stack=")[1].split()[0].split("/"))
    assert printed_bound == bound and 0 < used <= bound


def test_firmware_with_too_little_stack_does_not_pass(tmp_path):
    """The check can fail: with a quarter of the model's bound the run overflows its stack
    and the firmware does not report PASS (a fault, or main.c's touched-bottom check)."""
    profile = get_profile("cortex-m4")
    res = firmware.build_image(firmware.DEFAULT_MODEL, profile, "object", tmp_path)
    bound = int((tmp_path / "object" / "model.h").read_text().split("#define MODEL_STACK_SIZE")[1].split()[0]
                .rstrip("u"))
    image = firmware.build_image(firmware.DEFAULT_MODEL, profile, "object", tmp_path / "small",
                                 stack_bytes=bound // 4)
    assert _reserved_stack(image) < bound and res != image
    rc, output = firmware.boot(image, profile)
    assert rc != 0 and "PASS" not in output, output


def test_cortex_m_arena_has_a_section_of_its_own_in_the_arena_region(tmp_path):
    """main.c's arena is in .bss.model_arena, which the Cortex-M linker scripts gather into
    an output section `.arena` in the ARENA region (aliased to RAM; a firmware points it
    at another bank): the symbol lies inside it and it is as large as MODEL_ARENA_SIZE."""
    from elftools.elf.elffile import ELFFile

    image = firmware.build_image(firmware.DEFAULT_MODEL, get_profile("cortex-m4"), "object", tmp_path)
    size = int((tmp_path / "object" / "model.h").read_text().split("#define MODEL_ARENA_SIZE")[1].split()[0]
               .rstrip("u"))
    with open(image, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".arena")
        (arena,) = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == "arena"]
        start, end = sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]
        assert sec["sh_type"] == "SHT_NOBITS" and sec["sh_size"] >= size
        assert start <= arena["st_value"] and arena["st_value"] + arena["st_size"] <= end
        assert arena["st_value"] % 64 == 0
        ram = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= start < s["p_vaddr"] + s["p_memsz"]]
        assert ram and ram[0]["p_vaddr"] >= 0x20000000  # the board's RAM, not its code memory
