"""The on-device training contract: --trainable (a glob over initializer names; the others
stay read-only constants), --optimizer momentum (heavy ball, velocities in the caller's
opt_state) and <name>_run_params (inference with the caller's trained parameters).

References are float64 numpy written out here by hand (no edgec code): a frozen backbone
computed once, the head's gradient of the MSE loss, and the SGD / momentum updates."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from autodiff_helpers import onnx_model
from helpers import ROOT

LR = 0.05


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, ins, list(outs), **attrs)


def _weights(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def backbone_head(seed=21):
    """x -> (x * backbone.scale) -> Gemm(backbone.W, backbone.b) -> Relu -> Gemm(head.W, head.b) -> y."""
    w = _weights(seed)
    inits = {"backbone.scale": (1.0 + 0.25 * w(8)).astype(np.float32), "backbone.W": w(16, 8),
             "backbone.b": w(16), "head.W": 0.5 * w(5, 16), "head.b": w(5)}
    m = onnx_model([node("Mul", ["x", "backbone.scale"], ["s"]),
                    node("Gemm", ["s", "backbone.W", "backbone.b"], ["h"], transB=1), node("Relu", ["h"], ["r"]),
                    node("Gemm", ["r", "head.W", "head.b"], ["y"], transB=1)], {"x": (4, 8)}, inits)
    return m, {k: v.astype(np.float32) for k, v in inits.items()}


def _features(P, x):
    """The backbone in float64: relu((x * scale) W^T + b)."""
    return np.maximum((x * P["backbone.scale"]) @ P["backbone.W"].T + P["backbone.b"], 0)


def _infer(P, x):
    return _features(P, x) @ P["head.W"].T + P["head.b"]


def numpy_steps(inits, x, target, lr, steps, trained, mu=None):
    """`steps` training steps of backbone_head on the MSE loss in float64, only the names in
    `trained` updated: SGD (mu None) or heavy-ball momentum v = mu v + g, p -= lr v.
    Returns (losses, parameters, velocities)."""
    P = {k: v.astype(np.float64) for k, v in inits.items()}
    V = {k: np.zeros_like(P[k]) for k in trained}
    x, target = x.astype(np.float64), target.astype(np.float64)
    losses = []
    for _ in range(steps):
        s = x * P["backbone.scale"]
        h = s @ P["backbone.W"].T + P["backbone.b"]
        r = np.maximum(h, 0)
        y = r @ P["head.W"].T + P["head.b"]
        losses.append(np.mean((y - target) ** 2))
        dy = 2 * (y - target) / y.size
        dr = dy @ P["head.W"]
        dh = dr * (h > 0)
        grads = {"head.W": dy.T @ r, "head.b": dy.sum(0), "backbone.W": dh.T @ s, "backbone.b": dh.sum(0),
                 "backbone.scale": ((dh @ P["backbone.W"]) * x).sum(0)}
        for k in trained:
            if mu is None:
                P[k] = P[k] - lr * grads[k]
            else:
                V[k] = mu * V[k] + grads[k]
                P[k] = P[k] - lr * V[k]
    return losses, P, V


def _data(seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)


def _readonly_bytes(obj: bytes) -> bytes:
    from elftools.elf.elffile import ELFFile
    elf = ELFFile(io.BytesIO(obj))
    return b"".join(s.data() for s in elf.iter_sections()
                    if s["sh_flags"] & 0x2 and not s["sh_flags"] & 0x1 and s["sh_type"] == "SHT_PROGBITS"
                    and not s["sh_flags"] & 0x4)  # allocated, not writable, not code


def test_frozen_backbone_trains_only_the_head():
    """--trainable 'head.*': only head.W and head.b are in the params buffer; the backbone
    stays constant (its scale bit-identical in the object's read-only data), no gradient of
    it is computed, 5 SGD steps match numpy, and run_params after them equals the numpy
    inference with the updated head and the original backbone."""
    from toolchain import compile_train
    m, inits = backbone_head()
    ct = compile_train(m, trainable="head.*")
    man = ct.manifest["train"]
    assert [p["name"] for p in man["params"]] == ["head.W", "head.b"] and man["trainable"] == "head.*"
    assert man["optimizer"] == "sgd" and man["opt_state_size"] == 0 and ct.opt_state_init() is None
    assert man["params_size"] == 384  # 320 + 20 bytes, each at a 64-byte offset
    assert inits["backbone.scale"].tobytes() in _readonly_bytes(ct.files["model.o"])
    everything = compile_train(m)  # every initializer trained: the backbone's gradients cost MACs
    assert ct.manifest["macs"] < everything.manifest["macs"]
    assert len(everything.manifest["train"]["params"]) == 5

    params = ct.params_init()
    for i, name in enumerate(["head.W", "head.b"]):
        np.testing.assert_array_equal(ct.param(params, i), inits[name])
    x, target = _data()
    losses = [ct.train_step(params, [x], [target], LR) for _ in range(5)]
    want_losses, P, _ = numpy_steps(inits, x, target, LR, 5, ["head.W", "head.b"])
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    assert losses[-1] < losses[0]
    for i, name in enumerate(["head.W", "head.b"]):
        np.testing.assert_allclose(ct.param(params, i), P[name], rtol=1e-4, atol=1e-5)
    assert not np.allclose(ct.param(params, 0), inits["head.W"])  # it did move

    x2 = np.random.default_rng(8).standard_normal((4, 8)).astype(np.float32)
    (y,) = ct.run_params(params, [x2])
    np.testing.assert_allclose(y, _infer(P, x2.astype(np.float64)), rtol=1e-4, atol=1e-4)
    # the original head, through the same entry: the buffer is what decides
    (y0,) = ct.run_params(ct.params_init(), [x2])
    np.testing.assert_allclose(y0, _infer({k: v.astype(np.float64) for k, v in inits.items()}, x2), rtol=1e-4,
                               atol=1e-4)


def test_momentum_five_steps_match_numpy():
    """--optimizer momentum --momentum 0.8, every initializer trained: losses, parameters and
    the velocities in opt_state after 5 steps against numpy's heavy ball; run_params after
    them equals numpy's inference; a NULL opt_state is refused (ERR_OPT_STATE = 3) with
    nothing written."""
    from toolchain import compile_train
    from toolchain.errors import CompileError
    m, inits = backbone_head(22)
    ct = compile_train(m, optimizer="momentum", momentum=0.8)
    man = ct.manifest["train"]
    names = [p["name"] for p in man["params"]]
    assert names == ["backbone.scale", "backbone.W", "backbone.b", "head.W", "head.b"]
    assert man["momentum"] == 0.8 and man["opt_state_size"] == man["params_size"]
    assert "v = momentum * v + dloss/dp; p -= learning_rate * v" in man["update"]
    params, state = ct.params_init(), ct.opt_state_init()
    assert state.size == man["opt_state_size"] and not state.any()
    x, target = _data(4)
    before = params.copy()
    with pytest.raises(CompileError, match="model_train_step returned 3"):
        ct.train_step(params, [x], [target], LR, None)
    np.testing.assert_array_equal(params, before)
    losses = [ct.train_step(params, [x], [target], LR, state) for _ in range(5)]
    want_losses, P, V = numpy_steps(inits, x, target, LR, 5, names, mu=0.8)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for i, name in enumerate(names):
        np.testing.assert_allclose(ct.param(params, i), P[name], rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(ct.param(state, i), V[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # plain SGD would have ended elsewhere: the velocity is used
    _, sgd, _ = numpy_steps(inits, x, target, LR, 5, names)
    assert not np.allclose(ct.param(params, 3), sgd["head.W"], rtol=1e-3, atol=1e-4)
    (y,) = ct.run_params(params, [x])
    np.testing.assert_allclose(y, _infer(P, x.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_bias_only_momentum_default_coefficient():
    """--trainable '*.b' with --optimizer momentum (default mu 0.9): only the biases train."""
    from toolchain import compile_train
    m, inits = backbone_head(23)
    ct = compile_train(m, trainable="*.b", optimizer="momentum")
    names = [p["name"] for p in ct.manifest["train"]["params"]]
    assert names == ["backbone.b", "head.b"] and ct.manifest["train"]["momentum"] == 0.9
    params, state = ct.params_init(), ct.opt_state_init()
    x, target = _data(5)
    losses = [ct.train_step(params, [x], [target], LR, state) for _ in range(5)]
    want_losses, P, V = numpy_steps(inits, x, target, LR, 5, names, mu=0.9)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for i, name in enumerate(names):
        np.testing.assert_allclose(ct.param(params, i), P[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ct.param(state, i), V[name], rtol=1e-4, atol=1e-5)


def _edgec(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, cwd=ROOT)


def test_refusals(tmp_path):
    """A --trainable matching nothing names the pattern and some initializers; the training
    options outside --train, an unknown optimizer and a bad coefficient are refused."""
    from toolchain.compiler import build
    from toolchain.errors import CompileError
    m, _ = backbone_head()
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
                  "--train", "--trainable", "*fc*")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        "edgec: error: --trainable '*fc*' matches no initializer of the model (its initializers: "
        "'backbone.scale', 'backbone.W', 'backbone.b', 'head.W', 'head.b')"]
    cases = [(dict(train="mse", trainable="Head.*"), "--trainable 'Head.*' matches no initializer"),
             (dict(trainable="head.*"), "options of --train builds"),
             (dict(train="mse", optimizer="adam"), "--optimizer must be one of sgd, momentum, got 'adam'"),
             (dict(train="mse", momentum=0.5), "--optimizer sgd takes none"),
             (dict(train="mse", optimizer="momentum", momentum=1.0), r"--momentum must be in \[0, 1\), got 1.0")]
    for kw, msg in cases:
        with pytest.raises(CompileError, match=msg):
            build(tmp_path / "m.onnx", "x86-64-v3", "model", out, **kw)
        assert not out.exists()
    # matching only an initializer that is not a float the model reads
    shape = onnx_model([node("Reshape", ["x", "shape"])], {"x": (2, 3)})
    shape.graph.initializer.append(onnx.numpy_helper.from_array(np.array([3, 2], np.int64), "shape"))
    onnx.save(shape, tmp_path / "s.onnx")
    with pytest.raises(CompileError, match=r"--trainable 'sh\*' matches no float initializer the model reads"):
        build(tmp_path / "s.onnx", "x86-64-v3", "model", out, train="mse", trainable="sh*")


def test_cli_header_and_manifest(tmp_path):
    """edgec build --train --trainable --optimizer momentum --momentum: the issue's prototypes
    and macros in the header (read back by a C program against the manifest's figures), the
    formula in header and manifest, and the three exports."""
    m, _ = backbone_head()
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
                  "--train", "--trainable", "head.*", "--optimizer", "momentum", "--momentum", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert ("train     mse loss, momentum (momentum 0.5): params buffer 384 bytes (2 params), opt state 384 bytes"
            in proc.stdout)
    man = json.loads((out / "model.json").read_text())
    t = man["train"]
    assert (t["optimizer"], t["momentum"], t["trainable"], t["opt_state_size"]) == ("momentum", 0.5, "head.*", 384)
    assert [(p["name"], p["offset"], p["shape"]) for p in t["params"]] == [("head.W", 0, [5, 16]), ("head.b", 320, [5])]
    assert man["arena"]["size"] == max(a["size"] for a in t["arenas"].values())
    header = (out / "model.h").read_text()
    for line in ["void model_params_init(void *params);",
                 "int model_run_params(const void *params, const void *const *inputs, void *const *outputs, "
                 "void *arena);",
                 "int model_train_step(void *params, void *opt_state, const void *const *inputs, "
                 "const void *const *targets, float learning_rate, float *loss, void *arena);",
                 "v = mu * v + dloss/dp; p -= learning_rate * v.", "zero-initialized by the caller"]:
        assert line in header, line
    prog = tmp_path / "p.c"
    prog.write_text('#include <stdio.h>\n#include "model.h"\nint main(void) {\n'
                    '  printf("%u %u %u %u %d %u\\n", MODEL_PARAMS_SIZE, MODEL_OPT_STATE_SIZE, MODEL_TRAIN_ARENA_SIZE,\n'
                    '         MODEL_PARAM1_OFFSET, MODEL_ERR_OPT_STATE, MODEL_NUM_PARAMS);\n  return 0;\n}\n')
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{out}", str(prog),
                    str(out / "model.o"), "-o", str(exe)], check=True)
    figures = list(map(int, subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()))
    assert figures == [384, 384, man["arena"]["size"], 320, 3, 2]
    syms = subprocess.run(["nm", "-g", "--defined-only", str(out / "model.o")], capture_output=True, text=True,
                          check=True).stdout.split()
    assert sorted(s for s in syms if s.startswith("model_")) == ["model_params_init", "model_run_params",
                                                                 "model_train_step"]
    assert set(man["stack_bytes"]) == {"model_params_init", "model_run_params", "model_train_step"}


def _a76_driver(manifest) -> str:
    """Reads x and the target, runs params_init, 5 momentum steps (zeroed opt_state), a step
    with a NULL opt_state (must return ERR_OPT_STATE and write nothing) and run_params;
    writes the 5 losses, the refusal's code, the parameters, the velocities and the output."""
    t = manifest["train"]
    xb, tb, yb = manifest["inputs"][0]["bytes"], t["targets"][0]["bytes"], manifest["outputs"][0]["bytes"]
    dump = [f"    fwrite(params + {p['offset']}, 1, {p['bytes']}, f);" for p in t["params"]]
    dump += [f"    fwrite(state + {p['offset']}, 1, {p['bytes']}, f);" for p in t["params"]]
    return "\n".join([
        "#include <stdio.h>", "#include <string.h>", '#include "model.h"',
        "static _Alignas(MODEL_ARENA_ALIGN) unsigned char arena[MODEL_TRAIN_ARENA_SIZE];",
        "static _Alignas(MODEL_PARAMS_ALIGN) unsigned char params[MODEL_PARAMS_SIZE];",
        "static _Alignas(MODEL_PARAMS_ALIGN) unsigned char state[MODEL_OPT_STATE_SIZE];",
        "static _Alignas(MODEL_PARAMS_ALIGN) unsigned char copy[MODEL_PARAMS_SIZE];",
        f"static _Alignas(16) unsigned char x[{xb}], tg[{tb}], y[{yb}];",
        "int main(int argc, char **argv) {",
        "    float losses[6];",
        "    FILE *f = fopen(argv[1], \"rb\");", "    if (!f || argc < 3) return 2;",
        f"    if (fread(x, 1, {xb}, f) != {xb} || fread(tg, 1, {tb}, f) != {tb}) return 2;",
        "    fclose(f);",
        "    model_params_init(params);", "    memset(state, 0, sizeof state);",
        "    const void *ins[] = {x};", "    const void *tgs[] = {tg};", "    void *outs[] = {y};",
        f"    for (int k = 0; k < 5; k++) if (model_train_step(params, state, ins, tgs, {LR}f, &losses[k], arena)) "
        "return 4;",
        "    memcpy(copy, params, sizeof params);",
        f"    losses[5] = (float)model_train_step(params, NULL, ins, tgs, {LR}f, &losses[0] + 5, arena);",
        "    if (memcmp(copy, params, sizeof params)) return 5;",
        "    if (model_run_params(params, ins, outs, arena)) return 6;",
        "    f = fopen(argv[2], \"wb\");", "    if (!f) return 2;",
        "    fwrite(losses, sizeof(float), 6, f);", *dump, f"    fwrite(y, 1, {yb}, f);",
        "    fclose(f);", "    return 0;", "}", ""])


@pytest.mark.parametrize("emit", ["object", "c"])
def test_momentum_head_on_cortex_a76_under_qemu(tmp_path, emit):
    """The cortex-a76 library (object path, and the portable C path's model.c built by zig cc)
    in a C program under qemu-user: a frozen backbone, the head trained by 5 momentum steps,
    a NULL opt_state refused (ERR_OPT_STATE, params untouched), then run_params; against
    numpy in float64."""
    from autodiff_helpers import run_driver_on_a76
    m, inits = backbone_head(24)
    x, target = _data(6)
    man, flat = run_driver_on_a76(m, tmp_path, emit, None, _a76_driver, lambda man: [x, target],
                                  train="mse", trainable="head.*", optimizer="momentum")
    assert (tmp_path / "out" / "model.c").is_file() == (emit == "c")
    names = [p["name"] for p in man["train"]["params"]]
    assert names == ["head.W", "head.b"]
    want_losses, P, V = numpy_steps(inits, x, target, LR, 5, names, mu=0.9)
    np.testing.assert_allclose(flat[:5], want_losses, rtol=1e-4)
    assert flat[5] == 3  # MODEL_ERR_OPT_STATE for the NULL opt_state
    start = 6
    for d in (P, V):
        for name in names:
            n = d[name].size
            np.testing.assert_allclose(flat[start:start + n].reshape(d[name].shape), d[name], rtol=1e-4, atol=1e-5)
            start += n
    np.testing.assert_allclose(flat[start:].reshape(4, 5), _infer(P, x.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_kws_classifier_head_momentum_against_onnxruntime_features():
    """The bundled keyword spotter, --trainable 'fc.*' (the convolutional backbone frozen):
    the features before the classifier come from onnxruntime on the model; from them, 3
    momentum steps of the MSE loss through the Softmax in float64 numpy are the reference
    for the losses, fc.weight/fc.bias, and run_params afterwards."""
    from onnx import numpy_helper

    from helpers import onnxruntime_outputs
    from toolchain import compile_train
    m = onnx.load(ROOT / "models" / "kws_dscnn.onnx")
    ct = compile_train(m, trainable="fc.*", optimizer="momentum")
    assert [p["name"] for p in ct.manifest["train"]["params"]] == ["fc.weight", "fc.bias"]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(ct.inputs[0][2]).astype(np.float32)
    target = rng.dirichlet(np.ones(12), size=1).astype(np.float32)
    probe = onnx.load(ROOT / "models" / "kws_dscnn.onnx")
    probe.graph.output.append(onnx.helper.make_tensor_value_info("/Flatten_output_0", onnx.TensorProto.FLOAT, [1, 64]))
    feats = onnxruntime_outputs(probe, {ct.inputs[0][0]: x})[1].astype(np.float64)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    W, b = inits["fc.weight"], inits["fc.bias"]
    VW, Vb = np.zeros_like(W), np.zeros_like(b)

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    params, state = ct.params_init(), ct.opt_state_init()
    lr, want = 2.0, []
    for _ in range(3):
        y = softmax(feats @ W.T + b)
        want.append(np.mean((y - target) ** 2))
        dy = 2 * (y - target) / y.size
        dz = y * (dy - (dy * y).sum(1, keepdims=True))
        VW, Vb = 0.9 * VW + dz.T @ feats, 0.9 * Vb + dz.sum(0)
        W, b = W - lr * VW, b - lr * Vb
    losses = [ct.train_step(params, [x], [target], lr, state) for _ in range(3)]
    np.testing.assert_allclose(losses, want, rtol=1e-4)
    np.testing.assert_allclose(ct.param(params, 0), W, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ct.param(params, 1), b, rtol=1e-4, atol=1e-6)
    (y,) = ct.run_params(params, [x])
    np.testing.assert_allclose(y, softmax(feats @ W.T + b), rtol=1e-4, atol=1e-6)
    assert np.abs(y - onnxruntime_outputs(m, {ct.inputs[0][0]: x})[0]).max() > 1e-4  # training changed it


def test_matched_initializers_that_stay_constant_are_listed(tmp_path):
    """A pattern also matching an int64 initializer (a Reshape's shape): the float one
    trains, the other is listed in the manifest as untrained and noted by the CLI."""
    w = _weights(25)
    m = onnx_model([node("MatMul", ["x", "head.W"], ["m"]), node("Reshape", ["m", "head.shape"])], {"x": (2, 3)},
                   {"head.W": w(3, 4)})
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([4, 2], np.int64), "head.shape"))
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "m.onnx"), "--out", str(out),
                  "--train", "--trainable", "head.*")
    assert proc.returncode == 0, proc.stderr
    assert ("note      --trainable 'head.*' also matched 1 initializer(s) that stay constant (not float32, read by "
            "no node, or folded at import): head.shape") in proc.stdout
    t = json.loads((out / "model.json").read_text())["train"]
    assert [p["name"] for p in t["params"]] == ["head.W"] and t["untrained"] == ["head.shape"]
