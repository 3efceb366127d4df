"""System mode: the Cortex-M profiles (run.mode = "system") run on QEMU's MPS2/MPS3 boards.
Each real model is built for each board's profile; one over the part's flash/RAM budget
must be refused with the figures named, one that fits is linked into the bare-metal
harness (runtime/system_harness.c, inputs embedded at link time), booted, and its
outputs compared with onnxruntime's. The default suite runs the pairs listed in DEFAULT
(every system target on KWS; every model that fits on cortex-m4 and cortex-m55, the
benchmark pair); --slow runs them all."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from helpers import ROOT, check_against_onnxruntime, make_model
from test_models import feeds_for
from toolchain.errors import BudgetError
from toolchain.harness.runner import HarnessError
from toolchain.harness.system import link_system_harness, run_system
from toolchain.compiler import DEFAULT_MODEL, build
from toolchain.targets import get_profile, runnable_targets

MODELS = [DEFAULT_MODEL] + sorted((ROOT / "tests" / "models").glob("*.onnx"))
SMALL = {"kws_dscnn"}  # on every board; the recurrent ones on cortex-m4 and cortex-m55 (DEFAULT)
DEFAULT = {("cortex-m4", m) for m in ("kws_dscnn", "gru", "lstm", "lstm_bidir", "transformer_encoder")} | {
    ("cortex-m55", m.stem) for m in MODELS}


def _cases():
    for target in runnable_targets("system"):
        for model in MODELS:
            marks = [] if model.stem in SMALL or (target, model.stem) in DEFAULT else [pytest.mark.slow]
            yield pytest.param(target, model, id=f"{target}-{model.stem}", marks=marks)


@pytest.mark.parametrize("system_target,model_path", list(_cases()))
def test_model_on_the_board_matches_onnxruntime(system_target, model_path, workdir):
    model = onnx.load(str(model_path))
    start = time.perf_counter()
    try:
        res, _ = check_against_onnxruntime(model_path, feeds_for(model), system_target, workdir)
    except BudgetError as e:  # the part cannot hold it: refused with the figures
        assert "budget exceeded" in str(e) and " bytes > " in str(e) and "largest contributors" in str(e)
        print(f"{model_path.stem} on {system_target}: refused: {e}")
        return
    man = res.manifest
    print(f"{model_path.stem} on {system_target}: build+link+boot {time.perf_counter() - start:.1f} s, "
          f"arena {man['arena']['size']} B, code {man['code_bytes']} B, weights {man['weight_bytes']} B")



def _edges_model():
    """Every explicit-vector kernel with an edge of 2 or 3 columns on a 4-lane unit: a Gemm
    of 7 outputs (+ Relu), a convolution and a depthwise one over rows of 11 columns with a
    residual Add, a 30-element Sigmoid (map_vectors)."""
    from onnx import helper as h
    rng = np.random.default_rng(7)
    inits = {"W": rng.standard_normal((12, 7)), "B": rng.standard_normal(7), "Wc": rng.standard_normal((7, 3, 3, 3)),
             "Wd": rng.standard_normal((7, 1, 3, 3))}
    nodes = [h.make_node("Gemm", ["x", "W", "B"], ["g"]), h.make_node("Relu", ["g"], ["y1"]),
             h.make_node("Conv", ["img", "Wc"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["c", "Wd"], ["d"], pads=[1, 1, 1, 1], group=7),
             h.make_node("Add", ["d", "c"], ["y2"]), h.make_node("Sigmoid", ["t"], ["y3"])]
    return make_model(nodes, {"x": ("float32", [5, 12]), "img": ("float32", [1, 3, 9, 11]), "t": ("float32", [2, 3, 5])},
                      {"y1": ("float32", [5, 7]), "y2": ("float32", [1, 7, 9, 11]), "y3": ("float32", [2, 3, 5])},
                      {k: v.astype(np.float32) for k, v in inits.items()})


def test_partial_vectors_are_predicated_on_mve(workdir):
    """cortex-m55 (masked_tails): an edge of 2 or 3 columns is one predicated vector step
    (vpst + vldrwt/vstrwt), and the results on the board match onnxruntime; cortex-m4 has
    no vectors to mask."""
    import llvmlite.binding as llvm
    from toolchain.backends.llvm_object import target_machine

    model = _edges_model()
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    res, _ = check_against_onnxruntime(model, feeds, "cortex-m55", workdir)
    m55 = get_profile("cortex-m55")
    assert m55.vector_unit.masked_tails and not get_profile("cortex-a76").vector_unit.masked_tails
    asm = target_machine(m55).emit_assembly(llvm.parse_assembly(res.compiled.llvm_ir))
    assert "llvm.masked.store" in res.compiled.llvm_ir and "llvm.masked.load" in res.compiled.llvm_ir
    assert asm.count("vstrwt.32") >= 3 and asm.count("vldrwt.u32") >= 2 and "vpst" in asm

def test_output_of_the_wrong_size_is_reported(tmp_path):
    """The host checks every output's byte count against what the guest printed."""
    profile = get_profile("cortex-m4")
    res = build(DEFAULT_MODEL, "cortex-m4", "model", tmp_path)
    x = np.zeros(res.manifest["inputs"][0]["shape"], np.float32)
    image = link_system_harness(tmp_path, "model", profile, [x], [res.manifest["outputs"][0]["bytes"]])
    with pytest.raises(HarnessError, match="expected 4800 bytes from the guest, got 48"):
        run_system(image, profile, [("float32", (1200,))])


def test_instruction_counts_on_the_board_are_exactly_repeatable(tmp_path):
    """The QEMU plugin counts a board's instructions (system mode): N runs minus 1 run is a
    whole number of inferences, and the same image counted twice gives the same figure."""
    from toolchain.harness.plugin import count_instructions

    profile = get_profile("cortex-m4")
    res = build(ROOT / "tests" / "models" / "gru.onnx", "cortex-m4", "model", tmp_path)
    man = res.manifest
    x = np.random.default_rng(0).standard_normal(man["inputs"][0]["shape"]).astype(np.float32)
    image = link_system_harness(tmp_path, "model", profile, [x], [o["bytes"] for o in man["outputs"]])
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    first = count_instructions(image, profile, [x], specs, runs=3)
    again = count_instructions(image, profile, [x], specs, runs=3)
    assert first.per_inference == again.per_inference > man["macs"]  # scalar FPU: more than 1 insn per MAC
    assert first.total_n - first.total_1 == 2 * first.per_inference


README_MAIN = r"""
#include "model.h"
#include "platform.h"
static float in[MODEL_INPUT0_ELEMS], out[MODEL_OUTPUT0_ELEMS];
static _Alignas(MODEL_ARENA_ALIGN) unsigned char arena[MODEL_ARENA_SIZE];
int main(void) {
    const void *ins[] = {in};
    void *outs[] = {out};
    if (model_run(ins, outs, arena) != 0) return 1;
    fw_puts(out[0] == out[0] ? "model ran\n" : "NaN\n");
    return 0;
}
"""


def _readme_block(marker: str) -> list[str]:
    """The README's shell commands starting with `marker` (continuation lines joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [line.split() for line in text.splitlines() if line.startswith(marker)]


def test_the_readme_recipe_links_a_bare_metal_project(tmp_path):
    """build/cortex-m4/ + firmware/cortex-m/ + a user's main.c, linked with the README's zig
    command line verbatim (run from a project directory holding firmware/ and build/), boots."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(ROOT / "firmware", tmp_path / "firmware")
    build(DEFAULT_MODEL, "cortex-m4", "model", tmp_path / "build" / "cortex-m4")
    (tmp_path / "main.c").write_text(README_MAIN)
    (cc,) = _readme_block("python -m ziglang cc -target thumb")
    (qemu,) = _readme_block("qemu-system-arm -M mps2-an386")
    subprocess.run([sys.executable, *cc[1:]], cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.run(qemu, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "model ran" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_fault_is_reported_not_hung(tmp_path):
    """The startup's fault handler prints the exception, CFSR and PC and exits 3."""
    import subprocess

    from toolchain.harness.system import FIRMWARE, board_cc, board_for, boot

    profile = get_profile("cortex-m4")
    board = board_for(profile)
    bdir = FIRMWARE / board["dir"]
    (tmp_path / "main.c").write_text("int main(void) { return *(volatile int *)0xF0000000u; }\n")
    image = tmp_path / "fault.elf"
    subprocess.run(board_cc(profile, board) + ["-O2", f"-I{bdir}", "-T", str(bdir / board["linker_script"]),
                   *[str(bdir / s) for s in board["sources"]], str(FIRMWARE / "print.c"),
                   str(tmp_path / "main.c"), "-o", str(image)], check=True, capture_output=True)
    proc = boot(image, profile, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FAIL fault exception=3 cfsr=0x" in proc.stdout + proc.stderr  # HardFault (escalated bus fault)
