"""Invalid models are refused, never compiled into a different network (issue 22): each
case fails with its error kind, a message naming the node/input/output at fault, and
nothing written to --out. Where onnxruntime or the ONNX checker is an independent judge
of the same model, the test asks it too (it must refuse as well)."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from helpers import ROOT, make_model
from toolchain.compiler import build
from toolchain.errors import BudgetError, InvalidModelError, UnsupportedError
from toolchain.ir import TensorType
from toolchain.targets import all_profiles, get_profile

F = np.float32
W = np.ones((4, 3, 3, 3), F)


def conv(declared=(1, 4, 6, 6), **attrs):
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)],
                      {"x": (F, (1, 3, 8, 8))}, {"y": (F, declared)}, {"w": W})


def unary(x_shape=(1, 3), y_shape=(1, 3), y_dtype=F, op="Relu", **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], name="n0", **attrs)], {"x": (F, x_shape)},
                      {"y": (y_dtype, y_shape)})


def chain(nodes, inputs=None, outputs=None):
    return make_model([helper.make_node(op, ins, outs, name=name) for op, name, ins, outs in nodes],
                      inputs or {"x": (F, (1, 3))}, outputs or {"y": (F, (1, 3))})


def ort_refuses(model) -> bool:
    try:
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        s.run(None, {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], F) for i in s.get_inputs()})
    except Exception:  # noqa: BLE001  (any refusal counts)
        return True
    return False


def checker_refuses(model) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return True
    return False


def refused(tmp_path, model, kind, *needles, target="x86-64-v3", **kw):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    with pytest.raises(kind) as e:
        build(path, target, out=out, **kw)
    msg = str(e.value)
    assert type(e.value) is kind, f"{type(e.value).__name__}: {msg}"
    assert "\n" not in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert not out.exists() or not any(out.iterdir()), "a refused build wrote files"
    return msg


# -- attributes checked against the op's schema ---------------------------------------------
@pytest.mark.parametrize("attrs, needle", [
    ({"stride": [2, 2]}, "stride"),       # not `strides`: silently stride 1 before
    ({"gr8up": 1}, "gr8up"),
    ({"padZ": [1, 1, 1, 1]}, "padZ"),
    ({"group": 1.5}, "group"),            # wrong attribute type
])
def test_schema_violations_are_invalid(tmp_path, attrs, needle):
    m = conv(**attrs)
    assert ort_refuses(m) and checker_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'conv1' (Conv)", needle)


def test_a_flag_attribute_must_be_0_or_1(tmp_path):
    """Fuzzer finding: keepdims=-1 kept the dims here and dropped them in onnxruntime (a mismatch)."""
    m = make_model([helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[1], keepdims=-1)],
                   {"x": (F, (2, 3))}, {"y": (F, None)})
    refused(tmp_path, m, InvalidModelError, "node 'mean' (ReduceMean)", "keepdims", "-1")


def test_an_attribute_of_another_op_is_invalid(tmp_path):
    refused(tmp_path, unary(alpha=0.1), InvalidModelError, "node 'n0' (Relu)", "alpha")


@pytest.mark.parametrize("op", ["Copy", "edgec.Copy"])
def test_internal_ops_are_not_onnx_operators(tmp_path, op):
    m = unary(op=op)
    assert ort_refuses(m)
    refused(tmp_path, m, UnsupportedError, "node 'n0'", f"'{op}'", "not an ONNX operator")


def test_an_op_newer_than_the_opset_is_invalid(tmp_path):
    m = make_model([helper.make_node("Gelu", ["x"], ["y"], name="g")], {"x": (F, (1, 3))}, {"y": (F, (1, 3))},
                   opset=13)
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'g' (Gelu)", "opset 13", "opset 20")


def test_unsupported_ops_domains_and_dtypes_are_listed_at_once(tmp_path):
    m = make_model([helper.make_node("Unique", ["x"], ["a"], name="uq"),
                    helper.make_node("RandomNormalLike", ["a"], ["b"], name="rnd"),
                    helper.make_node("Relu", ["b"], ["y"], name="custom", domain="com.example")],
                   {"x": (F, (2, 3)), "u": (np.complex64, (2,))}, {"y": (F, (2, 3))}, opset=14)
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    msg = refused(tmp_path, m, UnsupportedError, "4 problems", "node 'uq' (Unique)", "node 'rnd' (RandomNormalLike)",
                  "'com.example'", "input 'u'", "complex64", "`edgec ops`")
    assert msg.count("edgec ops") == 1


def test_invalid_and_unsupported_together_are_invalid(tmp_path):
    m = make_model([helper.make_node("Unique", ["x"], ["a"], name="uq"),
                    helper.make_node("Relu", ["a"], ["y"], name="r", alpha=1.0)], {"x": (F, (2, 3))},
                   {"y": (F, (2, 3))})
    refused(tmp_path, m, InvalidModelError, "2 problems", "'uq'", "'r'", "alpha")


# -- single assignment, unique names ----------------------------------------------------------
def test_two_writers_of_one_tensor_name_both_nodes(tmp_path):
    m = chain([("Relu", "first", ["x"], ["y"]), ("Sigmoid", "second", ["x"], ["y"])])
    assert ort_refuses(m) and checker_refuses(m)
    refused(tmp_path, m, InvalidModelError, "'y'", "'first' (Relu)", "'second' (Sigmoid)")


def test_a_node_writing_a_graph_input_is_invalid(tmp_path):
    m = chain([("Relu", "a", ["x"], ["t"]), ("Relu", "clobber", ["t"], ["x"]), ("Relu", "c", ["t"], ["y"])])
    assert ort_refuses(m) and checker_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'clobber' (Relu)", "'x'", "graph input")


def test_duplicate_node_names_name_both_nodes(tmp_path):
    m = chain([("Relu", "same", ["x"], ["t"]), ("Sigmoid", "same", ["t"], ["y"])])
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "'same'", "(Relu)", "(Sigmoid)")


def test_an_output_listed_twice_is_valid_and_written_twice(tmp_path):
    """onnxruntime and the checker accept it (the fuzzer's dup_output): no refusal, both written."""
    from toolchain import compile_model
    from toolchain.harness.oracle import onnxruntime_outputs

    m = chain([("Relu", "a", ["x"], ["t"]), ("Sigmoid", "b", ["t"], ["y"])])
    m.graph.output.append(m.graph.output[0])
    assert not checker_refuses(m)
    x = np.random.default_rng(0).standard_normal((1, 3)).astype(F)
    got, want = compile_model(m)(x), onnxruntime_outputs(m, {"x": x})
    assert len(got) == len(want) == 2
    for g_, w in zip(got, want):
        np.testing.assert_allclose(g_, w, rtol=1e-5, atol=1e-6)


# -- graph inputs -------------------------------------------------------------------------------
def test_an_input_without_a_shape_is_not_a_scalar(tmp_path):
    m = unary(x_shape=None)
    assert checker_refuses(m)
    refused(tmp_path, m, InvalidModelError, "input 'x'", "no shape")


def test_a_zero_sized_dimension_is_an_empty_tensor_not_a_dynamic_one(tmp_path):
    m = unary(x_shape=(1, 0), y_shape=(1, 0))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    res = build(tmp_path / "m.onnx", "x86-64-v3", out=tmp_path / "empty")
    assert res.manifest["inputs"][0]["shape"] == [1, 0] and res.manifest["outputs"][0]["bytes"] == 0


def test_an_unnamed_dynamic_dimension_says_how_to_bind_it(tmp_path):
    msg = refused(tmp_path, unary(x_shape=(None, 3), y_shape=(None, 3)), UnsupportedError, "input 'x'",
                  "no name (axis 0)", "dim_param")
    assert "--dim ?" not in msg


def test_named_dynamic_dimensions_are_listed_and_bindable(tmp_path):
    m = unary(x_shape=("N", "T"), y_shape=("N", "T"))
    refused(tmp_path, m, UnsupportedError, "input 'x'", "--dim N=1 --dim T=1")
    res = build(tmp_path / "m.onnx", "x86-64-v3", out=tmp_path / "ok", dims={"N": 2, "T": 5})
    assert res.manifest["outputs"][0]["shape"] == [2, 5]  # a declared symbolic dim agrees with any size


# -- declared types against inference ------------------------------------------------------------
def test_a_declared_output_shape_that_disagrees_is_invalid(tmp_path):
    refused(tmp_path, conv(declared=(1, 4, 3, 3)), InvalidModelError, "output 'y'", "[1, 4, 3, 3]",
            "inferred [1, 4, 6, 6]")


def test_a_declared_output_dtype_that_disagrees_is_invalid(tmp_path):
    m = unary(y_dtype=np.int64)
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "output 'y'", "declared int64", "inferred float32")


def test_a_declared_rank_that_disagrees_is_invalid(tmp_path):
    refused(tmp_path, unary(y_shape=(3,)), InvalidModelError, "output 'y'", "[3]", "[1, 3]")


def test_conv_kernel_shape_must_match_the_weight(tmp_path):
    m = conv(kernel_shape=[2, 2], declared=(1, 4, 7, 7))
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'conv1' (Conv)", "kernel_shape [2, 2]", "[3, 3]")


# -- sizes -------------------------------------------------------------------------------------------
def test_element_counts_are_exact():
    t = TensorType("float32", (2**31, 2**31, 2**31))
    assert t.size == 2**93 and t.nbytes == 2**95


def test_a_tensor_beyond_the_address_space_is_refused(tmp_path):
    big = (2**31, 2**31, 2**31)
    refused(tmp_path, unary(x_shape=big, y_shape=big), BudgetError, "tensor 'x'", "64-bit",
            "9,223,372,036,854,775,807")


def test_a_32_bit_target_refuses_a_tensor_over_2_gib(tmp_path):
    shape = (1024, 1024, 1024)  # 4 GiB of float32
    refused(tmp_path, unary(x_shape=shape, y_shape=shape), BudgetError, "tensor 'x'", "32-bit",
            "2,147,483,647", target=str(ROOT / "tests" / "profiles" / "rv32gc.toml"))


def big_arena():
    """40 GB of intermediate float32 between a (1, 1) input and a scalar output."""
    return make_model([helper.make_node("Expand", ["x", "s"], ["t"], name="grow"),
                       helper.make_node("Relu", ["t"], ["u"], name="act"),
                       helper.make_node("ReduceMax", ["u"], ["y"], name="max", axes=[0, 1], keepdims=0)],
                      {"x": (F, (1, 1))}, {"y": (F, ())}, {"s": np.array([10_000, 1_000_000], np.int64)})


def test_every_profile_has_a_default_ram_budget():
    for p in all_profiles().values():  # application boards: GiBs; microcontroller parts: KiBs
        low = 2**28 if p.run_mode == "user" else 2**16
        assert low <= p.budgets.get("ram_bytes", 0) <= 2**34, p.name
    assert get_profile("cortex-a53").budgets["ram_bytes"] == 1 << 30


def test_a_40_gb_arena_is_refused_with_the_figures(tmp_path):
    refused(tmp_path, big_arena(), BudgetError, "RAM budget", "40,000,000,000", "1,073,741,824",
            "cortex-a53's default", target="cortex-a53")


# -- the CLI: one line, non-zero exit, nothing written ----------------------------------------------
@pytest.mark.parametrize("model, needles", [
    (conv(stride=[2, 2]), ["conv1", "stride"]),
    (chain([("Relu", "first", ["x"], ["y"]), ("Sigmoid", "second", ["x"], ["y"])]), ["first", "second"]),
    (big_arena(), ["RAM budget", "40,000,000,000"]),
])
def test_cli_refuses_in_one_line(tmp_path, model, needles):
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", "--target", "cortex-a53", "--model",
                           str(tmp_path / "m.onnx"), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and err.startswith("edgec: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err, err
    assert not out.exists() or not any(out.iterdir())


# -- element types against the op's type constraints (fuzzer findings: tracebacks in the LLVM builder) --
def test_an_input_outside_the_type_constraint_is_invalid(tmp_path):
    m = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")], {"x": (F, (1, 4))},
                   {"y": (F, (1, 2))}, {"w": np.ones((4, 2), F), "c": np.ones(2, np.int32)})
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'fc' (Gemm)", "'c' (C)", "tensor(int32)", "tensor(float)")


def test_a_recurrent_state_of_another_dtype_is_invalid(tmp_path):
    m = make_model([helper.make_node("LSTM", ["x", "w", "r", "", "", "h0"], ["", "y"], name="lstm", hidden_size=2)],
                   {"x": (F, (3, 1, 4)), "h0": (np.float64, (1, 1, 2))}, {"y": (F, (1, 1, 2))},
                   {"w": np.ones((1, 8, 4), F), "r": np.ones((1, 8, 2), F)})
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'lstm' (LSTM)", "'h0' (initial_h)", "tensor(double)")


def test_declared_intermediate_shapes_are_checked(tmp_path):
    """value_info, like outputs: our shapes must agree with onnx's own shape inference on every
    real model, and a declared intermediate shape that disagrees is refused naming the tensor."""
    from toolchain.frontend.onnx_import import import_model

    for path in [*sorted((ROOT / "tests" / "models").glob("*.onnx")), ROOT / "models" / "kws_dscnn.onnx"]:
        m = onnx.shape_inference.infer_shapes(onnx.load(path))
        assert len(m.graph.value_info) > 0
        import_model(m)  # every declared intermediate agrees
    m = chain([("Relu", "r", ["x"], ["h"]), ("Sigmoid", "s", ["h"], ["y"])])
    m.graph.value_info.append(helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [7, 7]))
    refused(tmp_path, m, InvalidModelError, "tensor 'h' is declared with shape [7, 7], inferred")


def test_negative_pads_are_invalid(tmp_path):
    """Fuzzer finding (a Conv's pads changed to a negative value built; onnxruntime refuses)."""
    w = np.ones((2, 1, 3, 3), F)
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[-1, 0, 0, 0], name="c")],
                   {"x": (F, (1, 1, 6, 6))}, {"y": (F, (1, 2, 3, 4))}, {"w": w})
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "node 'c' (Conv)", "must not be negative")


def test_an_output_without_an_element_type_is_invalid(tmp_path):
    """Fuzzer finding (a flipped byte left output 'h' of the bidirectional LSTM with element
    type 0; it built, onnxruntime refuses to load it)."""
    m = chain([("Relu", "r", ["x"], ["y"])])
    m.graph.output[0].type.tensor_type.elem_type = 0
    assert ort_refuses(m)
    refused(tmp_path, m, InvalidModelError, "output 'y' declares no element type")
