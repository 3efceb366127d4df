"""The recurrent ops' short gate functions (kernel/fastmath.py sigmoid_gate, tanh_gate) and
their register tiles: accuracy against numpy in float64 over the whole useful range, special
values, and LSTM/GRU shapes that take the wide recurrent tile, against onnxruntime."""
import numpy as np
import pytest
from onnx import helper

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model

F = np.float32
SEQ, BATCH = 8, 2501  # 20008 points, one per (step, batch row)


def activation_rnn(act):
    """An RNN whose output is act(x) itself: input and hidden size 1, W = 1, R = 0, no bias."""
    return make_model([helper.make_node("RNN", ["x", "w", "r"], ["y"], hidden_size=1, activations=[act])],
                      {"x": (F, (SEQ, BATCH, 1))}, {"y": (F, (SEQ, 1, BATCH, 1))},
                      {"w": np.ones((1, 1, 1), F), "r": np.zeros((1, 1, 1), F)})


def sigmoid64(x):
    return 1 / (1 + np.exp(-x))


# activation: (inputs, float64 reference, max abs error, max error relative to |result|)
GATES = {
    "Sigmoid": (np.linspace(-30, 30, SEQ * BATCH), sigmoid64, 1.5e-7, 4e-7),
    "Tanh": (np.linspace(-12, 12, SEQ * BATCH), np.tanh, 3e-7, 5e-7),  # ~4 ulp of 1 near |x| = 7
}


@pytest.mark.parametrize("where", ["x86-64-v3", "cortex-a76"])
@pytest.mark.parametrize("act", list(GATES))
def test_gate_function_accuracy(act, where, workdir):
    x, ref, abs_bound, rel_bound = GATES[act]
    x = x.astype(F)
    got = compile_and_run(activation_rnn(act), where, {"x": x.reshape(SEQ, BATCH, 1)}, workdir)[0][0].reshape(-1)
    want = ref(x.astype(np.float64))
    err = np.abs(got.astype(np.float64) - want)
    worst = int(np.argmax(err))
    rel = err / np.maximum(np.abs(want), 1e-30)
    worst_rel = int(np.argmax(rel))
    print(f"{act} on {where}: max abs {err[worst]:.3g} at {x[worst]!r}, max rel {rel[worst_rel]:.3g} at {x[worst_rel]!r}")
    assert err[worst] <= abs_bound, f"{act}: abs error {err[worst]:.3g} at x={x[worst]!r}"
    assert rel[worst_rel] <= rel_bound, f"{act}: relative error {rel[worst_rel]:.3g} at x={x[worst_rel]!r}"


@pytest.mark.parametrize("where", ["x86-64-v3", "cortex-a76"])  # clamps: selects; fmax/fmin
def test_gate_functions_small_and_special_values(where, workdir):
    """tanh keeps its relative accuracy near 0 (odd rational, no 1 - 2/(e^2x + 1)); the
    limits come out right; NaN propagates (through the clamps too)."""
    x = np.zeros((SEQ, BATCH, 1), F)
    vals = np.array([1e-30, -1e-30, 1e-6, -3e-5, 1e-3, 0.0, 100.0, -100.0, 1e30, -1e30,
                     np.inf, -np.inf, np.nan], F)
    x.reshape(-1)[:vals.size] = vals
    with np.errstate(all="ignore"):
        for act, ref in (("Tanh", np.tanh), ("Sigmoid", sigmoid64)):
            got = compile_and_run(activation_rnn(act), where, {"x": x}, workdir)[0][0].reshape(-1)[:vals.size]
            want = ref(vals.astype(np.float64)).astype(F)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-37, equal_nan=True, err_msg=act)


def recurrent_model(op, hidden, inp, seq, batch, direction="forward", seed=0, **attrs):
    g = {"GRU": 3, "LSTM": 4}[op]
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)
    inits = {"w": rng.uniform(-s, s, (dirs, g * hidden, inp)).astype(F),
             "r": rng.uniform(-s, s, (dirs, g * hidden, hidden)).astype(F),
             "b": rng.uniform(-s, s, (dirs, 2 * g * hidden)).astype(F)}
    outs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    state = (dirs, batch, hidden)
    node = helper.make_node(op, ["x", "w", "r", "b", "", "h0"], outs, hidden_size=hidden, direction=direction,
                            **attrs)
    shapes = {"y": (F, (seq, dirs, batch, hidden)), "yh": (F, state), "yc": (F, state)}
    model = make_model([node], {"x": (F, (seq, batch, inp)), "h0": (F, state)},
                       {o: shapes[o] for o in outs}, inits)
    feeds = {"x": rng.standard_normal((seq, batch, inp)).astype(F),
             "h0": rng.standard_normal(state).astype(F) * 0.5}
    return model, feeds


# batch 1 (one row: the recurrent product is a matrix-vector product, in the wide tile),
# hidden sizes that are and are not a multiple of the tile, and a batch of 3
SHAPES = [("LSTM", 32, 16, 12, 1, "bidirectional", {}), ("LSTM", 40, 8, 6, 1, "forward", {}),
          ("GRU", 32, 16, 10, 1, "reverse", {"linear_before_reset": 1}),
          ("GRU", 24, 5, 7, 1, "forward", {}), ("LSTM", 20, 6, 5, 3, "forward", {})]


@pytest.mark.parametrize("op,hidden,inp,seq,batch,direction,attrs", SHAPES,
                         ids=[f"{s[0]}-h{s[1]}-b{s[4]}-{s[5]}" for s in SHAPES])
def test_recurrent_against_onnxruntime(op, hidden, inp, seq, batch, direction, attrs, workdir):
    model, feeds = recurrent_model(op, hidden, inp, seq, batch, direction, **attrs)
    check_against_onnxruntime(model, feeds, "x86-64-v3", workdir)


def test_lstm_on_cortex_a76_against_onnxruntime(workdir):
    model, feeds = recurrent_model("LSTM", 32, 16, 12, 1, "bidirectional", seed=1)
    check_against_onnxruntime(model, feeds, "cortex-a76", workdir)


def test_bad_activation_is_refused_naming_the_node(workdir):
    model = activation_rnn("Gelu")
    from toolchain.errors import CompileError
    with pytest.raises(CompileError, match="(?i)activation 'Gelu'"):
        compile_and_run(model, "x86-64-v3", {"x": np.zeros((SEQ, BATCH, 1), F)}, workdir)
