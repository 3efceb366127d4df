"""Reverse mode's options: --wrt inputs|params|all (which cotangents the pullback computes;
activity analysis skips the work only the other side needs) and --residuals save|recompute
(the residual buffer holds the forward values, or only the primal's inputs, the pullback then
re-running the forward graph). The compiled cotangents (x86-64-v3 in-process, one case on
cortex-a76 under QEMU) against directional central differences in float64 of an independent
numpy MLP and of the float64 reference interpreter on a small CNN; each mode against `all` /
`save`; the header's macros; the refusals."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from autodiff_helpers import initializers, onnx_model, pullback64, run_driver_on_a76, set_params
from autodiff_helpers import cnn as shared_cnn
from autodiff_helpers import mlp as shared_mlp
from helpers import ROOT
from toolchain.errors import InvalidModelError
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret

EPS = 1e-6


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def mlp():
    return shared_mlp(21)


def _mlp_numpy(xs, p):
    """The MLP written out in float64 numpy (no edgec code)."""
    h = xs[0] @ p["W1"].T + p["b1"]
    z = np.maximum(h, 0) @ p["W2"].T + p["b2"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cnn():
    return shared_cnn(22)


def _interpreted(m):
    """The float64 reference interpreter on the untouched imported graph, parameters by name."""
    ref = import_model(m)

    def f(xs, p):
        set_params(ref, p)
        return interpret(ref, xs, float64=True)[0]
    return f


MODELS = {"mlp": (mlp, lambda m: _mlp_numpy), "cnn": (cnn, _interpreted)}
MODES = [("all", "save"), ("inputs", "save"), ("params", "save"), ("all", "recompute")]


@pytest.fixture(scope="module")
def runs():
    """model -> {(wrt, residuals): (manifest, gin, gpar, outs)}, each build run on the same
    inputs and output cotangent, the arena filled with NaN between primal and pullback."""
    from toolchain import compile_grad
    got = {}
    for key, (make, _) in MODELS.items():
        m = make()
        for wrt, res in MODES:
            cg = compile_grad(m, wrt=wrt, residuals=res)
            rng = np.random.default_rng(7)  # the same inputs for every mode
            xs = [rng.standard_normal(s).astype(np.float32) for _, _, s in cg.inputs]
            ct = [np.random.default_rng(8).standard_normal(s).astype(np.float32) for _, _, s in cg.output_cotangents]
            outs, residuals = cg.primal(*xs)
            assert residuals.nbytes == cg.manifest["grad"]["residuals"]["size"]
            cg.arena[...] = 0xFF
            gin, gpar = cg.pullback(residuals, *ct)
            got.setdefault(key, {"m": m, "xs": xs, "ct": ct})[(wrt, res)] = (cg.manifest, gin, gpar, outs)
    return got


def _check_fd(f, xs, params, ct, gin, gpar, names, rng, directions=2):
    """Each cotangent against the central difference of <ct, f(xs, params)> in float64 along
    random directions."""
    xs = [x.astype(np.float64) for x in xs]
    ct = ct.astype(np.float64)

    def obj(xs_, ps):
        return float((f(xs_, ps) * ct).sum())

    targets = [("input", 0, g) for g in gin] + [("param", n, g) for n, g in zip(names, gpar)]
    for kind, key, grad in targets:
        base = xs[key] if kind == "input" else params[key]
        assert grad.shape == base.shape
        for _ in range(directions):
            d = rng.standard_normal(base.shape)

            def at(s):
                if kind == "input":
                    return obj([xs[0] + s * EPS * d], params)
                return obj(xs, {**params, key: params[key] + s * EPS * d})
            fd = (at(1) - at(-1)) / (2 * EPS)
            an = float((grad.astype(np.float64) * d).sum())
            scale = max(1.0, float(np.abs(grad * d).sum()))
            assert abs(fd - an) <= 1e-3 * scale, f"{kind} {key}: finite difference {fd}, compiled {an}"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_wrt_modes_compute_their_side_and_skip_the_rest(model, runs):
    r = runs[model]
    make, reference = MODELS[model]
    f = reference(r["m"])
    params = initializers(r["m"])
    man_all, gin_all, gpar_all, outs_all = r[("all", "save")]
    names = [p["name"] for p in man_all["grad"]["params"]]
    assert names == list(params) and len(gin_all) == 1
    _check_fd(f, r["xs"], params, r["ct"][0], gin_all, gpar_all, names, np.random.default_rng(1))
    np.testing.assert_allclose(outs_all[0], f([x.astype(np.float64) for x in r["xs"]], params), rtol=1e-4, atol=1e-5)
    macs_all = man_all["grad"]["macs"]["pullback"]

    man, gin, gpar, _ = r[("inputs", "save")]
    g = man["grad"]
    assert g["wrt"] == "inputs" and g["params"] == [] and gpar == []  # the table was passed as NULL
    assert [t["name"] for t in g["input_cotangents"]] == ["x"]
    np.testing.assert_allclose(gin[0], gin_all[0], rtol=1e-5, atol=1e-6 * np.abs(gin_all[0]).max())
    assert g["macs"]["pullback"] < macs_all
    assert g["residuals"]["size"] <= man_all["grad"]["residuals"]["size"]

    man, gin, gpar, _ = r[("params", "save")]
    g = man["grad"]
    assert g["wrt"] == "params" and g["input_cotangents"] == [] and gin == []
    assert [p["name"] for p in g["params"]] == names
    for got, want in zip(gpar, gpar_all):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
    assert g["macs"]["pullback"] < macs_all


@pytest.mark.parametrize("model", sorted(MODELS))
def test_recompute_matches_save_with_fewer_residual_bytes(model, runs):
    r = runs[model]
    save, gin_s, gpar_s, outs_s = r[("all", "save")]
    rec, gin_r, gpar_r, outs_r = r[("all", "recompute")]
    gs, gr = save["grad"], rec["grad"]
    for got, want in zip(outs_r + gin_r + gpar_r, outs_s + gin_s + gpar_s):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
    assert gr["residuals"]["mode"] == "recompute" and gs["residuals"]["mode"] == "save"
    # the buffer holds the primal's input alone; both manifests give both sizes, equal
    assert [(v["input"], v["input_name"]) for v in gr["residuals"]["values"]] == [(0, "x")]
    align = gr["residuals"]["align"]
    assert gr["residuals"]["values"][0]["bytes"] == 4 * r["xs"][0].size
    assert gr["residuals"]["size"] == -(-4 * r["xs"][0].size // align) * align
    assert gs["residuals"]["sizes"] == gr["residuals"]["sizes"] == {"save": gs["residuals"]["size"],
                                                                     "recompute": gr["residuals"]["size"]}
    assert gr["residuals"]["size"] < gs["residuals"]["size"]
    # the pullback does the forward work again (more MACs), in an arena at least as large (the
    # recomputed values live there; the save pullback's own peak may be as high: the CNN's
    # weight gradients by tap hold a channels-last copy of the input)
    assert gr["macs"]["pullback"] > gs["macs"]["pullback"]
    assert gr["arenas"]["pullback"]["size"] >= gs["arenas"]["pullback"]["size"]
    assert rec["arena"]["size"] == max(a["size"] for a in gr["arenas"].values())


def _edgec(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_header_macros(tmp_path):
    """The header's figures (read back by a C program) are the manifest's, and it says which
    cotangent table may be NULL."""
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    figures = {}
    for wrt, res in (("inputs", "recompute"), ("params", "save")):
        out = tmp_path / f"out-{wrt}"
        proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "mlp.onnx"), "--name", "net",
                      "--out", str(out), "--grad", "reverse", "--wrt", wrt, "--residuals", res)
        assert proc.returncode == 0, proc.stderr
        man = json.loads((out / "net.json").read_text())
        g = man["grad"]
        assert f"residuals {res} (--residuals save {g['residuals']['sizes']['save']} / recompute " \
               f"{g['residuals']['sizes']['recompute']} bytes), wrt {wrt}" in proc.stdout
        header = (out / "net.h").read_text()
        table = "param_cotangents" if wrt == "inputs" else "input_cotangents"
        assert f"never reads {table}, which may be NULL" in header
        prog = tmp_path / f"p-{wrt}.c"
        prog.write_text('#include <stdio.h>\n#include "net.h"\nint main(void) {\n'
                        '  printf("%u %u %u %u %u %u\\n", NET_RESIDUALS_SIZE, NET_NUM_PARAMS, NET_NUM_INPUT_COTANGENTS,\n'
                        '         NET_PRIMAL_ARENA_SIZE, NET_PULLBACK_ARENA_SIZE, NET_ARENA_SIZE);\n'
                        '  return 0;\n}\n')
        exe = tmp_path / f"p-{wrt}"
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{out}", str(prog),
                        "-o", str(exe)], check=True)
        figures[wrt] = list(map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                                    check=True).stdout.split()))
        assert figures[wrt] == [g["residuals"]["size"], len(g["params"]), len(g["input_cotangents"]),
                                g["arenas"]["primal"]["size"], g["arenas"]["pullback"]["size"], man["arena"]["size"]]
    assert figures["inputs"][1:3] == [0, 1] and figures["params"][1:3] == [4, 0]
    assert figures["inputs"][0] == 128  # recompute: the input x alone (96 bytes), in 64-byte units


def test_bad_values_refused(tmp_path):
    from toolchain import compile_grad
    from toolchain.compiler import build
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    for flag, bad in (("--wrt", "outputs"), ("--residuals", "keep")):
        proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "mlp.onnx"), "--out",
                      str(tmp_path / "o"), "--grad", "reverse", flag, bad)
        assert proc.returncode == 2 and flag in proc.stderr and bad in proc.stderr
    proc = _edgec("build", "--target", "x86-64-v3", "--model", str(tmp_path / "mlp.onnx"), "--out",
                  str(tmp_path / "o"), "--wrt", "params")
    assert proc.returncode == 1 and "options of --grad reverse" in proc.stderr and not (tmp_path / "o").exists()
    with pytest.raises(InvalidModelError, match="--wrt must be one of all, inputs, params, got 'weights'"):
        build(tmp_path / "mlp.onnx", "x86-64-v3", out=tmp_path / "o", grad="reverse", wrt="weights")
    with pytest.raises(InvalidModelError, match="--residuals must be one of save, recompute, got 'none'"):
        compile_grad(mlp(), residuals="none")
    with pytest.raises(InvalidModelError, match="options of --grad reverse"):
        compile_grad(mlp(), grad="forward", wrt="inputs")
    relu = onnx_model([node("Relu", ["a"])], {"a": (2, 3)})
    with pytest.raises(InvalidModelError, match="--wrt params: the model has no float initializer"):
        compile_grad(relu, wrt="params")
    assert not (tmp_path / "o").exists()


def _null_driver(manifest) -> str:
    """test_autodiff's driver, the input cotangent table passed as NULL (--wrt params)."""
    from test_autodiff import _driver
    src = _driver(manifest)
    call = "model_pullback(res, cots, gin, gpar, arena)"
    assert call in src
    return src.replace(call, "model_pullback(res, cots, NULL, gpar, arena)")


def test_recompute_wrt_params_on_cortex_a76(tmp_path):
    """--residuals recompute --wrt params as shipped for cortex-a76 (qemu-user): the arena is
    filled with NaN between the two calls, input_cotangents is NULL; the outputs and parameter
    cotangents against the float64 pullback, whose cotangents test_autodiff checks against
    finite differences."""
    m = cnn()
    rng = np.random.default_rng(5)
    got = {}

    def feeds(man):
        xs = [rng.standard_normal(t["shape"]).astype(np.float32) for t in man["inputs"]]
        _, got["ys"], _, cts, grads = pullback64(m, [x.astype(np.float64) for x in xs])
        got["grads"] = grads[1:]  # the parameters' (the input's comes first)
        return xs + [c.astype(np.float32) for c in cts]

    man, flat = run_driver_on_a76(m, tmp_path, "object", "reverse", _null_driver, feeds, wrt="params",
                                  residuals="recompute")
    assert man["grad"]["input_cotangents"] == [] and man["grad"]["residuals"]["mode"] == "recompute"
    start = 0
    for want in list(got["ys"]) + list(got["grads"]):
        part = flat[start:start + want.size].reshape(want.shape)
        start += want.size
        np.testing.assert_allclose(part, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert start == flat.size
