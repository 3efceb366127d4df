"""Error kinds are part of the interface: each cause raises its own type (with the same
one-line message the CLI prints), so callers and the conformance sweeps classify failures
by type, never by matching text."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model
from toolchain.compiler import build, compile_onnx
from toolchain.errors import (BudgetError, CompileError, InternalError, InvalidModelError,
                              UnsupportedError)
from toolchain.ops import registry

F = np.float32


def relu_model(op="Relu", **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], name="n0", **attrs)], {"x": (F, (1, 4))},
                      {"y": (F, (1, 4))})


def test_kinds_are_compile_errors():
    for kind in (UnsupportedError, InvalidModelError, BudgetError, InternalError):
        assert issubclass(kind, CompileError) and kind is not CompileError


def test_an_unsupported_op_is_unsupported():
    with pytest.raises(UnsupportedError, match=r"node 'n0' \(Unique\): unsupported op 'Unique'"):
        compile_onnx(relu_model("Unique"), "x86-64-v3")


def test_shapes_that_do_not_fit_are_invalid():
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"x": (F, (2, 3))},
                   {"y": (F, (2, 5))}, {"w": np.ones((4, 5), F)})
    with pytest.raises(InvalidModelError, match=r"node 'mm' \(MatMul\): inner dimensions differ"):
        compile_onnx(m, "x86-64-v3")


def test_a_bad_option_is_invalid():
    with pytest.raises(InvalidModelError, match="unknown target 'cortex-m99'"):
        compile_onnx(relu_model(), "cortex-m99")
    with pytest.raises(InvalidModelError, match="--emit must be one of object, c"):
        build(None, "x86-64-v3", emit="wasm")


def test_a_build_over_budget_is_a_budget_error(tmp_path):
    with pytest.raises(BudgetError, match="flash budget exceeded"):
        build(None, "x86-64-v3", out=tmp_path / "out", budgets={"flash_bytes": 1000})
    assert not (tmp_path / "out").exists()


def test_a_broken_promise_is_internal():
    """The self-containment check on an object that calls malloc is the compiler's bug."""
    from toolchain.backends.llvm_object import compile_ir
    from toolchain.inspect.elf import check_self_contained, read_object
    from toolchain.targets import get_profile

    profile = get_profile("x86-64-v3")
    obj, _, _ = compile_ir("declare void @malloc(i64)\ndefine void @model_run() { call void @malloc(i64 4)\n"
                           "  ret void }", profile)
    with pytest.raises(InternalError, match="external symbols"):
        check_self_contained(read_object(obj), profile, "model")


def test_internal_ops_are_not_onnx_ops():
    """The compiler's own output copy is no op a model can name, nor one `edgec ops` lists."""
    assert "edgec.Copy" not in registry and "Copy" not in registry.names()
    for name in ("Copy", "edgec.Copy"):
        with pytest.raises(UnsupportedError, match=f"unsupported op '{name}'"):
            compile_onnx(relu_model(name), "x86-64-v3")


def test_attributing_an_error_to_a_node_keeps_its_kind():
    e = UnsupportedError("needs float32 input").at("conv1", "Conv")
    assert isinstance(e, UnsupportedError) and str(e) == "node 'conv1' (Conv): needs float32 input"
    named = InvalidModelError("x", node="a", op="B")
    assert named.at("c", "D") is named


def test_names_with_control_characters_stay_on_one_line_in_the_python_api():
    """Fuzzer finding (a corrupted op type and input name carrying newlines): the exception's
    own message is one line, not only the CLI's rendering of it."""
    from onnx import helper

    from helpers import make_model
    from toolchain.compiler import compile_onnx
    from toolchain.errors import CompileError

    m = make_model([helper.make_node("Bad\nOp", ["x"], ["y"], name="n\x04ode")],
                   {"x": (np.float32, (1, 3))}, {"y": (np.float32, (1, 3))})
    with pytest.raises(CompileError) as e:
        compile_onnx(m, "x86-64-v3")
    assert "\n" not in str(e.value) and "\x04" not in str(e.value)
    assert "Bad\\nOp" in str(e.value)
