"""A differential fuzzer: edgec against onnxruntime, deterministic by seed.

    python tests/fuzz.py [--graphs N] [--mutations N] [--seed S] [--minutes M]
                         [--bases real|generated] [--timeout SEC] [--findings DIR] [--json OUT]

(a) graphs: random valid small graphs from a menu of supported ops (Conv, Gemm, MatMul,
    Add/Sub/Mul/Max/Min with broadcasting, Relu, Sigmoid, Tanh, LeakyRelu, Clip, Concat,
    Reshape, Flatten, Transpose, MaxPool/AveragePool/GlobalAveragePool, BatchNormalization,
    Softmax, ReduceMean), built with onnx.helper (output shapes from onnx shape inference),
    compiled for the host and run in-process (toolchain.compile_model), compared with
    onnxruntime (rtol 1e-3, atol 1e-4).
(b) mutations of real models (tests/models/*.onnx; --bases generated mutates graphs of (a)
    instead, which compile in a fraction of the time): a flipped byte in the model's
    structure (weights left out), an attribute deleted, renamed or changed, an input
    dimension or dtype changed, an output duplicated, a tensor renamed onto another, a node
    removed, an op swapped. Each must end as a clean one-line CompileError, or a build that
    matches onnxruntime on the same mutated model when onnxruntime accepts it.

Case i of a kind is generated from numpy's default_rng([seed, kind, i]) alone: the same
seed gives the same cases. Each case runs in a worker process (EDGEC_CACHE=0) with a
timeout, so a hang or a crash of the compiler is an outcome, not the end of the run.

Outcomes: match, refused (a CompileError; the kind and whether onnxruntime accepted the
model are counted apart), built-ort-refuses (edgec built a model onnxruntime refuses),
ort-crash (onnxruntime itself died), skipped (the generator made nothing usable), and the
findings: mismatch, traceback (any other exception, or an error message of several lines),
hang, crash. Findings are saved to --findings as <kind>-<seed>-<i>.onnx with a .txt note.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = sorted((HERE / "models").glob("*.onnx"))
FINDINGS = {"mismatch", "traceback", "hang", "crash"}
F = np.float32
KIND_GRAPH, KIND_MUTATION = 1, 2


# -- (a) random valid graphs --------------------------------------------------------------
class GraphBuilder:
    def __init__(self, rng):
        self.rng = rng
        self.nodes, self.inits, self.inputs = [], [], []
        self.shapes: dict[str, tuple] = {}
        self.n = 0

    def name(self, what):
        self.n += 1
        return f"{what}{self.n}"

    def const(self, arr, what="c"):
        name = self.name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weights(self, shape, scale=0.5):
        return self.const((self.rng.standard_normal(shape) * scale).astype(F), "w")

    def add_input(self, shape):
        name = f"in{len(self.inputs)}"
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        self.shapes[name] = tuple(shape)
        return name

    def model(self, outputs, shapes=None):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None if shapes is None else list(shapes[o]))
                for o in outputs]
        g = helper.make_graph(self.nodes, "fuzz", self.inputs, outs, self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    def try_node(self, op, ins, **attrs):
        """Add the node if onnx's shape inference gives its output a shape; else drop it."""
        out = self.name("t")
        node = helper.make_node(op, ins, [out], name=self.name(op.lower()), **attrs)
        self.nodes.append(node)
        try:
            inferred = shape_inference.infer_shapes(self.model([out]), strict_mode=True)
            tt = inferred.graph.output[0].type.tensor_type
            shape = tuple(d.dim_value for d in tt.shape.dim)
            if not tt.HasField("shape") or any(d <= 0 for d in shape):
                raise ValueError("no static shape")
        except Exception:  # noqa: BLE001  (the menu drew an invalid combination: skip it)
            self.nodes.pop()
            return None
        self.shapes[out] = shape
        return out


def _broadcast_shape(rng, shape):
    """A shape that broadcasts against `shape`: some dims 1, maybe fewer leading dims."""
    drop = int(rng.integers(0, len(shape))) if len(shape) > 1 and rng.random() < 0.3 else 0
    return tuple(1 if rng.random() < 0.4 else d for d in shape[drop:])


def _add_op(b: GraphBuilder, x: str):
    rng, shape = b.rng, b.shapes[x]
    rank = len(shape)
    choice = rng.choice(["unary", "binary", "conv", "pool", "gemm", "matmul", "concat", "reshape", "transpose",
                         "softmax", "bn", "reduce", "flatten", "clip"])
    if rank == 0:  # a full reduction left a scalar: elementwise ops only
        choice = rng.choice(["unary", "binary", "clip"])
    if choice == "unary":
        op = str(rng.choice(["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "LeakyRelu", "Elu", "HardSigmoid"]))
        attrs = {"alpha": float(rng.choice([0.01, 0.2]))} if op in ("LeakyRelu", "Elu") else {}
        return b.try_node(op, [x], **attrs)
    if choice == "binary":
        op = str(rng.choice(["Add", "Sub", "Mul", "Max", "Min"]))
        same = [t for t, s in b.shapes.items() if s == shape and t != x]
        other = str(rng.choice(same)) if same and rng.random() < 0.4 else b.weights(_broadcast_shape(rng, shape))
        return b.try_node(op, [other, x] if rng.random() < 0.3 else [x, other])
    if choice == "conv" and rank == 4:
        c = shape[1]
        k = int(rng.integers(1, 4))
        group = c if c > 1 and rng.random() < 0.3 else 1
        oc = group * int(rng.integers(1, 3)) if group > 1 else int(rng.integers(1, 9))
        attrs = {"kernel_shape": [k, k], "strides": [int(rng.integers(1, 3))] * 2,
                 "pads": [int(rng.integers(0, k))] * 4, "group": group}
        if rng.random() < 0.2:
            attrs["dilations"] = [2, 2]
        ins = [x, b.weights((oc, c // group, k, k))]
        if rng.random() < 0.6:
            ins.append(b.weights((oc,)))
        return b.try_node("Conv", ins, **attrs)
    if choice == "pool" and rank == 4:
        op = str(rng.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
        if op.startswith("Global"):
            return b.try_node(op, [x])
        k = int(rng.integers(1, 4))
        attrs = {"kernel_shape": [k, k], "strides": [int(rng.integers(1, 3))] * 2, "pads": [int(rng.integers(0, k))] * 4}
        if op == "AveragePool":
            attrs["count_include_pad"] = int(rng.integers(0, 2))
        return b.try_node(op, [x], **attrs)
    if choice == "gemm" and rank == 2:
        n = int(rng.integers(1, 9))
        trans_b = int(rng.integers(0, 2))
        w = b.weights((n, shape[1]) if trans_b else (shape[1], n))
        ins = [x, w] + ([b.weights((n,))] if rng.random() < 0.7 else [])
        return b.try_node("Gemm", ins, transB=trans_b, alpha=float(rng.choice([1.0, 0.5])),
                          beta=float(rng.choice([1.0, 2.0])))
    if choice == "matmul" and rank >= 1:
        return b.try_node("MatMul", [x, b.weights((shape[-1], int(rng.integers(1, 9))))])
    if choice == "concat":
        axis = int(rng.integers(-rank, rank))
        extra = list(shape)
        extra[axis] = int(rng.integers(1, 4))
        return b.try_node("Concat", [x, b.weights(tuple(extra))] if rng.random() < 0.5 else [x, x], axis=axis)
    if choice == "reshape":
        target = [shape[0], -1] if rng.random() < 0.5 else list(reversed(shape))
        return b.try_node("Reshape", [x, b.const(np.array(target, np.int64), "shape")])
    if choice == "transpose":
        return b.try_node("Transpose", [x], perm=[int(p) for p in rng.permutation(rank)])
    if choice == "softmax":
        return b.try_node("Softmax", [x], axis=int(rng.integers(-rank, rank)))
    if choice == "bn" and rank == 4:
        c = shape[1]
        var = b.const((rng.random(c) + 0.5).astype(F), "var")
        return b.try_node("BatchNormalization", [x, b.weights((c,)), b.weights((c,)), b.weights((c,)), var],
                          epsilon=1e-5)
    if choice == "reduce":
        axes = sorted({int(a) for a in rng.integers(0, rank, size=int(rng.integers(1, rank + 1)))})
        return b.try_node("ReduceMean", [x], axes=axes, keepdims=int(rng.integers(0, 2)))
    if choice == "flatten":
        return b.try_node("Flatten", [x], axis=int(rng.integers(0, rank + 1)))
    if choice == "clip":
        return b.try_node("Clip", [x, b.const(np.array(-0.5, F), "lo"), b.const(np.array(0.7, F), "hi")])
    return None


def random_graph(seed: int, i: int):
    """(model, feeds) or None: a small valid float32 graph of 1..7 ops."""
    rng = np.random.default_rng([seed, KIND_GRAPH, i])
    b = GraphBuilder(rng)
    if rng.random() < 0.6:
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(3, 11)), int(rng.integers(3, 11)))
    else:
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 17)))
    x = b.add_input(shape)
    if rng.random() < 0.2:
        b.add_input(shape)
    tensors = [x]
    for _ in range(int(rng.integers(1, 8))):
        src = str(rng.choice(tensors[-3:]))
        if b.shapes[src] and np.prod(b.shapes[src]) > 4096:
            break
        out = _add_op(b, src)
        if out is not None:
            tensors.append(out)
    if len(tensors) == 1:
        return None
    outputs = [tensors[-1]]
    if len(tensors) > 2 and rng.random() < 0.3:
        outputs.insert(0, str(rng.choice(tensors[1:-1])))
    used = {n for node in b.nodes for n in node.input}
    b.inputs = [vi for vi in b.inputs if vi.name in used]
    if not b.inputs:
        return None
    model = b.model(outputs, b.shapes)
    feeds = {vi.name: rng.standard_normal(b.shapes[vi.name]).astype(F) for vi in b.inputs}
    return model, feeds


# -- (b) mutations ------------------------------------------------------------------------
MUTATIONS = ["flip_byte", "delete_attr", "rename_attr", "change_attr", "input_dim", "input_dtype",
             "dup_output", "rename_onto", "drop_node", "swap_op", "swap_inputs", "init_dtype"]
RENAMES = {"strides": "stride", "group": "gr8up", "pads": "padZ", "axis": "axes", "perm": "prem"}


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))] if len(seq) else None


def mutate(model: onnx.ModelProto, rng) -> tuple[bytes, str]:
    """The mutated model's file bytes and what was done (a mutation that does not apply to
    the node drawn is drawn again)."""
    for _ in range(20):
        data, what = _mutate_once(model, rng)
        if what != "unchanged":
            break
    return data, what


def _mutate_once(model: onnx.ModelProto, rng) -> tuple[bytes, str]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    kind = _pick(rng, MUTATIONS)
    node = _pick(rng, g.node)
    if kind == "flip_byte":  # in the structure only: weights are appended untouched
        inits = onnx.ModelProto()
        inits.graph.initializer.extend(g.initializer)
        del g.initializer[:]
        data = bytearray(m.SerializeToString())
        pos = int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(data) + inits.SerializeToString(), f"flip_byte at {pos}"
    if kind in ("delete_attr", "rename_attr", "change_attr") and node is not None and node.attribute:
        j = int(rng.integers(0, len(node.attribute)))
        a = node.attribute[j]
        if kind == "delete_attr":
            del node.attribute[j]
        elif kind == "rename_attr":
            a.name = RENAMES.get(a.name, a.name[:-1] + "Z")
        elif a.type == onnx.AttributeProto.INT:
            a.i = int(rng.choice([0, 1, 2, -1, 3, a.i + 1]))
        elif a.type == onnx.AttributeProto.INTS and len(a.ints):
            a.ints[int(rng.integers(0, len(a.ints)))] = int(rng.choice([0, 1, 2, 3, -1]))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float(rng.choice([0.0, -1.0, 2.5, 1e9]))
        return m.SerializeToString(), f"{kind} {a.name} of {node.name or node.op_type}"
    inits = {t.name for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    if kind == "input_dim" and inputs:
        vi = _pick(rng, inputs)
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            d = dims[int(rng.integers(0, len(dims)))]
            new = rng.choice(["plus1", "zero", "huge", "param"])
            if new == "param":
                d.dim_param = "fuzzdim"
            else:
                d.dim_value = {"plus1": max(d.dim_value, 0) + 1, "zero": 0, "huge": 2**31}[str(new)]
            return m.SerializeToString(), f"input_dim {vi.name} -> {new}"
    if kind == "input_dtype" and inputs:
        vi = _pick(rng, inputs)
        vi.type.tensor_type.elem_type = int(rng.choice([TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64,
                                                        TensorProto.UINT8, TensorProto.STRING, 0]))
        return m.SerializeToString(), f"input_dtype {vi.name} -> {vi.type.tensor_type.elem_type}"
    if kind == "init_dtype" and g.initializer:
        t = _pick(rng, g.initializer)
        t.data_type = int(rng.choice([TensorProto.DOUBLE, TensorProto.INT32, TensorProto.FLOAT16, TensorProto.INT8]))
        return m.SerializeToString(), f"init_dtype {t.name} -> {t.data_type}"
    if kind == "dup_output" and g.output:
        g.output.append(_pick(rng, g.output))
        return m.SerializeToString(), "dup_output"
    if kind == "rename_onto" and len(g.node) > 1:
        a, b = (g.node[int(k)] for k in rng.choice(len(g.node), 2, replace=False))
        if a.output and b.output:
            a.output[0] = b.output[0]
            return m.SerializeToString(), f"rename_onto {a.name} -> {b.output[0]}"
    if kind == "drop_node" and node is not None:
        g.node.remove(node)
        return m.SerializeToString(), f"drop_node {node.name}"
    if kind == "swap_op" and node is not None:
        swaps = {"Relu": "Sigmoid", "Sigmoid": "Tanh", "Tanh": "Relu", "Add": "Mul", "Mul": "Sub", "Sub": "Add",
                 "MaxPool": "AveragePool", "AveragePool": "MaxPool", "MatMul": "Gemm", "Gemm": "MatMul"}
        node.op_type = swaps.get(node.op_type, "Copy")
        return m.SerializeToString(), f"swap_op {node.name} -> {node.op_type}"
    if kind == "swap_inputs" and node is not None and len(node.input) > 1:
        node.input[0], node.input[1] = node.input[1], node.input[0]
        return m.SerializeToString(), f"swap_inputs {node.name}"
    return m.SerializeToString(), "unchanged"


def mutation_case(seed: int, i: int, bases: str):
    rng = np.random.default_rng([seed, KIND_MUTATION, i])
    if bases == "generated":
        made = None
        while made is None:
            made = random_graph(seed + 1_000_003, int(rng.integers(0, 1 << 30)))
        base, what = made[0], "generated"
    else:
        path = MODELS[int(rng.integers(0, len(MODELS)))]
        base, what = onnx.load(str(path)), path.stem
    data, how = mutate(base, rng)
    return data, f"{what}: {how}", int(rng.integers(0, 1 << 31))


# -- running a case (in the worker) ------------------------------------------------------------
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
MAX_FEED_ELEMS = 1 << 22


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:300]


def evaluate(data: bytes, feeds: dict | None, feed_seed: int, send) -> tuple[str, str]:
    """(outcome, detail) of one model: onnxruntime first, then edgec on the host."""
    import onnxruntime as ort

    from helpers import assert_close
    from toolchain import compile_model
    from toolchain.errors import CompileError

    send(("phase", "ort"))
    want, ort_error = None, None
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        if feeds is None:
            rng = np.random.default_rng(feed_seed)
            feeds = {}
            for i in sess.get_inputs():
                shape = [d if isinstance(d, int) else 1 for d in i.shape]
                if i.type not in ORT_DTYPES or int(np.prod(shape)) > MAX_FEED_ELEMS:
                    raise ValueError(f"cannot feed input {i.name} {i.type} {shape}")
                feeds[i.name] = (rng.standard_normal(shape) * 2).astype(ORT_DTYPES[i.type])
        want = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001  (onnxruntime refuses the model)
        ort_error = _one_line(e)
    send(("phase", "compile"))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(data)
        try:
            cm = compile_model(path)
        except CompileError as e:
            msg = str(e)
            if "\n" in msg or not msg:
                return "traceback", f"a multi-line or empty {type(e).__name__}: {msg!r}"
            return f"refused {type(e).__name__} (ort {'refuses' if ort_error else 'accepts'})", msg
        except MemoryError as e:
            return "too-big-to-run", _one_line(e)
        except Exception as e:  # noqa: BLE001  (anything but a CompileError is a finding)
            import traceback
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return "traceback", f"{_one_line(e)} at {Path(tb.filename).name}:{tb.lineno}"
    if ort_error:
        return "built-ort-refuses", ort_error
    send(("phase", "run"))
    names = [n for n, _, _ in cm.inputs]
    if set(names) != set(feeds):
        return "mismatch", f"inputs {names} != onnxruntime's {sorted(feeds)}"
    try:
        got = cm(*[feeds[n] for n in names])
    except Exception as e:  # noqa: BLE001
        return "traceback", f"running: {_one_line(e)}"
    if len(got) != len(want):
        return "mismatch", f"{len(got)} outputs, onnxruntime {len(want)}"
    for j, (g_, w) in enumerate(zip(got, want)):
        try:
            assert_close(g_, w, what=f"output {j}")
        except AssertionError as e:
            return "mismatch", " ".join(str(e).split())[:300]
    return "match", ""


def _worker(conn):
    import resource

    sys.path[:0] = [str(HERE), str(ROOT)]
    limit = 12 << 30  # a runaway allocation is a MemoryError here, not the machine's OOM killer
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(("result", *evaluate(*job, conn.send)))


class Worker:
    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        self.jobs = 0

    def run(self, job, timeout: float) -> tuple[str, str]:
        self.jobs += 1
        self.conn.send(job)
        phase, deadline = "start", time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                ready = left > 0 and self.conn.poll(left)
                if not ready:
                    self.stop()
                    return ("ort-hang" if phase == "ort" else "hang"), f"no result after {timeout:.0f} s ({phase})"
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.stop()
                code = self.proc.exitcode
                return ("ort-crash" if phase == "ort" else "crash"), f"worker died in {phase} (exit code {code})"
            if msg[0] == "phase":
                phase = msg[1]
            else:
                return msg[1], msg[2]

    def stop(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


# -- the run ---------------------------------------------------------------------------------------
def schedule(graphs: int, mutations: int) -> list[tuple[str, int]]:
    """Graph and mutation cases interleaved in proportion (a --minutes cap cuts both)."""
    total = graphs + mutations
    out, gi, mi = [], 0, 0
    for k in range(total):
        if mi >= mutations or (gi < graphs and gi * total <= k * graphs):
            out.append(("graph", gi))
            gi += 1
        else:
            out.append(("mutation", mi))
            mi += 1
    return out


def make_case(kind: str, seed: int, i: int, bases: str):
    """(job for the worker, model bytes, description) or None."""
    if kind == "graph":
        made = random_graph(seed, i)
        if made is None:
            return None
        data = made[0].SerializeToString()
        return (data, made[1], 0), data, "random graph"
    data, what, feed_seed = mutation_case(seed, i, bases)
    return (data, None, feed_seed), data, what


def run(graphs=20, mutations=40, seed=0, minutes=None, bases="real", timeout=120.0, findings=None, log=print,
        verbose=False):
    os.environ["EDGEC_CACHE"] = "0"  # every case compiled (the worker inherits this)
    counts, found = collections.Counter(), []
    started, worker = time.monotonic(), None
    try:
        for n, (kind, i) in enumerate(schedule(graphs, mutations)):
            if minutes is not None and time.monotonic() - started > minutes * 60:
                log(f"time is up after {n} cases")
                break
            try:
                case = make_case(kind, seed, i, bases)
            except Exception as e:  # noqa: BLE001  (a bug of the generator, not of edgec)
                log(f"generator error in {kind} {seed}/{i}: {_one_line(e)}")
                case = None
            if case is None:
                counts[f"{kind}: skipped"] += 1
                continue
            job, data, what = case
            if worker is None or worker.jobs >= 40 or not worker.proc.is_alive():
                if worker is not None:
                    worker.stop()
                worker = Worker()
            outcome, detail = worker.run(job, timeout)
            if not worker.proc.is_alive():
                worker = None
            counts[f"{kind}: {outcome}"] += 1
            if verbose:
                log(f"{kind} {i} ({what}): {outcome}: {detail}")
            if outcome in FINDINGS:
                found.append({"kind": kind, "seed": seed, "case": i, "what": what, "outcome": outcome,
                              "detail": detail})
                log(f"FINDING {kind} {seed}/{i} ({what}): {outcome}: {detail}")
                if findings:
                    d = Path(findings)
                    d.mkdir(parents=True, exist_ok=True)
                    (d / f"{kind}-{seed}-{i}.onnx").write_bytes(data)
                    (d / f"{kind}-{seed}-{i}.txt").write_text(f"{what}\n{outcome}: {detail}\n")
            if (n + 1) % 25 == 0:
                log(f"  {n + 1} cases, {time.monotonic() - started:.0f} s")
    finally:
        if worker is not None:
            worker.conn.send(None)
            worker.stop()
    return counts, found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", type=int, default=20)
    ap.add_argument("--mutations", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="stop starting new cases after this long")
    ap.add_argument("--bases", choices=["real", "generated"], default="real",
                    help="mutate tests/models/*.onnx (real) or random graphs (generated, faster)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--findings", default=str(ROOT / "build" / "fuzz-findings"))
    ap.add_argument("--json", help="write the counts and findings here")
    ap.add_argument("--verbose", action="store_true", help="print every case's outcome")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    counts, found = run(args.graphs, args.mutations, args.seed, args.minutes, args.bases, args.timeout,
                        args.findings, log=lambda s: print(s, flush=True), verbose=args.verbose)
    print(f"seed {args.seed}: {sum(counts.values())} cases in {time.monotonic() - t0:.0f} s")
    for key, n in sorted(counts.items()):
        print(f"  {n:5d}  {key}")
    print(f"findings: {len(found)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "counts": dict(counts), "findings": found},
                                              indent=1))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
