"""Front-end fixes found by the onnx node suite (tests/node_suite.py): 0-d tensors stay 0-d,
every opset the installed onnx defines is accepted, graph outputs keep their names."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_close, compile_and_run, make_model, onnxruntime_outputs
from toolchain.errors import CompileError
from toolchain.frontend.onnx_import import SUPPORTED_OPSETS, import_model
from toolchain.ir import Graph, TensorType
from toolchain.passes import run_pipeline

HOST = "x86-64-v3"
NEWEST = onnx.defs.onnx_opset_version()


def check(model, feeds, workdir):
    """Build, run on the host, compare with onnxruntime (values and shapes); returns the manifest."""
    got, res, _ = compile_and_run(model, HOST, feeds, workdir)
    want = onnxruntime_outputs(model, feeds)
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"output {j}")
    return res.manifest


# -- (1) 0-d tensors ------------------------------------------------------------------------
def test_const_keeps_a_scalar_0d():
    g = Graph("g")
    v = g.const("s", np.float32(2.5))
    assert v.type == TensorType("float32", ()) and v.data.shape == ()
    assert v.type.size == 1 and v.type.nbytes == 4
    w = g.const("t", np.arange(6, dtype=np.int64).reshape(2, 3).T)  # non-contiguous: copied
    assert w.data.flags.c_contiguous and w.type.shape == (3, 2)


def test_scalar_initializer_and_constant_import_0d():
    nodes = [helper.make_node("Constant", [], ["c"], value_float=2.0),
             helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Add", ["t", "s"], ["y"])]
    m = make_model(nodes, {"x": (np.float32, (3, 4))}, {"y": (np.float32, (3, 4))},
                   {"s": np.array(0.5, np.float32)})
    g = import_model(m)
    consts = {n.op: [v.type.shape for v in n.inputs if v.is_const] for n in g.nodes}
    assert consts == {"Mul": [()], "Add": [()]}


def test_0d_result_runs(workdir):
    """ReduceSum over every axis without keepdims, and a 0-d input, give 0-d outputs."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0),
             helper.make_node("Mul", ["r", "k"], ["y"]), helper.make_node("Add", ["k", "s"], ["z"])]
    m = make_model(nodes, {"x": (np.float32, (2, 3)), "k": (np.float32, ())},
                   {"y": (np.float32, ()), "z": (np.float32, ())}, {"s": np.array(1.5, np.float32)})
    rng = np.random.default_rng(0)
    manifest = check(m, {"x": rng.standard_normal((2, 3)).astype(np.float32),
                         "k": np.array(3.0, np.float32)}, workdir)
    assert [o["shape"] for o in manifest["outputs"]] == [[], []]
    assert [i["shape"] for i in manifest["inputs"]] == [[2, 3], []]


def test_0d_constant_output(workdir):
    m = make_model([helper.make_node("Constant", [], ["y"], value_int=7),
                    helper.make_node("Relu", ["x"], ["z"])],
                   {"x": (np.float32, (4,))}, {"y": (np.int64, ()), "z": (np.float32, (4,))})
    manifest = check(m, {"x": np.linspace(-1, 1, 4, dtype=np.float32)}, workdir)
    assert manifest["outputs"][0]["shape"] == []


# -- (2) opsets -----------------------------------------------------------------------------
def test_every_opset_onnx_defines_is_accepted():
    assert SUPPORTED_OPSETS.start == 6 and SUPPORTED_OPSETS.stop - 1 == NEWEST


@pytest.mark.parametrize("opset", sorted({13, 21, 22, NEWEST}))
def test_newer_opsets_compile_and_run(opset, workdir):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Elu", ["c"], ["e"], alpha=0.5),
             helper.make_node("Reshape", ["e", "shape"], ["y"])]
    rng = np.random.default_rng(opset)
    m = make_model(nodes, {"x": (np.float32, (1, 2, 5, 5))}, {"y": (np.float32, (1, 75))},
                   {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                    "shape": np.array([1, 75], np.int64)}, opset=opset)
    check(m, {"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)}, workdir)


def test_an_opset_beyond_onnx_is_rejected():
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (np.float32, (2,))},
                   {"y": (np.float32, (2,))}, opset=NEWEST + 1)
    with pytest.raises(CompileError, match=f"opset {NEWEST + 1} is not supported"):
        import_model(m)


def test_a_model_without_the_default_domain_is_unsupported():
    # (a model of the preview training ops alone is taken: frontend/preview.py, tests/test_ops_flex.py)
    node = helper.make_node("Step", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 1)])
    with pytest.raises(CompileError, match="unsupported op domain 'com.example' .the model imports no default"):
        import_model(m)


# -- (3) output names ----------------------------------------------------------------------------
def _names(model):
    g = run_pipeline(import_model(model))
    return [v.name for v in g.outputs]


def test_output_names_are_kept(workdir):
    """Outputs made by a view op, an initializer, a Constant, Identity of an input, the input
    itself and two outputs CSE makes one value all come out under their graph names."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Relu", ["x"], ["r1"]), helper.make_node("Relu", ["x"], ["r2"]),
             helper.make_node("Identity", ["x"], ["same"]),
             helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0])]
    outs = {"flat": (np.float32, (6,)), "r1": (np.float32, (2, 3)), "r2": (np.float32, (2, 3)),
            "same": (np.float32, (2, 3)), "k": (np.float32, (2,)), "init": (np.float32, (3,)),
            "x": (np.float32, (2, 3))}
    m = make_model(nodes, {"x": (np.float32, (2, 3))}, outs,
                   {"shape": np.array([6], np.int64), "init": np.array([4, 5, 6], np.float32)})
    assert _names(m) == list(outs)
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    manifest = check(m, {"x": x}, workdir)
    assert [o["name"] for o in manifest["outputs"]] == list(outs)
    assert [i["name"] for i in manifest["inputs"]] == ["x"]


def test_an_output_name_used_inside_is_freed():
    """An output whose value is renamed by a fusion still gets its name, and the value that
    held that name inside the graph gives it up (names stay unique among node outputs)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
             helper.make_node("Flatten", ["y"], ["out"])]
    m = make_model(nodes, {"x": (np.float32, (1, 1, 3, 3))}, {"out": (np.float32, (1, 9))},
                   {"w": np.ones((1, 1, 1, 1), np.float32)})
    g = run_pipeline(import_model(m))
    assert [v.name for v in g.outputs] == ["out"]
    names = [v.name for n in g.nodes for v in n.outputs]
    assert len(names) == len(set(names)), names


def test_node_suite_matmul_1d_1d(workdir):
    """onnx's test_matmul_1d_1d: a 0-d output (was (1,))."""
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["c"])],
                   {"a": (np.float32, (4,)), "b": (np.float32, (4,))}, {"c": (np.float32, ())})
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(4).astype(np.float32) for _ in range(2))
    got, res, _ = compile_and_run(m, HOST, {"a": a, "b": b}, workdir)
    assert got[0].shape == () and res.manifest["outputs"][0]["name"] == "c"
    assert_close(got[0], np.matmul(a, b))


def test_initializer_names_survive_as_values():
    m = make_model([helper.make_node("Add", ["x", "b"], ["y"])], {"x": (np.float32, (2,))},
                   {"y": (np.float32, (2,)), "b": (np.float32, (2,))}, {"b": np.ones(2, np.float32)})
    assert _names(m) == ["y", "b"]


@pytest.mark.parametrize("mode,ratio", [(None, None), (True, 0.5), (False, 0.5), (True, 0.0)])
def test_dropout_in_training_mode_is_unsupported(mode, ratio, workdir):
    """onnx's test_training_dropout*: was computed as Identity (a wrong result); with a
    ratio of 0 training mode is Identity."""
    inputs, inits = ["x"], {}
    if mode is not None:
        inputs += ["ratio", "training"]
        inits = {"ratio": np.array(ratio, np.float32), "training": np.array(mode)}
    m = make_model([helper.make_node("Dropout", inputs, ["y"])], {"x": (np.float32, (2, 3))},
                   {"y": (np.float32, (2, 3))}, inits)
    if mode and ratio:
        with pytest.raises(CompileError, match="training_mode is not supported"):
            import_model(m)
    else:
        check(m, {"x": np.ones((2, 3), np.float32)}, workdir)
