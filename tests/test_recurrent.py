"""RNN, GRU and LSTM: the ONNX node test cases, attribute variants against onnxruntime (and
our float64 reference against onnxruntime and onnx's ReferenceEvaluator), models exported
from PyTorch on x86-64-v3 and cortex-a76, the C path, the refusals, and the op workspace
the memory planner places (Op.workspace)."""
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from helpers import ROOT, assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from toolchain.errors import CompileError, UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret
from toolchain.ir import TensorType
from toolchain.memory import plan_memory
from toolchain.ops import registry

T = "x86-64-v3"
F = np.float32
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


# -- the ONNX node test cases -----------------------------------------------------------------
def node_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases()
    return [c for c in cases if any(s in c.name.lower() for s in ("rnn", "gru", "lstm"))]


NODE_CASES = node_cases()


def as_supported(model: onnx.ModelProto, inputs):
    """The case's model at opset 21 (the cases are stamped 22, which only adds bfloat16 to
    these ops) with a sequence_lens input made an initializer (we take it only known at
    compile time); returns (model, feeds)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.opset_import[0].version = 21
    feeds = {}
    for vi, x in zip(list(m.graph.input), inputs):
        if vi.name == "sequence_lens":
            m.graph.initializer.append(numpy_helper.from_array(x, vi.name))
            m.graph.input.remove(vi)
        else:
            feeds[vi.name] = x
    return m, feeds


def test_all_node_cases_are_found():
    assert len(NODE_CASES) >= 18, [c.name for c in NODE_CASES]


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_onnx_node_case(case, workdir):
    for inputs, outputs in case.data_sets:
        model, feeds = as_supported(case.model, inputs)
        got = compile_and_run(model, T, feeds, workdir)[0]
        assert len(got) == len(outputs)
        for j, (g, w) in enumerate(zip(got, outputs)):
            assert_close(g, w, what=f"{case.name} output {j}")


# -- attribute variants -----------------------------------------------------------------------
def recurrent(op, seq=5, batch=3, inp=4, hid=6, direction="forward", layout=0, bias=True, init_h=False,
              init_c=False, peep=False, lens=None, outputs=None, seed=0, **attrs):
    """One recurrent node with seeded constant weights; returns (model, feeds, onnxruntime's
    outputs). onnxruntime takes only layout 0: for layout 1 it runs the layout-0 twin (the
    same weights, inputs and states transposed) and its outputs are transposed back."""
    rng = np.random.default_rng(seed)
    dirs, g = 2 if direction == "bidirectional" else 1, GATES[op]
    inits = {"W": rng.standard_normal((dirs, g * hid, inp)) * 0.5, "R": rng.standard_normal((dirs, g * hid, hid)) * 0.5}
    names = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits["B"], names[3] = rng.standard_normal((dirs, 2 * g * hid)) * 0.5, "B"
    if lens is not None:
        inits["L"], names[4] = np.array(lens, np.int32), "L"
    if init_h:
        inits["h0"], names[5] = rng.standard_normal((dirs, batch, hid)), "h0"
    if init_c:
        inits["c0"], names[6] = rng.standard_normal((dirs, batch, hid)), "c0"
    if peep:
        inits["P"], names[7] = rng.standard_normal((dirs, 3 * hid)), "P"
    while names[-1] == "":
        names.pop()
    inits = {k: v.astype(F) if v.dtype.kind == "f" else v for k, v in inits.items()}
    outputs = outputs or (["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"])
    present = [o for o in outputs if o]
    x = rng.standard_normal((seq, batch, inp)).astype(F)

    def build(lay, shapes=None):
        node = helper.make_node(op, names, outputs, hidden_size=hid, direction=direction, layout=lay, **attrs)
        ins = {k: (v if lay == 0 or k not in ("h0", "c0") else v.transpose(1, 0, 2)) for k, v in inits.items()}
        xs = x.shape if lay == 0 else (batch, seq, inp)
        return make_model([node], {"x": (F, xs)}, {o: (F, s) for o, s in zip(present, shapes or [None] * 3)},
                          ins, opset=17)

    want = onnxruntime_outputs(build(0), {"x": x})
    if layout == 0:
        return build(0, [w.shape for w in want]), {"x": x}, want
    want = [w.transpose(2, 0, 1, 3) if o == "Y" else w.transpose(1, 0, 2) for o, w in zip(present, want)]
    return build(1, [w.shape for w in want]), {"x": np.ascontiguousarray(x.transpose(1, 0, 2))}, want


VARIANTS = {
    "lstm-bidir-all-inputs": dict(op="LSTM", direction="bidirectional", init_h=True, init_c=True, peep=True),
    "lstm-layout1-reverse-input-forget-clip": dict(op="LSTM", direction="reverse", layout=1, init_h=True,
                                                   init_c=True, peep=True, input_forget=1, clip=0.7),
    "lstm-seq-lens-bidir": dict(op="LSTM", direction="bidirectional", lens=[5, 2, 4], init_h=True, init_c=True),
    "lstm-seq-lens-layout1": dict(op="LSTM", layout=1, lens=[3, 5, 1], init_h=True),
    "lstm-no-bias-only-yc": dict(op="LSTM", bias=False, outputs=["", "", "Y_c"]),
    "lstm-activations": dict(op="LSTM", activations=["HardSigmoid", "Softsign", "ScaledTanh"],
                             activation_alpha=[0.3, 0.8], activation_beta=[0.4, 1.3]),
    "gru-lbr-bidir-layout1": dict(op="GRU", direction="bidirectional", layout=1, init_h=True,
                                  linear_before_reset=1),
    "gru-lbr-seq-lens-reverse": dict(op="GRU", direction="reverse", lens=[4, 5, 2], linear_before_reset=1,
                                     init_h=True),
    "lstm-zero-length-row": dict(op="LSTM", direction="bidirectional", lens=[0, 5, 2], init_h=True, init_c=True),
    "gru-zero-length-row": dict(op="GRU", lens=[3, 0, 2], init_h=True),
    "gru-seq-lens-bidir": dict(op="GRU", direction="bidirectional", lens=[1, 5, 3], clip=1.5),
    "gru-activations": dict(op="GRU", direction="bidirectional", activations=["Sigmoid", "Relu", "HardSigmoid", "Elu"],
                            activation_alpha=[0.25, 0.9], activation_beta=[0.45]),
    "rnn-relu-bidir-only-yh": dict(op="RNN", direction="bidirectional", activations=["Relu", "Relu"],
                                   outputs=["", "Y_h"], init_h=True),
    "rnn-affine-leakyrelu": dict(op="RNN", direction="bidirectional", activations=["Affine", "LeakyRelu"],
                                 activation_alpha=[0.5, 0.2], activation_beta=[0.1]),
    "rnn-thresholdedrelu-softplus": dict(op="RNN", direction="bidirectional", hid=5,
                                         activations=["ThresholdedRelu", "Softplus"], activation_alpha=[0.3]),
    "rnn-sigmoid-layout1-seq-lens": dict(op="RNN", layout=1, activations=["Sigmoid"], lens=[2, 5, 4],
                                         outputs=["Y"]),
    "rnn-batch1-seq1": dict(op="RNN", seq=1, batch=1, init_h=True),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_against_onnxruntime(name, workdir):
    model, feeds, want = recurrent(**VARIANTS[name])
    got = compile_and_run(model, T, feeds, workdir)[0]
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"{name} output {j}")


@pytest.mark.parametrize("name", VARIANTS)
def test_reference_against_onnxruntime(name):
    """Our float64 numpy reference (the interpreter's) is the oracle's twin."""
    model, feeds, want = recurrent(**VARIANTS[name])
    got = interpret(import_model(model, "m"), [feeds["x"]])
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"{name} output {j}")


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_reference_against_onnx_reference_evaluator(op, direction):
    """onnx's own reference implementation (default activations; it takes no
    sequence_lens or clip)."""
    model, feeds, _ = recurrent(op, direction=direction, init_h=True, init_c=op == "LSTM", peep=op == "LSTM",
                                layout=1 if direction == "reverse" else 0)
    got = interpret(import_model(model, "m"), [feeds["x"]])
    want = ReferenceEvaluator(model).run(None, feeds)
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, what=f"{op} {direction} output {j}")


def test_c_path(workdir):
    from test_c_backend import run_c_path
    for name in ("lstm-bidir-all-inputs", "gru-seq-lens-bidir", "gru-lbr-bidir-layout1"):
        model, feeds, want = recurrent(**VARIANTS[name])
        got, _ = run_c_path(model, T, feeds, workdir, tag=name)
        for j, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, what=f"C path, {name} output {j}")


# -- refusals ---------------------------------------------------------------------------------
def compile_node(node, inits, x_shape=(5, 3, 4)):
    from toolchain.compiler import compile_onnx
    model = make_model([node], {"x": (F, x_shape), **{k: (v.dtype, v.shape) for k, v in inits.items()}},
                       {"Y": (F, None)}, opset=17)
    return compile_onnx(model, T)


def test_runtime_sequence_lens_is_refused():
    inits = {"W": np.zeros((1, 6, 4), F), "R": np.zeros((1, 6, 6), F), "L": np.zeros(3, np.int32)}
    node = helper.make_node("RNN", ["x", "W", "R", "", "L"], ["Y"], hidden_size=6)
    with pytest.raises(UnsupportedError, match="sequence_lens .* compile-time constant"):
        compile_node(node, inits)


def test_unknown_activation_is_refused():
    inits = {"W": np.zeros((1, 6, 4), F), "R": np.zeros((1, 6, 6), F)}
    node = helper.make_node("RNN", ["x", "W", "R"], ["Y"], hidden_size=6, activations=["Gelu"])
    with pytest.raises(UnsupportedError, match="activation 'Gelu' is not supported"):
        compile_node(node, inits)


def test_mismatched_weights_are_invalid():
    inits = {"W": np.zeros((1, 8, 4), F), "R": np.zeros((1, 6, 6), F)}
    node = helper.make_node("RNN", ["x", "W", "R"], ["Y"], hidden_size=6)
    with pytest.raises(CompileError, match="do not match"):
        compile_node(node, inits)


# -- PyTorch models ---------------------------------------------------------------------------
MODELS = ["lstm", "gru", "lstm_bidir"]


def model_feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(F)
            for i in model.graph.input if i.name not in inits}


@pytest.mark.parametrize("where", [T, "cortex-a76"])
@pytest.mark.parametrize("stem", MODELS)
def test_pytorch_model(stem, where, workdir):
    path = ROOT / "tests" / "models" / f"{stem}.onnx"
    model = onnx.load(str(path))
    res, _ = check_against_onnxruntime(path, model_feeds(model), where, workdir)
    ops = {n.op_type for n in model.graph.node}
    assert ops & {"LSTM", "GRU"}, ops


TORCH_VARIANTS = [  # (kind, layers, bidirectional, batch_first, nonlinearity)
    ("RNN", 2, True, True, "tanh"),
    ("RNN", 1, False, False, "relu"),
    ("GRU", 2, True, True, "tanh"),
    ("LSTM", 2, True, False, "tanh"),
]


@pytest.mark.slow  # exports live from PyTorch (not a test dependency; the slow CI step installs it)
@pytest.mark.parametrize("kind,layers,bidir,batch_first,nonlin", TORCH_VARIANTS,
                         ids=["-".join(map(str, v)) for v in TORCH_VARIANTS])
def test_pytorch_variant(kind, layers, bidir, batch_first, nonlin, workdir):
    pytest.importorskip("torch")
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    from export_recurrent import export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = export(kind, layers, bidir, batch_first, seed=3, nonlinearity=nonlin)
    check_against_onnxruntime(model, model_feeds(model, 1), T, workdir)


# -- the op workspace ---------------------------------------------------------------------------
def two_exps():
    nodes = [helper.make_node("Exp", ["x"], ["t"]), helper.make_node("Exp", ["t"], ["y"])]
    return import_model(make_model(nodes, {"x": (F, (300,))}, {"y": (F, (300,))}), "m")


def test_workspace_grows_the_arena_by_itself_and_is_shared(monkeypatch):
    plain = plan_memory(two_exps(), 64)
    monkeypatch.setattr(registry.get("Exp"), "workspace", lambda node: [TensorType("float32", (100,))],
                        raising=False)
    g = two_exps()
    plan = plan_memory(g, 64)
    assert plan.arena_size == plain.arena_size + 448  # 400 bytes, aligned to 64
    first, second = (plan.workspace_of(n) for n in g.nodes)
    assert first == second and len(first) == 1  # alive at different steps: the same bytes
    t = g.nodes[0].outputs[0]
    assert plan.of(t).index + 1200 <= first[0].index or first[0].index + 400 <= plan.of(t).index


def test_recurrent_workspace_in_the_manifest(workdir):
    """The LSTM's scratch (projection, gates, h, c) is in the arena the manifest reports."""
    model, feeds, _ = recurrent("LSTM", seq=7, batch=2, inp=4, hid=8)
    _, res, _ = compile_and_run(model, T, feeds, workdir)
    scratch = (7 * 2 * 32 + 2 * 32 + 2 * 8 + 2 * 8) * 4
    assert res.manifest["arena"]["size"] >= scratch
