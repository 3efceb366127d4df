"""Cortex-M profiles (targets/cortex-m*.toml): 32-bit Thumb objects with the hard-float ARM
EABI, no double-precision instruction on single-precision FPUs, and the part's flash/RAM
budgets refusing what does not fit with the figures named."""
from __future__ import annotations

import dataclasses
import json

import pytest

from helpers import ROOT
from toolchain.backends.llvm_object import compile_ir
from toolchain.compiler import DEFAULT_MODEL, build
from toolchain.errors import BudgetError, InternalError
from toolchain.inspect.arm import TAG_ABI_HARDFP_USE, TAG_ABI_VFP_ARGS
from toolchain.inspect.elf import check_self_contained, read_object
from toolchain.targets import get_profile, runnable_targets

CORTEX_M = ["cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"]
SINGLE_PRECISION = {"cortex-m4", "cortex-m33"}
MODELS = [DEFAULT_MODEL] + sorted((ROOT / "tests" / "models").glob("*.onnx"))


def test_profiles_run_on_qemu_boards():
    assert sorted(CORTEX_M) == sorted(runnable_targets("system"))
    for name in CORTEX_M:
        p = get_profile(name)
        assert (p.elf_machine, p.elf_class, p.index_bits, p.run_mode) == ("EM_ARM", 32, 32, "system")
        assert p.board.startswith("mps") and p.qemu == "qemu-system-arm"
        assert p.budgets["flash_bytes"] > 0 and p.budgets["ram_bytes"] > 0
        assert p.fp64 == (name not in SINGLE_PRECISION)
    assert get_profile("cortex-m55").vector_unit.lanes == 4 and get_profile("cortex-m55").vector_unit.registers == 8
    assert get_profile("cortex-m4").vector_unit.lanes == 1


def test_a_system_profile_without_a_board_is_refused(tmp_path):
    from toolchain.errors import InvalidModelError
    from toolchain.targets import TARGETS_DIR, load_profile

    text = (TARGETS_DIR / "cortex-m4.toml").read_text().replace('board = "mps2-an386"', "")
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(InvalidModelError, match=r'm.toml: run.mode = "system" needs run.board'):
        load_profile(tmp_path / "m.toml")


@pytest.fixture(scope="module")
def kws_builds(tmp_path_factory):
    return {t: build(DEFAULT_MODEL, t, "model", tmp_path_factory.mktemp(t)) for t in CORTEX_M}


@pytest.mark.parametrize("name", CORTEX_M)
def test_bundled_model_is_a_hard_float_thumb_object(kws_builds, name):
    res = kws_builds[name]
    info = read_object(res.paths["object"].read_bytes())
    assert (info.machine, info.elfclass) == ("EM_ARM", 32)
    assert info.flags & 0xFF000000 == 0x05000000 and info.flags & 0x400  # EABI 5, hard-float
    assert info.arm_attributes[TAG_ABI_VFP_ARGS] == 1  # arguments in VFP registers
    assert info.undefined == []
    if name in SINGLE_PRECISION:
        assert info.arm_attributes.get(TAG_ABI_HARDFP_USE) == 1  # "single precision only"
        assert info.f64_instructions == []
    assert "phi i32" in res.compiled.llvm_ir and "phi i64" not in res.compiled.llvm_ir
    assert json.loads(res.paths["manifest"].read_text())["target"]["triple"].startswith("thumbv")


def _f64_object(profile):
    ir = """define double @f_g(double %a, double %b, float %c) {
  %x = fmul double %a, %b
  %y = fadd double %x, %a
  %e = fpext float %c to double
  %z = fdiv double %y, %e
  ret double %z
}"""
    return compile_ir(ir, profile)[0]


def test_double_precision_instructions_are_found_and_refused():
    """An object with f64 arithmetic (compiled for the double-precision M7) holds vcvt.f64.f32,
    vmla.f64 (LLVM fuses the multiply and add) and vdiv.f64, as llvm-objdump shows; on a
    single-precision profile the check refuses it."""
    m7 = get_profile("cortex-m7")
    info = read_object(_f64_object(m7))
    assert [enc for _, _, enc in info.f64_instructions] == ["ee00 0b01", "eeb7 1ac2", "ee80 0b01"]
    check_self_contained(info, m7, "f")  # M7 has double precision: fine
    single = dataclasses.replace(m7, fp64=False)
    with pytest.raises(InternalError, match=r"3 double-precision floating-point instruction\(s\).*\.text\+0x"):
        check_self_contained(info, single, "f")


def test_float_code_has_no_double_precision_instructions():
    ir = "define float @f(float %a, float %b) {\n  %x = fmul float %a, %b\n  ret float %x\n}"
    assert read_object(compile_ir(ir, get_profile("cortex-m4"))[0]).f64_instructions == []


def test_hard_float_flag_must_agree_with_the_build_attributes():
    m4 = get_profile("cortex-m4")
    info = read_object(compile_ir("define void @f_g() {\n  ret void\n}", m4)[0])
    info.arm_attributes[TAG_ABI_VFP_ARGS] = 0
    with pytest.raises(InternalError, match="Tag_ABI_VFP_args=0"):
        check_self_contained(info, m4, "f")


def test_over_budget_is_refused_with_the_figures(tmp_path):
    """ResNet-8's 192 KiB arena and stack exceed the STM32F407's 192 KiB of RAM."""
    with pytest.raises(BudgetError, match=r"RAM budget exceeded: 197,\d{3} bytes > RAM budget 196,608 bytes "
                                          r"\(target cortex-m4's default; --ram-budget overrides\) \(by \d+\); "
                                          r"largest contributors: arena 196,608 B"):
        build(ROOT / "tests" / "models" / "resnet8_cifar10.onnx", "cortex-m4", "model", tmp_path)
    assert not (tmp_path / "model.o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("profile", CORTEX_M)
@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.stem)
def test_every_model_builds_or_is_refused_by_the_budget(model, profile, tmp_path):
    try:
        res = build(model, profile, "model", tmp_path)
    except BudgetError as e:
        assert "budget exceeded" in str(e) and " bytes > " in str(e)
        return
    info = read_object(res.paths["object"].read_bytes())
    check_self_contained(info, get_profile(profile), "model")


MATH_OPS = ["Sigmoid", "Tanh", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Elu",
            "Selu", "Softsign", "Softplus", "Mish", "HardSigmoid", "Pow"]


def test_math_functions_are_single_precision_and_right_on_the_m4(workdir):
    """Every inline math function (toolchain/kernel/mathfns.py: exp, log, tanh, erf, pow, ...)
    compiles to single-precision code for the M4 (the build's check decodes the object) and
    matches onnxruntime on the MPS2 board."""
    import numpy as np
    from onnx import helper

    from helpers import check_against_onnxruntime, make_model

    nodes = [helper.make_node(op, ["x", "p"] if op == "Pow" else ["x"], [f"y_{op}"]) for op in MATH_OPS]
    outputs = {f"y_{op}": (np.float32, (4, 16)) for op in MATH_OPS}
    model = make_model(nodes, {"x": (np.float32, (4, 16))}, outputs,
                       {"p": np.full((4, 16), 1.7, np.float32)}, opset=20)
    x = np.random.default_rng(0).uniform(0.05, 3.0, (4, 16)).astype(np.float32)
    res, _ = check_against_onnxruntime(model, {"x": x}, "cortex-m4", workdir)
    assert read_object(res.paths["object"].read_bytes()).f64_instructions == []


def _f64_model(nodes, out="y"):
    from onnx import TensorProto, helper

    f64 = TensorProto.DOUBLE
    inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f64, [4])],
                          [helper.make_tensor_value_info(out, f64, [2, 2] if out == "r" else [4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_float64_on_a_single_precision_core_is_refused_naming_every_node():
    """Cortex-M4's FPU has no double precision and the library links no soft-float: refused
    before any code, every float64 node named; the same model builds for cortex-m7."""
    from onnx import helper

    from toolchain.compiler import compile_onnx
    from toolchain.errors import UnsupportedError

    m = _f64_model([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Add", ["e", "x"], ["y"])])
    with pytest.raises(UnsupportedError, match=r"cortex-m4 has no double-precision.*2 node\(s\).*'Exp_0' \(Exp\), "
                                               r"'Add_1' \(Add\)"):
        compile_onnx(m, "cortex-m4")
    compile_onnx(m, "cortex-m7")  # FPv5-D16: double precision


def test_float64_only_moved_builds_on_a_single_precision_core():
    from onnx import helper

    from toolchain.compiler import compile_onnx

    compile_onnx(_f64_model([helper.make_node("Reshape", ["x", "shape"], ["r"])], out="r"), "cortex-m4")
