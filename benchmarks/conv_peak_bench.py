"""How close each convolution of a model comes to the host's FMA peak:
`python benchmarks/conv_peak_bench.py MODEL.onnx [--runs 50] [--top 12]`.

Every Conv of the model becomes a model of its own (its input shape from ONNX shape
inference, its weights and attributes), built for x86-64-v3 and timed natively by the
harness (median of `runs`), alternating with onnxruntime on one thread. Printed per layer:
shape, MACs, our time, GFLOP/s and % of the peak (2 FMA units x 8 lanes x 2 flops per
cycle at the clock measured by toolchain.bench.measure_clock_mhz), and onnxruntime's
time; the slowest layers first, then the totals. MACs are the manifest's (every tap of every
output, the padding's included), so a padded layer whose border taps are skipped can show
more than 100%.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.bench import peak_gflops  # noqa: E402
from toolchain.compiler import build  # noqa: E402
from toolchain.harness.oracle import onnxruntime_session  # noqa: E402
from toolchain.harness.runner import link_harness, run_model  # noqa: E402
from toolchain.targets import get_profile  # noqa: E402

HOST = "x86-64-v3"


def conv_layers(model: onnx.ModelProto) -> list[tuple[str, onnx.ModelProto, int]]:
    """(name, one-Conv model, MACs) for every Conv with constant weights."""
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # weights an exporter wrote as Constant nodes or Identity of a shared one
        src = (node.attribute[0].t if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
               else inits.get(node.input[0]) if node.op_type == "Identity" else None)
        if src is not None:
            t = onnx.TensorProto()
            t.CopyFrom(src)
            t.name = node.output[0]
            inits[node.output[0]] = t
    out = []
    for i, node in enumerate(model.graph.node):
        if (node.op_type != "Conv" or node.input[0] not in shapes
                or any(n not in inits for n in node.input[1:] if n)):
            continue
        x, y = shapes[node.input[0]], shapes.get(node.output[0])
        if not y or 0 in x or 0 in y:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        conv = helper.make_node("Conv", ["x", *node.input[1:]], ["y"])
        conv.attribute.extend(node.attribute)
        g = helper.make_graph([conv], f"conv{i}", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y)],
                              [inits[n] for n in node.input[1:] if n])
        macs = int(np.prod(y)) * int(np.prod(w.shape[1:]))
        out.append((f"{node.name or i} {x[1]}->{y[1]} {w.shape[2]}x{w.shape[3]} {x[2]}x{x[3]}->{y[2]}x{y[3]}",
                    helper.make_model(g, opset_imports=model.opset_import), macs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--top", type=int, default=12, help="print the N layers taking the most time")
    a = ap.parse_args(argv)
    peak, how = peak_gflops()
    p = get_profile(HOST)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-conv-") as tmp:
        for k, (name, m, macs) in enumerate(conv_layers(onnx.load(a.model))):
            path = Path(tmp) / f"c{k}.onnx"
            onnx.save(m, path)
            built = build(path, HOST, "model", Path(tmp) / f"b{k}")
            x = np.random.default_rng(0).standard_normal(built.manifest["inputs"][0]["shape"]).astype(np.float32)
            spec = [(o["dtype"], tuple(o["shape"])) for o in built.manifest["outputs"]]
            exe = link_harness(Path(tmp) / f"b{k}", "model", p)
            ours = np.median(run_model(exe, p, [x], spec, runs=a.runs).times_ns[1:])
            session = onnxruntime_session(m)
            session.run(None, {"x": x})
            ts = []
            for _ in range(a.runs):
                t0 = time.perf_counter_ns()
                session.run(None, {"x": x})
                ts.append(time.perf_counter_ns() - t0)
            gflops = 2 * macs / ours
            rows.append((name, macs, ours, gflops, float(np.median(ts)),
                         built.manifest["schedules"].get(next(iter(built.manifest["schedules"]), ""), "")))
    print(f"peak {peak:.1f} GFLOP/s ({how})")
    for name, macs, ours, gf, ort, sched in sorted(rows, key=lambda r: -r[2])[:a.top]:
        print(f"{name:44s} {macs / 1e6:7.2f} MMAC  {ours / 1e3:8.1f} us  {gf:6.1f} GFLOP/s  {100 * gf / peak:5.1f}% "
              f"of peak  ort {ort / 1e3:8.1f} us ({ours / ort:.2f}x)  {sched}")
    total, ort = sum(r[2] for r in rows), sum(r[4] for r in rows)
    macs = sum(r[1] for r in rows)
    print(f"all {len(rows)} convolutions: {total / 1e3:.1f} us, {2 * macs / total:.1f} GFLOP/s = "
          f"{100 * 2 * macs / total / peak:.1f}% of peak; onnxruntime {ort / 1e3:.1f} us ({total / ort:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
