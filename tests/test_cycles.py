"""Cycle estimates (toolchain/harness/cycles.py): the per-mnemonic plugin counts exactly
what the whole-program plugin counts, mnemonics land in the classes of one rule table,
an estimate is the table's sum, and a profile's [cycles] table is validated. The figures
are ESTIMATES from each core's per-class table; nothing here claims they match hardware."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import ROOT
from toolchain.compiler import build
from toolchain.errors import InvalidModelError
from toolchain.harness.cycles import (CLASS_RULES, classify, count_mnemonics, decode_encodings, estimate_cycles,
                                      llvm_mc, mnemonic_counts_once)
from toolchain.harness.plugin import count_instructions, count_once
from toolchain.harness.runner import HarnessError
from toolchain.harness.system import link_system_harness
from toolchain.targets import CYCLE_CLASSES, TARGETS_DIR, get_profile, load_profile


def test_per_mnemonic_counts_add_up_to_the_whole_program_count_on_the_board(tmp_path):
    """GRU on cortex-m4 (a QEMU board): each run's per-mnemonic counts sum to exactly the
    insn_count plugin's total, and so do the per-inference figures (N runs minus 1 run)."""
    profile = get_profile("cortex-m4")
    man = build(ROOT / "tests" / "models" / "gru.onnx", "cortex-m4", "model", tmp_path).manifest
    x = np.random.default_rng(0).standard_normal(man["inputs"][0]["shape"]).astype(np.float32)
    image = link_system_harness(tmp_path, "model", profile, [x], [o["bytes"] for o in man["outputs"]])
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    total, counts = mnemonic_counts_once(image, profile, [x], specs, 1)
    assert sum(counts.values()) == total == count_once(image, profile, [x], specs, 1)
    per = count_mnemonics(image, profile, [x], specs, runs=3)
    assert sum(per.values()) == count_instructions(image, profile, [x], specs, runs=3).per_inference
    assert per["vmul.f32"] > 0 and not any(k.startswith("?") for k in per)  # the M4's FPU, all named
    cycles, per_class = estimate_cycles(per, profile.cycles)
    assert cycles > sum(per.values())  # loads (2) and VDIV (14) cost more than one cycle on the M4
    assert sum(v["insns"] for v in per_class.values()) == sum(per.values())


@pytest.mark.parametrize("mnemonic, cls", [
    # as QEMU's disassembler names them in cortex-m4 images
    ("smlad", "dsp_mac"), ("sxtb16", "dsp_mac"), ("smlabb", "dsp_mac"), ("ldr.w", "load"), ("ldrb", "load"),
    ("vldr", "load"), ("str.w", "store"), ("vstr", "store"), ("push", "store_multiple"), ("strd", "store_multiple"),
    ("pop", "load_multiple"), ("ldrd", "load_multiple"), ("vldmia", "load_multiple"), ("bne", "branch"),
    ("b.n", "branch"), ("bne.w", "branch"), ("blo", "branch"), ("bl", "branch"), ("cbz", "branch"),
    ("bic", "alu"), ("bfi", "alu"), ("add.w", "alu"), ("it", "alu"), ("mul", "mul"), ("smull", "mul"),
    ("sdiv", "divide"), ("vadd.f32", "fp"), ("vmul.f32", "fp"), ("vmov", "fp"), ("vmrs", "fp"),
    ("vfma.f32", "fp_mac"), ("vdiv.f32", "fp_divsqrt"), ("vsqrt.f32", "fp_divsqrt"),
    # and in cortex-m55 images (Q-register forms marked [q]; MVE named by llvm-mc)
    ("vldrw.u32[q]", "mve_vector"), ("vstrw.32[q]", "mve_vector"), ("vfma.f32[q]", "mve_vector"),
    ("vorr[q]", "mve_vector"), ("vpst", "mve_vector"), ("vldrw.u32", "mve_vector"), ("le", "branch"),
    ("dls", "alu"),
])
def test_real_mnemonics_are_classified(mnemonic, cls):
    assert classify(mnemonic) == cls


def test_the_rule_table_covers_exactly_the_profile_classes():
    assert {c for c, _ in CLASS_RULES} == set(CYCLE_CLASSES)
    for name in ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"):
        table = get_profile(name).cycles
        assert set(table) >= set(CYCLE_CLASSES) - {"mve_vector"}, name
    assert "mve_vector" in get_profile("cortex-m55").cycles


def test_encodings_qemu_cannot_name_are_decoded_for_the_profile():
    """capstone 4 shows an MVE vector load as ldc and an fma by a scalar as .byte; the plugin
    keeps their bytes (QEMU may have fetched a halfword past the instruction)."""
    names = decode_encodings(["91ed001e", "01ee400e3dee"], get_profile("cortex-m55"))
    assert names == {"91ed001e": "vldrb.u8[q]", "01ee400e3dee": "vmla.s8[q]"}
    assert {classify(n) for n in names.values()} == {"mve_vector"}


def test_an_estimate_is_the_sum_over_classes_of_count_times_table():
    counts = {"ldr.w": 10, "vldr": 5, "smlad": 100, "bne": 7, "add.w": 3, "vdiv.f32": 2, "vfma.f32": 4}
    table = {"load": 2, "dsp_mac": 1, "branch": 2.5, "alu": 1, "fp_divsqrt": 14, "fp_mac": 3}
    cycles, per = estimate_cycles(counts, table)
    want = 15 * 2 + 100 * 1 + 7 * 2.5 + 3 * 1 + 2 * 14 + 4 * 3
    assert cycles == pytest.approx(want)
    assert per["load"] == {"insns": 15, "cycles": 30.0, "share": pytest.approx(30 / want)}
    assert sum(v["share"] for v in per.values()) == pytest.approx(1.0)
    with pytest.raises(HarnessError, match="no entry for divide"):
        estimate_cycles({"sdiv": 1}, table)


@pytest.mark.parametrize("line, message", [
    ("fpu_magic = 2", r"cycles\.fpu_magic is not an instruction class"),
    ("load = -1", r"cycles\.load must be a positive number"),
    ('load = "2"', r"cycles\.load must be a positive number"),
    ("load = 0", r"cycles\.load must be a positive number"),
])
def test_a_bad_cycles_entry_in_a_profile_is_refused_naming_it(tmp_path, line, message):
    text = (TARGETS_DIR / "cortex-m4.toml").read_text()
    text = text.replace("[cycles]\n", "[cycles]\n" + line + "\n", 1).replace("\nload = 2 ", "\n# load = 2 ", 1)
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(InvalidModelError, match=message):
        load_profile(tmp_path / "p.toml")
