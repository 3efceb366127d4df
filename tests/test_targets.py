"""Targets are data: a profile file is all a new target needs, a 32-bit one included,
and the test and CI matrix are read from targets/."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import ALL_TARGETS, ROOT, assert_close, onnxruntime_outputs
from toolchain.compiler import DEFAULT_MODEL, build
from toolchain.errors import InvalidModelError
from toolchain.inspect.elf import read_object
from toolchain.targets import Profile, get_profile, load_profile, runnable_targets

RV32 = Path(__file__).resolve().parent / "profiles" / "rv32gc.toml"


@pytest.fixture(scope="module")
def rv32_build(tmp_path_factory):
    return build(DEFAULT_MODEL, str(RV32), "model", tmp_path_factory.mktemp("rv32"))


def test_a_32_bit_profile_file_builds_the_bundled_model(rv32_build):
    info = read_object(rv32_build.paths["object"].read_bytes())
    assert (info.machine, info.elfclass) == ("EM_RISCV", 32)
    assert info.flags & 0x6 == 0x4  # double-float ABI, as the profile asks
    manifest = json.loads(rv32_build.paths["manifest"].read_text())
    assert manifest["target"]["triple"] == "riscv32-unknown-linux-gnu"
    assert manifest["arena"]["size"] > 0 and manifest["stack_bytes"]["model_run"] > 0


def test_32_bit_code_indexes_with_32_bit_integers(rv32_build):
    """index_bits = 32: no 64-bit index arithmetic (on RV32 each i64 add is a pair)."""
    ir = rv32_build.compiled.llvm_ir
    assert "phi i32" in ir and "phi i64" not in ir


@pytest.mark.slow
def test_the_32_bit_build_runs_under_qemu_and_matches_onnxruntime(rv32_build):
    from toolchain.harness.runner import link_harness, run_model

    profile = get_profile(str(RV32))
    exe = link_harness(rv32_build.paths["header"].parent, "model", profile)
    m = rv32_build.manifest
    x = np.random.default_rng(0).standard_normal(m["inputs"][0]["shape"]).astype(np.float32)
    run = run_model(exe, profile, [x], [(o["dtype"], tuple(o["shape"])) for o in m["outputs"]])
    want = onnxruntime_outputs(onnx.load(str(DEFAULT_MODEL)), {m["inputs"][0]["name"]: x})
    assert_close(run.outputs[0], want[0], what="rv32gc")


def test_the_test_matrix_is_read_from_targets():
    """Profiles run under qemu-user (the user-mode matrix) or on a QEMU board (system mode)."""
    on_disk = {tomllib.loads(p.read_text())["name"]: tomllib.loads(p.read_text()).get("run", {}).get("mode", "user")
               for p in (ROOT / "targets").glob("*.toml")}
    assert sorted(ALL_TARGETS) == sorted(runnable_targets("user")) == sorted(n for n, m in on_disk.items()
                                                                           if m == "user")
    assert sorted(runnable_targets("system")) == sorted(n for n, m in on_disk.items() if m == "system")
    assert sorted(runnable_targets("user") + runnable_targets("system")) == sorted(on_disk)


def test_ci_matrix_reads_the_profiles():
    from toolchain.bench import matrix

    targets, models = matrix()
    assert targets == runnable_targets("user") + runnable_targets("system") and all(m.is_file() for m in models)


def test_a_profile_missing_a_field_names_it(tmp_path):
    text = RV32.read_text().replace('triple = "riscv32-unknown-linux-gnu"\n', "")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(InvalidModelError, match=r"bad.toml lacks triple"):
        load_profile(tmp_path / "bad.toml")


def test_every_profile_field_is_read_from_the_file(tmp_path):
    """The loader is derived from the fields: a value in the file reaches the profile."""
    text = RV32.read_text().replace('mode = "user"', 'mode = "none"').replace("index_bits = 32", "index_bits = 16")
    (tmp_path / "p.toml").write_text(text + '\n[budgets]\nflash_bytes = 123\n')
    p = load_profile(tmp_path / "p.toml")
    assert (p.run_mode, p.index_bits, p.elf_class, p.budgets) == ("none", 16, 32, {"flash_bytes": 123})
    assert p.elf_flag_checks[1].mask == 0x1 and isinstance(p, Profile)


@pytest.mark.parametrize("line, message", [
    ('int8_dot = "sdot"', r"int8_dot must be one of \('partial-reduce', 'pairs16', 'widen16', 'reduce', 'dsp'\)"),
    ("int8_tile = [4, 0]", r"int8_tile must be \[pixels, channels\], two positive integers"),
    ("int8_tile = [4]", r"int8_tile must be \[pixels, channels\]"),
    ('int8_dot_by_lane = "udot"', r"int8_dot_by_lane must be one of \('sdot', 'pmaddwd'\)"),
])
def test_a_bad_int8_strategy_in_a_profile_is_refused_naming_the_field(tmp_path, line, message):
    text = RV32.read_text().replace("vector_bits =", f"{line}\nvector_bits =", 1)
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(InvalidModelError, match=message):
        load_profile(tmp_path / "p.toml")


def test_the_int8_strategy_is_read_into_the_vector_unit():
    """Each profile's int8 dot-product form reaches the lowering (Kernel.int8_dot reads it)."""
    units = {n: get_profile(n).vector_unit for n in ("cortex-a76", "x86-64-v3", "rv64gcv", "cortex-m55", "cortex-m4")}
    assert {n: (u.int8_dot, u.int8_tile, u.int8_dot_by_lane, u.int8_mac_by_scalar) for n, u in units.items()} == {
        "cortex-a76": ("partial-reduce", (4, 4), "sdot", False), "x86-64-v3": ("pairs16", (4, 2), "pmaddwd", False),
        "rv64gcv": ("widen16", (1, 4), "", True), "cortex-m55": ("reduce", (4, 2), "", False),
        "cortex-m4": ("dsp", (1, 4), "", False)}
