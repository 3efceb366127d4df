"""The int8 figures: each real model quantized by `edgec quantize` (onnxruntime's
quantize_static, QDQ, 8 seeded random calibration samples), built for each target, run on
the target's instruction set (natively or QEMU) on the calibration inputs, compared with
onnxruntime running the same QDQ model:

  identical   share of output elements equal to onnxruntime's
  max LSB     largest difference in quantization steps of the output (the scale of the
              DequantizeLinear producing it), or absolute ("abs") when it has none

against onnxruntime twice: with all graph optimizations (the project's oracle; onnxruntime
then runs its own integer kernels: QLinearConv, QGemm, QLinearAdd, QLinearSoftmax (a lookup
table), QLinearAveragePool...) and with none (ORT_DISABLE_ALL: DequantizeLinear -> float op ->
QuantizeLinear, the ONNX semantics of the QDQ graph). The two disagree with each other too
(printed as "ort opt vs ort spec").

and the sizes next to the float32 build: weight bytes (flash) and arena bytes.

    python scripts/int8_report.py [--target T ...] [--model M ...] [--samples K] [--out DIR] [--layers]

--layers adds, per model, each quantized tensor of the compiled graph (the output of every
QuantizeLinear and integer op) against onnxruntime's (all optimizations) in isolation: the
compiler's reference semantics of each node (toolchain.interpreter's per-op numpy, which the
compiled code matches exactly; tests/test_quant.py) fed onnxruntime's own values of the node's
inputs, so a difference is that layer's alone, in LSBs of its int8 output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.compiler import build  # noqa: E402
from toolchain.harness.oracle import onnxruntime_session  # noqa: E402
from toolchain.harness.runner import link_harness, run_model  # noqa: E402
from toolchain.quantize import calibration_samples, lsb_agreement, output_steps, quantize  # noqa: E402
from toolchain.targets import get_profile  # noqa: E402

MODELS = [ROOT / "models" / "kws_dscnn.onnx"] + [ROOT / "tests" / "models" / f"{n}.onnx" for n in (
    "mobilenet_v1_025_vww", "resnet8_cifar10", "fc_autoencoder", "transformer_encoder")]


def run_build(path: Path, target: str, out: Path, feeds_list):
    res = build(path, target, "model", out)
    profile = get_profile(target)
    exe = link_harness(out, "model", profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    outs = []
    for feeds in feeds_list:
        ordered = [feeds[i["name"]] for i in res.manifest["inputs"]]
        outs.append(run_model(exe, profile, ordered, specs).outputs)
    return res, outs


def report(model_path: Path, targets, work: Path, samples: int = 4, calib: int = 8) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    cal = calibration_samples(model, random_n=calib)
    qpath = quantize(model_path, work / f"{model_path.stem}.qdq.onnx", cal)
    qmodel = onnx.load(str(qpath))
    steps = output_steps(qmodel)
    sess = onnxruntime_session(qmodel)
    spec = onnxruntime_session(qmodel, optimized=False)
    feeds_list = cal[:samples]
    want = [sess.run(None, f) for f in feeds_list]
    want_spec = [spec.run(None, f) for f in feeds_list]
    rows = []
    for target in targets:
        fres = build(model_path, target, "model", work / f"{target}-float")
        qres, got = run_build(qpath, target, work / f"{target}-int8", feeds_list)
        fallback = qres.manifest.get("float_fallback", [])
        for j, step in enumerate(steps):
            g = np.stack([o[j] for o in got])
            w = np.stack([o[j] for o in want])
            ws = np.stack([o[j] for o in want_spec])
            spec_row = lsb_agreement(g, ws, step)
            ort_row = lsb_agreement(w, ws, step)
            row = {"model": model_path.stem, "target": target, "output": j, **lsb_agreement(g, w, step),
                   "spec_identical": spec_row["identical"], "spec_max_lsb": spec_row.get("max_lsb"),
                   "ort_identical": ort_row["identical"], "ort_max_lsb": ort_row.get("max_lsb"),
                   "elements": int(g.size),
                   "weights_int8": qres.manifest["weight_bytes"], "weights_f32": fres.manifest["weight_bytes"],
                   "arena_int8": qres.manifest["arena"]["size"], "arena_f32": fres.manifest["arena"]["size"],
                   "ops": qres.manifest["ops"], "float_fallback": len(fallback)}
            rows.append(row)
    return rows


def layer_report(qpath: Path, feeds_list) -> list[tuple]:
    """(op, tensor, identical share, max LSB) per quantized tensor that differs (module doc)."""
    from onnx import helper

    from toolchain.frontend.onnx_import import import_model
    from toolchain.ops import own_inputs, registry
    from toolchain.passes import PIPELINE, run_pipeline

    m = onnx.load(str(qpath))
    types = {t.name: t.data_type for t in m.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            t = types.get(n.input[2], onnx.TensorProto.INT8) if len(n.input) > 2 else onnx.TensorProto.UINT8
            probe.graph.output.append(helper.make_tensor_value_info(n.output[0], t, None))
    sess = onnxruntime_session(probe)
    g = import_model(m)
    run_pipeline(g, passes=[p for p in PIPELINE if p[0] in ("infer-shapes", "integer-ops")])
    stats = {}
    for feeds in feeds_list:
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        env = {id(v): feeds[v.name] for v in g.inputs}
        for node in g.nodes:
            args = [None if v is None else v.data if v.is_const else env[id(v)] for v in own_inputs(node)]
            while args and args[-1] is None:
                args.pop()
            for out, r in zip(node.outputs, registry.get(node.op).reference(node, *args)):
                r = np.asarray(r).astype(out.type.dtype).reshape(out.type.shape)
                if out.name in ref:
                    d = np.abs(r.astype(np.int64) - ref[out.name].astype(np.int64))
                    s = stats.setdefault((node.op, out.name), [0, 0, 0])
                    s[0], s[1], s[2] = s[0] + int((d == 0).sum()), s[1] + d.size, max(s[2], int(d.max()))
                    r = ref[out.name]  # go on from onnxruntime's value: each layer in isolation
                env[id(out)] = r
    return [(op, name, same / total, worst) for (op, name), (same, total, worst) in stats.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append")
    ap.add_argument("--model", action="append")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "build" / "int8-report"))
    ap.add_argument("--layers", action="store_true", help="per-layer comparison in LSBs (module doc)")
    args = ap.parse_args(argv)
    targets = args.target or ["x86-64-v3", "cortex-a76"]
    models = [Path(m) for m in args.model] if args.model else MODELS
    print(f"{'model':22} {'target':11} out elems | vs ORT opt: same, max | vs ORT spec: same, max | "
          f"ORT opt vs spec | {'weights i8/f32':>22} {'arena i8/f32':>24} fallback nodes")
    for m in models:
        for r in report(m, targets, Path(args.out) / m.stem, args.samples):
            diff = f"{r['max_lsb']:g} LSB" if "max_lsb" in r else f"{r['max_abs']:.3g} abs"
            print(f"{r['model']:22} {r['target']:11} {r['output']:3} {r['elements']:5} | {r['identical']:8.2%} "
                  f"{diff:>9} | {r['spec_identical']:8.2%} {r['spec_max_lsb']} LSB | {r['ort_identical']:7.2%} "
                  f"{r['ort_max_lsb']} LSB | "
                  f"{r['weights_int8']:>8}/{r['weights_f32']:<8} ({r['weights_int8'] / r['weights_f32']:.2f}) "
                  f"{r['arena_int8']:>8}/{r['arena_f32']:<8} ({r['arena_int8'] / r['arena_f32']:.2f}) "
                  f"{r['float_fallback']}", flush=True)
        if args.layers:
            qpath = Path(args.out) / m.stem / f"{m.stem}.qdq.onnx"
            feeds = calibration_samples(onnx.load(str(m)), random_n=8)[:args.samples]
            rows = layer_report(qpath, feeds)
            print(f"  {len(rows)} quantized tensors; those not identical to onnxruntime's:")
            for op, name, same, worst in rows:
                if same < 1:
                    print(f"    {op:16} {name[:60]:60} {same:9.4%} identical, max {worst} LSB")


if __name__ == "__main__":
    main()
