"""Forward mode (passes/forward.py and each op's jvp rule): the JVP graph against central
finite differences of the float64 reference (tests/autodiff_helpers.py: the output
tangents against the difference along the input tangents), per op and on the five real
models; then the compiled <name>_jvp (float32: kws_dscnn in-process on x86-64-v3,
fc_autoencoder and a small CNN on cortex-a76 under QEMU) against the float64 JVP; the
header's contract, the manifest, the size report and the refusals."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper

from autodiff_helpers import check_jvp, jvp64, onnx_model
from helpers import ROOT
from test_autodiff import OPS, _edgec, _product_of_the_others, cnn, extremes, mlp, node, w, with_consts
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.passes.forward import forward

# (id, nodes, inputs, initializers, positive inputs, opset): the ops forward mode adds to
# those of reverse mode (OPS, whose rows all run here too)
FORWARD_OPS = [
    ("leakyrelu", [node("LeakyRelu", ["a"], alpha=0.2)], {"a": (3, 5)}, {}, False, 17),
    ("leakyrelu-negative-slope", [node("LeakyRelu", ["a"], alpha=-0.3)], {"a": (3, 5)}, {}, False, 17),
    ("clip-min-only", [node("Clip", ["a", "lo"])], {"a": (3, 5)}, {}, False, 17),
    ("relu6-after-conv", [node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node("Clip", ["c"], min=0.0, max=0.5)],
     {"x": (1, 2, 4, 4)}, {"W": w(3, 2, 3, 3)}, False, 10),
    ("erf", [node("Erf", ["a"])], {"a": (3, 5)}, {}, False, 17),
    ("gelu", [node("Gelu", ["a"])], {"a": (3, 5)}, {}, False, 20),
    ("gelu-tanh", [node("Gelu", ["a"], approximate="tanh")], {"a": (3, 5)}, {}, False, 20),
    *[(op.lower(), [node(op, ["a"])], {"a": (3, 5)}, {}, op == "Reciprocal", 17)
      for op in ("Abs", "Reciprocal", "Softplus", "Sin", "Cos")],
    ("pow-constant", [node("Pow", ["a", "two"])], {"a": (3, 5)}, {}, False, 17),
    ("pow-int-exponent", [node("Pow", ["a", "three"])], {"a": (3, 5)}, {}, False, 17),
    ("pow-both", [node("Pow", ["a", "b"])], {"a": (3, 5), "b": (5,)}, {}, True, 17),
    ("sub-second-only", [node("Sub", ["k", "a"])], {"a": (2, 3)}, {"k": w(4, 2, 3)}, False, 17),
    ("div-denominator-only", [node("Div", ["k", "a"])], {"a": (2, 3)}, {"k": w(3, 2, 3)}, True, 17),
    ("add-constant-broadcast", [node("Add", ["a", "k"])], {"a": (3,)}, {"k": w(2, 3)}, False, 17),
    ("where", [node("Where", ["mask", "a", "b"])], {"a": (2, 3), "b": (3,)}, {}, False, 17),
    ("where-one-branch", [node("Where", ["mask", "k", "a"])], {"a": (3,)}, {"k": w(2, 3)}, False, 17),
    ("maxpool", [node("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     {"a": (2, 3, 7, 6)}, {}, False, 17),
    ("maxpool-dilated-ceil", [node("MaxPool", ["a"], kernel_shape=[2, 2], strides=[2, 1], dilations=[1, 2],
                                   ceil_mode=1)], {"a": (1, 2, 5, 6)}, {}, False, 17),
    ("maxpool-1d", [node("MaxPool", ["a"], kernel_shape=[2], strides=[2])], {"a": (2, 3, 8)}, {}, False, 17),
    ("split", [node("Split", ["a", "sizes"], ["p", "q"], axis=1), node("Mul", ["p", "q"])], {"a": (2, 6)}, {},
     False, 17),
    ("slice", [node("Slice", ["a", "starts", "ends", "slice_axes", "steps"])], {"a": (4, 6)}, {}, False, 17),
    ("pad-constant", [node("Pad", ["a", "pads", "value"])], {"a": (2, 3)}, {}, False, 17),
    ("pad-reflect", [node("Pad", ["a", "pads"], mode="reflect")], {"a": (3, 4)}, {}, False, 17),
    ("expand", [node("Expand", ["a", "shape3"])], {"a": (3, 1)}, {}, False, 17),
    ("tile", [node("Tile", ["a", "reps"])], {"a": (2, 3)}, {}, False, 17),
    ("gather", [node("Gather", ["a", "idx"], axis=1)], {"a": (2, 4)}, {}, False, 17),
    ("depthtospace", [node("DepthToSpace", ["a"], blocksize=2)], {"a": (1, 8, 2, 3)}, {}, False, 17),
    ("concat-constant", [node("Concat", ["a", "k"], axis=0)], {"a": (2, 3)}, {"k": w(1, 3)}, False, 17),
    ("identity", [node("Identity", ["a"], ["i"]), node("Tanh", ["i"])], {"a": (2, 3)}, {}, False, 17),
    ("layernorm", [node("LayerNormalization", ["a", "s", "b"], axis=-1)], {"a": (2, 3, 5)},
     {"s": w(5), "b": w(5)}, False, 17),
    ("layernorm-affine-inputs", [node("LayerNormalization", ["a", "s", "b"], axis=1)], {"a": (2, 3, 4), "s": (3, 4),
                                                                                   "b": (4,)}, {}, False, 17),
    ("layernorm-no-bias", [node("LayerNormalization", ["a", "s"], axis=0)], {"a": (3, 4)}, {"s": w(4)}, False, 17),
    ("batchnorm-statistics-inputs", [node("BatchNormalization", ["x", "s", "b", "m", "v"])],
     {"x": (2, 3, 4), "s": (3,), "b": (3,), "m": (3,), "v": (3,)}, {}, True, 17),
    ("batchnorm-after-conv", [node("Conv", ["x", "W"], ["c"]), node("BatchNormalization", ["c", "s", "b", "m", "v"])],
     {"x": (1, 2, 4, 4)}, {"W": w(3, 2, 1, 1), "s": w(3), "b": w(3), "m": w(3),
                           "v": np.array([0.5, 1.0, 2.0], np.float32)}, False, 17),
    ("conv-bias-input", [node("Conv", ["x", "W", "B"], pads=[1, 1, 1, 1])], {"B": (4,)},
     {"x": w(1, 3, 4, 4), "W": w(4, 3, 3, 3)}, False, 17),
    ("conv-weight-and-bias-inputs", [node("Conv", ["x", "w", "B"], group=2)], {"w": (4, 1, 2, 2), "B": (4,)},
     {"x": w(1, 2, 3, 3)}, False, 17),
    ("gemm-bias-input", [node("Gemm", ["A", "B", "c"], beta=0.5)], {"c": (3,)}, {"A": w(2, 4), "B": w(4, 3)},
     False, 17),
    ("gemm-weight-input", [node("Gemm", ["A", "b", "c"], transB=1, alpha=2.0)], {"b": (3, 4), "c": (2, 3)},
     {"A": w(2, 4)}, False, 17),
    ("matmul-weights", [node("MatMul", ["a", "W"])], {"a": (2, 3, 4)}, {"W": w(4, 5)}, False, 17),
]
CONSTS = {"two": np.array(2.0, np.float32), "three": np.array(3, np.int64), "sizes": np.array([3, 3], np.int64),
          "starts": np.array([1, 5], np.int64), "ends": np.array([4, 0], np.int64),
          "slice_axes": np.array([0, 1], np.int64),
          "steps": np.array([2, -2], np.int64), "pads": np.array([1, 0, 0, 2], np.int64),
          "value": np.array(1.5, np.float32), "shape3": np.array([2, 3, 4], np.int64),
          "reps": np.array([2, 3], np.int64), "idx": np.array([[3, 0], [1, 1]], np.int64),
          "mask": np.array([True, False, True])}


def _consts(nodes):
    """Operands given as Constant nodes (not initializers), besides those of test_autodiff."""
    used = {i for n in nodes for i in n.input}
    made = [helper.make_node("Constant", [], [k], value=helper.make_tensor(
        k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.reshape(-1).tolist())) for k, v in CONSTS.items()
        if k in used]
    return with_consts(made + nodes)


def _model(case):
    _, nodes, inputs, inits, _, opset = case
    return onnx_model(_consts(nodes), inputs, inits, opset=opset)


ALL = OPS + FORWARD_OPS


@pytest.mark.parametrize("case", ALL, ids=[c[0] for c in ALL])
def test_jvp_matches_finite_differences(case):
    check_jvp(_model(case), positive=case[4])


def _real(path):
    return lambda: onnx.load(str(ROOT / path))


REAL = {"kws_dscnn": _real("models/kws_dscnn.onnx"), "fc_autoencoder": _real("tests/models/fc_autoencoder.onnx"),
        "resnet8": _real("tests/models/resnet8_cifar10.onnx"),
        "mobilenet_vww": _real("tests/models/mobilenet_v1_025_vww.onnx"),
        "transformer": _real("tests/models/transformer_encoder.onnx")}


@pytest.mark.parametrize("model", sorted(REAL))
def test_real_model_jvp_matches_finite_differences(model):
    """The five bundled models (depthwise and strided convolutions, shortcuts, average
    pooling, folded BatchNorm, attention with LayerNorm and Erf): two random directions.
    Step 1e-7, as for reverse mode (fewer ReLU kinks crossed)."""
    prog = check_jvp(REAL[model](), eps=1e-7)
    assert prog.wrt_inputs == [0] and prog.tan_outputs == [0]


def test_extremes_model_jvp_matches_finite_differences():
    """Gemm into every reduction and Max/Min rule at once (test_autodiff.extremes)."""
    check_jvp(extremes())


def test_ties_average_the_tangents():
    """ReduceMax over rows with repeated maxima and Max of partly equal inputs: the tangent
    is the mean of the tangents of the elements equal to the extreme."""
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, -1.0, 0.0, 4.0]])
    dx = np.random.default_rng(1).standard_normal(x.shape)
    m = onnx_model([node("ReduceMax", ["a"], axes=[1], keepdims=1)], {"a": (3, 4)})
    _, _, (dy,) = jvp64(m, [x], [dx])
    want = [[(dx[0, 1] + dx[0, 2]) / 2], [dx[1].mean()], [dx[2, 0]]]
    np.testing.assert_allclose(dy, want, rtol=1e-15)
    a, b = np.array([[1.0, 2.0, -3.0]]), np.array([[1.0, 5.0, -4.0]])
    da, db = np.array([[0.3, -1.0, 2.0]]), np.array([[0.7, 4.0, 9.0]])
    m = onnx_model([node("Max", ["a", "b"])], {"a": (1, 3), "b": (1, 3)})
    _, _, (dy,) = jvp64(m, [a, b], [da, db])
    np.testing.assert_allclose(dy, [[0.5, 4.0, 2.0]], rtol=1e-15)


def test_reduceprod_tangent_exact_at_zeros():
    """ReduceProd over rows with no zero, one and two: the tangent is the sum of each
    element's tangent times the product of the others (test_autodiff's exact pullback check)."""
    x = np.array([[2.0, -3.0, 0.5, 4.0], [2.0, 0.0, -3.0, 5.0], [0.0, 7.0, 0.0, 3.0]])
    dx = np.random.default_rng(2).standard_normal(x.shape)
    m = onnx_model([node("ReduceProd", ["a"], axes=[1], keepdims=1)], {"a": (3, 4)})
    _, _, (dy,) = jvp64(m, [x], [dx])
    want = (_product_of_the_others(x) * dx).sum(axis=1, keepdims=True)
    assert want[2, 0] == 0
    np.testing.assert_allclose(dy, want, rtol=1e-14, atol=0)


def test_models_with_several_inputs_and_outputs():
    """A tangent per float input in input order, one per float output in output order;
    an output that depends on no input has a zero tangent."""
    nodes = [node("Mul", ["a", "b"], ["p"]), node("Tanh", ["p"], ["y"]), node("Exp", ["b"], ["z"]),
             node("Identity", ["k"], ["c"])]
    m = onnx_model(nodes, {"a": (2, 3), "b": (3,)}, {"k": w(2)}, outputs=("y", "z", "c"))
    prog = check_jvp(m)
    assert prog.wrt_inputs == [0, 1] and prog.tan_outputs == [0, 1, 2]
    _, _, dys = jvp64(m, [np.ones((2, 3)), np.ones(3)], [np.ones((2, 3)), np.ones(3)])
    assert not dys[2].any()


def test_activity_no_tangent_work_off_the_differentiated_path():
    """Values that depend on no float input get no rule: a branch of constants, an integer
    input's path (cast to float and added), and the input tangent of an input that reaches
    no output is read by nothing."""
    k = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 1, [3], [1.0, 2.0, 3.0]))
    nodes = [k, node("Exp", ["k"], ["e"]), node("Cast", ["n"], ["nf"], to=1), node("Add", ["e", "nf"], ["s"]),
             node("Mul", ["a", "s"], ["y"]), node("Sigmoid", ["u"], ["unused"])]
    m = onnx_model(nodes, {"a": (2, 3), "u": (3,)})
    m.graph.input.append(helper.make_tensor_value_info("n", 6, [2, 3]))
    prog = forward(import_model(m))
    assert prog.wrt_inputs == [0, 1] and [v.name for v in prog.input_tangents] == ["d_a", "d_u"]
    tangent_nodes = [n for n in prog.graph.nodes if "_jvp_" in n.name]
    assert [n.op for n in tangent_nodes] == ["Mul"]  # dy = da * s: nothing for e, nf, s or u
    assert not any(v is prog.input_tangents[1] for n in prog.graph.nodes for v in n.inputs)


def test_tangent_gemm_fuses_batchnorm_and_the_relu_mask_into_its_store():
    """The tangent Gemm gets the BatchNorm folded in as the forward one does, and Relu's
    derivative (edgec.ReluGrad: the tangent where the forward output is positive) is fused
    into its store, reading the forward Gemm's output: no mask buffer, no pass of its own."""
    from toolchain.passes import run_pipeline

    m = onnx.load(str(ROOT / "tests" / "models" / "fc_autoencoder.onnx"))
    prog = forward(import_model(m))
    run_pipeline(prog.graph)
    ops = prog.graph.op_counts()
    assert "BatchNormalization" not in ops and ops["Gemm"] == 20
    assert not {"Sign", "Mul", "edgec.ReluGrad"} & set(ops)
    forward_gemm, tangent_gemm = prog.graph.nodes[:2]
    assert [s.op for s in tangent_gemm.epilogue] == ["edgec.ReluGrad"]
    assert tangent_gemm.inputs[tangent_gemm.epilogue[0].operand] is forward_gemm.outputs[0]


def test_graph_outputs_and_names():
    prog = forward(import_model(mlp()))
    g = prog.graph
    assert (prog.n_inputs, prog.n_outputs) == (1, 1)
    assert [v.name for v in g.inputs] == ["x", "d_x"] and g.output_names == ["y", "d_y"]


@pytest.mark.parametrize("nodes, match", [
    ([node("Floor", ["a"], ["f"]), node("Add", ["f", "a"])], r"node 'Floor_0' \(Floor\): is not differentiable "
                                                             r"\(piecewise constant"),
    ([node("ArgMax", ["a"], ["i"], axis=1), node("Cast", ["i"], ["y"], to=1)],
     r"node 'ArgMax_0' \(ArgMax\): is not differentiable \(its output 'i' is int64\)"),
    ([node("Cast", ["a"], ["i"], to=6), node("Cast", ["i"], ["y"], to=1)],
     r"node 'Cast_0' \(Cast\): is not differentiable \(its output 'i' is int32\)"),
    ([node("QuantizeLinear", ["a", "qs"], ["q"]), node("DequantizeLinear", ["q", "qs"])],
     r"node 'QuantizeLinear_1' \(QuantizeLinear\): is not differentiable \(its output 'q' is uint8\)"),
    ([node("HardSigmoid", ["a"])], r"node 'HardSigmoid_0' \(HardSigmoid\): no derivative rule \(forward mode\)"),
    ([node("Mod", ["a", "a"], fmod=1)], r"node 'Mod_0' \(Mod\): no derivative rule \(forward mode\)"),
])
def test_refusals_name_node_and_op(nodes, match):
    qs = helper.make_node("Constant", [], ["qs"], value=helper.make_tensor("qs", 1, [], [0.1]))
    m = onnx_model(([qs] if any("qs" in n.input for n in nodes) else []) + nodes, {"a": (2, 3)})
    with pytest.raises(UnsupportedError, match=match):
        forward(import_model(m))


def test_lstm_refused_naming_node_and_op():
    with pytest.raises(UnsupportedError, match=r"\(LSTM\): no derivative rule \(forward mode\)"):
        forward(import_model(onnx.load(str(ROOT / "tests" / "models" / "lstm.onnx"))))


def _float32(arrays):
    return [np.asarray(a, np.float32) for a in arrays]


def _check_against_float64(m, outs, dys, xs, ts):
    _, ys, want = jvp64(m, [x.astype(np.float64) for x in xs], [t.astype(np.float64) for t in ts])
    for got, ref in zip(outs, ys):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max()))
    for got, ref in zip(dys, want):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_compiled_kws_jvp_matches_float64_in_process():
    """The keyword-spotting DS-CNN's <name>_jvp as shipped (x86-64-v3, in-process) against
    the float64 JVP, twice with the arena garbage in between (the JVP reads nothing it did
    not write)."""
    from toolchain import CompiledJvp, compile_grad

    m = REAL["kws_dscnn"]()
    cj = compile_grad(m, grad="forward")
    assert isinstance(cj, CompiledJvp)
    assert cj.manifest["grad"]["mode"] == "forward" and set(cj.manifest["stack_bytes"]) == {"model_jvp"}
    rng = np.random.default_rng(3)
    for _ in range(2):
        xs = [rng.standard_normal(s).astype(np.float32) for _, _, s in cj.inputs]
        ts = [rng.standard_normal(s).astype(np.float32) for _, _, s in cj.input_tangents]
        cj.arena[...] = 0xFF  # NaN in every float a stale read would pick up
        outs, dys = cj.jvp(xs, ts)
        _check_against_float64(m, outs, dys, xs, ts)
    with pytest.raises(Exception, match="input tangent 'd_input': expected float32 array of shape"):
        cj.jvp(xs, [ts[0][..., :3]])


def _driver(manifest) -> str:
    """A C program for the target: reads the inputs and input tangents from argv[1], fills the
    arena with NaN, runs model_jvp, writes the outputs and output tangents to argv[2]; exit 3
    if a guard zone after the arena was written."""
    g = manifest["grad"]
    ins = [t["bytes"] for t in manifest["inputs"]] + [t["bytes"] for t in g["input_tangents"]]
    outs = [t["bytes"] for t in manifest["outputs"]] + [t["bytes"] for t in g["output_tangents"]]
    ni, no = len(manifest["inputs"]), len(manifest["outputs"])

    def table(name, items):
        return f"{name}[] = {{{', '.join(items) or '0'}}};"

    return "\n".join([
        "#include <stdio.h>", "#include <string.h>", '#include "model.h"',
        "#define GUARD 64",
        "static _Alignas(MODEL_ARENA_ALIGN) unsigned char arena[MODEL_JVP_ARENA_SIZE + GUARD];",
        *[f"static _Alignas(16) unsigned char i{k}[{n}];" for k, n in enumerate(ins)],
        *[f"static _Alignas(16) unsigned char o{k}[{n}];" for k, n in enumerate(outs)],
        "int main(int argc, char **argv) {",
        "    FILE *f = fopen(argv[1], \"rb\");", "    if (!f || argc < 3) return 2;",
        *[f"    if (fread(i{k}, 1, {n}, f) != {n}) return 2;" for k, n in enumerate(ins)],
        "    fclose(f);",
        "    memset(arena, 0xFF, MODEL_JVP_ARENA_SIZE); memset(arena + MODEL_JVP_ARENA_SIZE, 0xA5, GUARD);",
        "    const void *" + table("ins", [f"i{k}" for k in range(ni)]),
        "    const void *" + table("tans", [f"i{k}" for k in range(ni, len(ins))]),
        "    void *" + table("outs", [f"o{k}" for k in range(no)]),
        "    void *" + table("dys", [f"o{k}" for k in range(no, len(outs))]),
        "    if (model_jvp(ins, tans, outs, dys, arena) != 0) return 4;",
        "    for (int k = 0; k < GUARD; k++) if (arena[MODEL_JVP_ARENA_SIZE + k] != 0xA5) return 3;",
        "    f = fopen(argv[2], \"wb\");", "    if (!f) return 2;",
        *[f"    fwrite(o{k}, 1, {n}, f);" for k, n in enumerate(outs)],
        "    fclose(f);", "    return 0;", "}", ""])


@pytest.mark.parametrize("model, emit", [("fc_autoencoder", "object"), ("cnn", "c")])
def test_jvp_on_cortex_a76_under_qemu(tmp_path, model, emit):
    """The library as shipped (the object path for the fc_autoencoder, the portable C path
    built by zig cc for a small CNN), linked into a C program for cortex-a76 and run under
    qemu-user, against the float64 JVP."""
    from autodiff_helpers import run_driver_on_a76

    m = cnn() if model == "cnn" else REAL[model]()
    rng = np.random.default_rng(5)
    sent = {}

    def feeds(man):  # the inputs, then a tangent per float input
        sent["xs"] = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["inputs"]]
        sent["ts"] = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["grad"]["input_tangents"]]
        return sent["xs"] + sent["ts"]

    man, flat = run_driver_on_a76(m, tmp_path, emit, "forward", _driver, feeds)
    xs, ts = sent["xs"], sent["ts"]
    shapes = [t["shape"] for t in man["outputs"] + man["grad"]["output_tangents"]]
    parts, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        parts.append(flat[start:start + n].reshape(s))
        start += n
    assert start == flat.size
    n_out = len(man["outputs"])
    _check_against_float64(m, parts[:n_out], parts[n_out:], xs, ts)


HEADER_CONTRACT = """\
/* Forward mode (Jacobian-vector product). Runs the inference on inputs[i] and, in the
   same pass, pushes input_tangents[k] (the direction for float input k, shaped as that
   input) through it: writes outputs[j] and output_tangents[k], the derivative of float
   output k along those directions. Weights are constants: the derivative is with
   respect to the inputs. arena is JVP_ARENA_SIZE bytes aligned to ARENA_ALIGN; writes
   only outputs, output tangents and arena; reentrant given separate arenas. Returns 0. */
int net_jvp(const void *const *inputs, const void *const *input_tangents, void *const *outputs, \
void *const *output_tangents, void *arena);
"""


def test_cli_forward_build_header_manifest_symbols_size(tmp_path):
    """edgec build --grad forward: the prototype of the issue, the header's macros equal the
    manifest's figures (read back by a C program built -std=c99 -pedantic -Werror), one
    exported function and no undefined symbol, and the size report's stack of net_jvp."""
    onnx.save(cnn(), tmp_path / "cnn.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "cnn.onnx"), "--name", "net",
                  "--out", str(out), "--grad", "forward")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "net.json").read_text())
    g = man["grad"]
    assert g["mode"] == "forward" and "jvp arena" in proc.stdout
    assert [t["name"] for t in man["inputs"]] == ["x"] and [t["name"] for t in man["outputs"]] == ["y"]
    assert [(t["name"], t["input"], t["shape"]) for t in g["input_tangents"]] == [("d_x", 0, [2, 2, 6, 6])]
    assert [(t["name"], t["output"], t["shape"]) for t in g["output_tangents"]] == [("d_y", 0, [2, 3])]
    assert man["arena"]["size"] == g["arenas"]["jvp"]["size"] > 0
    header = (out / "net.h").read_text()
    assert HEADER_CONTRACT in header
    prog = tmp_path / "p.c"
    prog.write_text('#include <stdio.h>\n#include "net.h"\nint main(void) {\n'
                    '  int (*f)(const void *const *, const void *const *, void *const *, void *const *, void *) = net_jvp;\n'
                    '  (void)f;\n'
                    '  printf("%u %u %u %d %d %u %u %u\\n", NET_JVP_ARENA_SIZE, NET_ARENA_SIZE, NET_JVP_STACK_SIZE,\n'
                    '         NET_NUM_INPUT_TANGENTS, NET_NUM_OUTPUT_TANGENTS, NET_INPUT_TANGENT0_ELEMS,\n'
                    '         NET_OUTPUT_TANGENT0_BYTES, NET_ARENA_ALIGN);\n'
                    '  return 0;\n}\n')
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{out}", str(prog),
                    str(out / "net.o"), "-o", str(exe)], check=True)
    figures = list(map(int, subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()))
    size = man["arena"]["size"]
    assert figures == [size, size, man["stack_bytes"]["net_jvp"], 1, 1, 144, 24, man["arena"]["align"]]
    syms = subprocess.run(["nm", "-g", "--defined-only", str(out / "net.o")], capture_output=True, text=True,
                          check=True).stdout.split()
    assert sorted(s for s in syms if s.startswith("net_")) == ["net_jvp"]
    assert subprocess.run(["nm", "-u", str(out / "net.o")], capture_output=True, text=True, check=True).stdout == ""
    assert set(man["stack_bytes"]) == {"net_jvp"}
    proc = _edgec("size", "--target", "x86-64-v3", "--name", "net", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:2] == ["stack", "net_jvp"] and int(line.split()[2].replace(",", "")) ==
               man["stack_bytes"]["net_jvp"] for line in proc.stdout.splitlines())


def test_cli_forward_refusals(tmp_path):
    m = onnx_model([node("Floor", ["a"], ["f"]), node("Add", ["f", "a"])], {"a": (2, 3)})
    m.graph.node[0].name = "round_down"
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
                  "--grad", "forward")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["edgec: error: node 'round_down' (Floor): is not differentiable "
                                                "(piecewise constant: its derivative is zero almost everywhere)"]
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "mlp.onnx"), "--out", str(out),
                  "--grad", "forward", "--train")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["edgec: error: --grad forward and --train are separate builds: "
                                                "choose one"]


def test_build_forward_refusals(tmp_path):
    from toolchain.compiler import build

    onnx.save(mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(InvalidModelError, match="--weights external is for inference builds"):
        build(tmp_path / "mlp.onnx", "x86-64-v3", out=tmp_path / "o", grad="forward", weights="external")
    with pytest.raises(InvalidModelError, match="--grad must be one of reverse, forward, got 'sideways'"):
        build(tmp_path / "mlp.onnx", "x86-64-v3", out=tmp_path / "o", grad="sideways")
