"""Building small ONNX models and checking derivatives against central finite differences
of the float64 reference (the untouched imported graph run by the interpreter in float64,
parameters substituted by name): reverse mode (check_vjp) and forward mode (check_jvp)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret
from toolchain.passes.autodiff import reverse
from toolchain.passes.forward import forward

EPS = 1e-6  # central difference step (float64)
RTOL = 1e-6  # |fd - vjp| <= RTOL * scale: truncation ~eps^2, rounding ~1e-16/eps


def onnx_model(nodes, inputs: dict, inits: dict | None = None, outputs=("y",), opset=17):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # declared output shapes from onnx's own shape inference (the front end requires them)
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.output}
    for i, o in enumerate(m.graph.output):
        if inferred.get(o.name) is not None and inferred[o.name].type.tensor_type.HasField("shape"):
            m.graph.output[i].CopyFrom(inferred[o.name])
    return m


def initializers(m) -> dict:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer
            if t.data_type == TensorProto.FLOAT}


def set_params(g, values: dict):
    """Every constant of the imported graph holding an initializer (or its transpose, which
    the importer stores for Gemm's transB as '<name>_t') takes the float64 value."""
    for node in g.nodes:
        for v in node.inputs:
            if v is None or not v.is_const:
                continue
            if v.name in values:
                v.data = values[v.name]
            elif v.name.endswith("_t") and v.name[:-2] in values:
                v.data = np.ascontiguousarray(values[v.name[:-2]].T)


def random_inputs(g, rng, positive=False):
    return [rng.uniform(0.5, 2.0, v.type.shape) if positive else rng.standard_normal(v.type.shape)
            for v in g.inputs]


def pullback64(m, xs, cts_seed=1):
    """(program, outputs, residuals, cotangents, grads) with everything in float64."""
    prog = reverse(import_model(m), list(initializers(m)))
    inits = initializers(m)
    params = [inits[p.name] for p in prog.params]
    outs = interpret(prog.primal, list(xs) + params, float64=True)
    ys, res = outs[:prog.n_outputs], outs[prog.n_outputs:]
    rng = np.random.default_rng(cts_seed)
    cts = [rng.standard_normal(ys[i].shape) for i in prog.cot_outputs]
    used = [inits[p.name] for p in prog.params if p.pullback is not None]
    grads = interpret(prog.pullback, res + cts + used, float64=True)
    return prog, ys, res, cts, grads


def check_vjp(m, seed=0, positive=False, directions=3, joint=False, eps=EPS):
    """Each cotangent against directional central differences of <ct, f(x, params)>, per
    tensor, or (joint) along random directions through all inputs and parameters at once."""
    rng = np.random.default_rng(seed)
    ref = import_model(m)
    xs = random_inputs(ref, rng, positive)
    prog, ys, _, cts, grads = pullback64(m, xs)
    inits = initializers(m)

    def objective(xs_, params):
        set_params(ref, params)
        out = interpret(ref, xs_, float64=True)
        return sum(float((out[i] * c).sum()) for i, c in zip(prog.cot_outputs, cts))

    set_params(ref, inits)
    for y, r in zip(ys, interpret(ref, xs, float64=True)):
        np.testing.assert_allclose(y, r, rtol=1e-12, atol=1e-12)  # the primal computes the model
    targets = [("input", i) for i in prog.wrt_inputs] + [("param", p.name) for p in prog.params]
    assert len(grads) == len(targets)
    if joint:
        for _ in range(directions):
            ds = [rng.standard_normal(gr.shape) for gr in grads]

            def moved(sign):
                xs_, ps = list(xs), dict(inits)
                for (kind, key), d in zip(targets, ds):
                    if kind == "input":
                        xs_[key] = xs[key] + sign * eps * d
                    else:
                        ps[key] = inits[key] + sign * eps * d
                return objective(xs_, ps)

            fd = (moved(1) - moved(-1)) / (2 * eps)
            an = sum(float((gr * d).sum()) for gr, d in zip(grads, ds))
            scale = max(1.0, sum(float(np.abs(gr * d).sum()) for gr, d in zip(grads, ds)))
            assert abs(fd - an) <= RTOL * scale, f"joint direction: finite difference {fd}, vjp {an}"
        return prog
    for (kind, key), grad in zip(targets, grads):
        base = xs[key] if kind == "input" else inits[key]
        assert grad.shape == base.shape, (key, grad.shape, base.shape)
        for _ in range(directions):
            d = rng.standard_normal(base.shape)

            def at(sign):
                if kind == "input":
                    moved = list(xs)
                    moved[key] = xs[key] + sign * eps * d
                    return objective(moved, inits)
                return objective(xs, {**inits, key: inits[key] + sign * eps * d})

            fd = (at(1) - at(-1)) / (2 * eps)
            an = float((grad * d).sum())
            scale = max(1.0, float(np.abs(grad * d).sum()))
            assert abs(fd - an) <= RTOL * scale, f"{kind} {key}: finite difference {fd}, vjp {an}"
    return prog


def jvp64(m, xs, ts):
    """(program, outputs, output tangents) of the forward-mode graph, run in float64."""
    prog = forward(import_model(m))
    outs = interpret(prog.graph, list(xs) + list(ts), float64=True)
    return prog, outs[:prog.n_outputs], outs[prog.n_outputs:]


def check_jvp(m, seed=0, positive=False, directions=2, eps=EPS, rtol=RTOL):
    """Each output tangent against the central difference of the float64 reference along
    the input tangents (a random direction through every float input at once); the outputs
    against the reference itself."""
    rng = np.random.default_rng(seed)
    ref = import_model(m)
    xs = random_inputs(ref, rng, positive)
    want = interpret(ref, xs, float64=True)
    prog = None
    for _ in range(directions):
        ts = [rng.standard_normal(ref.inputs[i].type.shape) for i, v in enumerate(ref.inputs)
              if v.type.dtype.startswith("float")]
        prog, ys, dys = jvp64(m, xs, ts)
        for y, r in zip(ys, want):
            np.testing.assert_allclose(y, r, rtol=1e-12, atol=1e-12)  # the JVP graph computes the model

        def moved(sign):
            shifted = list(xs)
            for i, t in zip(prog.wrt_inputs, ts):
                shifted[i] = xs[i] + sign * eps * t
            out = interpret(ref, shifted, float64=True)
            return [out[j] for j in prog.tan_outputs]

        for j, dy, hi, lo in zip(prog.tan_outputs, dys, moved(1), moved(-1)):
            fd = (hi - lo) / (2 * eps)
            assert dy.shape == fd.shape, (j, dy.shape, fd.shape)
            scale = max(1.0, float(np.abs(fd).max()))
            err = float(np.abs(dy - fd).max()) if fd.size else 0.0
            assert err <= rtol * scale, f"output {j}: |jvp - finite difference| = {err}, scale {scale}"
    return prog


def run_driver_on_a76(m, tmp_path, emit: str, grad: str | None, driver, arrays_for,
                      **build_options) -> tuple[dict, np.ndarray]:
    """Builds `m` with --grad `grad` (or the training build build_options ask for, such as
    train="mse") for cortex-a76 (emit "object" or "c"), links it into the C
    program driver(manifest) returns, runs it under qemu-user on the bytes of
    arrays_for(manifest) (float32 arrays, in the driver's order) and returns the manifest and
    everything the program wrote, as one float32 array."""
    import subprocess

    from toolchain.compiler import build
    from toolchain.harness.runner import launcher, run_program, zig_cc
    from toolchain.targets import get_profile

    profile = get_profile("cortex-a76")
    onnx.save(m, tmp_path / "m.onnx")
    man = build(tmp_path / "m.onnx", "cortex-a76", "model", tmp_path / "out", emit=emit, grad=grad,
                **build_options).manifest
    (tmp_path / "main.c").write_text(driver(man))
    lib = [str(tmp_path / "out" / "libmodel.a")] if emit == "object" else [str(tmp_path / "out" / "model.c")]
    exe = tmp_path / "main"
    proc = subprocess.run(zig_cc(profile) + ["-std=c11", f"-I{tmp_path / 'out'}", str(tmp_path / "main.c"), *lib,
                                             "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "in.bin").write_bytes(b"".join(a.tobytes() for a in arrays_for(man)))
    run_program(launcher(profile) + [str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], timeout=120)
    return man, np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32)


def mlp(seed: int = 11):
    """Gemm -> Relu -> Gemm -> Softmax on a [3, 8] input, weights drawn from `seed`."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1), helper.make_node("Softmax", ["z"], ["y"])]
    return onnx_model(nodes, {"x": (3, 8)}, {"W1": w(16, 8), "b1": w(16), "W2": w(5, 16), "b2": w(5)})


def cnn(seed: int = 12):
    """Conv -> Relu -> strided Conv -> Tanh -> GlobalAveragePool -> Flatten -> Gemm -> LogSoftmax."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def node(op, ins, outs, **attrs):
        return helper.make_node(op, ins, outs, **attrs)

    nodes = [node("Conv", ["x", "K1", "c1"], ["a"], pads=[1, 1, 1, 1]), node("Relu", ["a"], ["ar"]),
             node("Conv", ["ar", "K2", "c2"], ["b"], strides=[2, 2], pads=[1, 1, 1, 1]), node("Tanh", ["b"], ["bt"]),
             node("GlobalAveragePool", ["bt"], ["p"]), node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "W", "bias"], ["z"], transB=1), node("LogSoftmax", ["z"], ["y"])]
    return onnx_model(nodes, {"x": (2, 2, 6, 6)}, {"K1": w(4, 2, 3, 3) * 0.5, "c1": w(4), "K2": w(6, 4, 3, 3) * 0.3,
                                                   "c2": w(6), "W": w(3, 6), "bias": w(3)})

