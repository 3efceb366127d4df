"""`edgec quantize` / `invoke quantize`: a float ONNX model -> a QDQ int8 model, with
onnxruntime's own post-training quantization (onnxruntime.quantization.quantize_static,
QuantFormat.QDQ): int8 weights symmetric per output channel, int8 activations asymmetric
per tensor (MinMax calibration), int32 biases. Calibration inputs come from an .npz file
(one array per model input, keyed by the input's name or arr_0, arr_1... in graph order;
shape = the input's shape for one sample, or (N, *shape) for N samples) or are N seeded
standard-normal samples (--calibration-random N).

Afterwards both models run in onnxruntime on the calibration inputs and each output's
float-vs-int8 agreement is printed: the largest and mean absolute difference, next to the
float output's range, and for an output with a class axis the share of samples whose argmax
agrees.

This module only writes ONNX: it sits above the compiler and uses nothing of it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .errors import InvalidModelError


def _inputs(model):
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise InvalidModelError(f"input '{vi.name}' has a symbolic dimension {dims}: fix it before quantizing")
        out.append((vi.name, tuple(dims)))
    return out


def calibration_samples(model, npz: str | Path | None = None, random_n: int | None = None, seed: int = 0):
    """A list of feeds {input name: array} for calibration."""
    specs = _inputs(model)
    if npz is None:
        if not random_n or random_n < 1:
            raise InvalidModelError("--calibration-random needs a positive number of samples")
        rng = np.random.default_rng(seed)
        return [{n: rng.standard_normal(s).astype(np.float32) for n, s in specs} for _ in range(random_n)]
    try:
        data = np.load(str(npz))
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"cannot read calibration file {npz}: {e}") from None
    arrays = []
    for j, (name, shape) in enumerate(specs):
        key = name if name in data.files else f"arr_{j}"
        if key not in data.files:
            raise InvalidModelError(f"calibration file {npz} has no array '{name}' (nor '{key}'): it holds "
                                    f"{', '.join(data.files) or 'nothing'}")
        a = np.asarray(data[key], np.float32)
        if a.shape == shape:
            a = a[None]
        if a.shape[1:] != shape:
            raise InvalidModelError(f"calibration array '{key}' has shape {a.shape}; input '{name}' needs "
                                    f"{shape} or (N, {', '.join(map(str, shape))})")
        arrays.append(a)
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise InvalidModelError(f"calibration arrays hold different numbers of samples: {sorted(n)}")
    return [{name: a[i] for (name, _), a in zip(specs, arrays)} for i in range(n.pop())]


def fold_gemm_batchnorm(model):
    """Gemm -> BatchNormalization (inference mode, every parameter an initializer, the Gemm's
    output read by nothing else) becomes one Gemm with the normalization folded into its
    weights and bias, before quantizing: onnxruntime's pre-processing folds Conv+BN but not
    Gemm+BN, and a BN left between a QDQ Gemm and its QuantizeLinear stays in float (a float
    tensor in the arena, and no integer Gemm). Returns how many were folded."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    folded = 0
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or not all(i in inits for i in bn.input[1:5]):
            continue
        gemm = next((n for n in g.node if bn.input[0] in n.output and n.op_type == "Gemm"), None)
        a = {x.name: helper.get_attribute_value(x) for x in (gemm.attribute if gemm else [])}
        bna = {x.name: helper.get_attribute_value(x) for x in bn.attribute}
        if (gemm is None or len(readers.get(gemm.output[0], [])) != 1 or gemm.output[0] in outputs
                or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0
                or gemm.input[1] not in inits or (len(gemm.input) > 2 and gemm.input[2] not in inits)
                or bna.get("training_mode", 0)):
            continue
        scale, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        factor = scale / np.sqrt(var + bna.get("epsilon", 1e-5))
        w = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float64)
        w = w * factor[:, None] if a.get("transB", 0) else w * factor[None, :]
        c = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64) if len(gemm.input) > 2 else 0.0
        c = np.broadcast_to((c - mean) * factor + beta, factor.shape)
        wname, cname = gemm.output[0] + "_bn_w", gemm.output[0] + "_bn_c"
        g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), wname),
                              numpy_helper.from_array(np.ascontiguousarray(c, np.float32), cname)])
        gemm.input[:] = [gemm.input[0], wname, cname]
        gemm.output[0] = bn.output[0]
        g.node.remove(bn)
        folded += 1
    used = {i for n in g.node for i in n.input} | outputs
    for t in [t for t in g.initializer if t.name not in used]:  # the normalization's, and the old W and C
        g.initializer.remove(t)
    return folded


def quantize(model_path: str | Path, out: str | Path, samples: list[dict]) -> Path:
    """Writes the QDQ model to `out`; returns its path."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    with tempfile.TemporaryDirectory() as tmp:
        if fold_gemm_batchnorm(model):
            model_path = Path(tmp) / "folded.onnx"
            onnx.save(model, str(model_path))
        # onnxruntime's recommended pre-processing: shape inference and graph cleanup, so
        # every tensor has a shape the quantizer can use
        pre = Path(tmp) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process
            quant_pre_process(model, str(pre), skip_symbolic_shape=True)
            src = str(pre)
        except Exception:
            src = str(model_path)
        quantize_static(src, str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return out


def agreement(float_path, quant_path, samples) -> list[dict]:
    """Per output: float-vs-int8 figures over the samples (both run in onnxruntime)."""
    import onnx

    from .harness.oracle import onnxruntime_session

    fs = onnxruntime_session(onnx.load(str(float_path)))
    qs = onnxruntime_session(onnx.load(str(quant_path)))
    names = [o.name for o in fs.get_outputs()]
    got = {n: [] for n in names}
    want = {n: [] for n in names}
    for feeds in samples:
        for n, a, b in zip(names, fs.run(None, feeds), qs.run(None, feeds)):
            want[n].append(np.asarray(a, np.float64))
            got[n].append(np.asarray(b, np.float64))
    rows = []
    for n in names:
        w, g = np.stack(want[n]), np.stack(got[n])
        d = np.abs(w - g)
        row = {"output": n, "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
               "float_range": float(w.max() - w.min())}
        if w.ndim == 3 and w.shape[1] == 1 and w.shape[-1] > 1:  # (samples, batch 1, classes)
            row["argmax_agreement"] = float(np.mean(w.argmax(-1) == g.argmax(-1)))
        rows.append(row)
    return rows


def run(model, out, calibration=None, calibration_random=None) -> list[dict]:
    """The command: quantize, then print each output's agreement; returns the rows."""
    import onnx

    if calibration is not None and calibration_random is not None:
        raise InvalidModelError("give --calibration FILE.npz or --calibration-random N, not both")
    if calibration is None and calibration_random is None:
        raise InvalidModelError("quantizing needs calibration inputs: --calibration FILE.npz or "
                                "--calibration-random N")
    if not Path(model).is_file():
        raise InvalidModelError(f"model file not found: {model}")
    samples = calibration_samples(onnx.load(str(model)), calibration, calibration_random)
    quantize(model, out, samples)
    rows = agreement(model, out, samples)
    print(f"wrote {out} (QDQ: int8 weights per channel, int8 activations per tensor; "
          f"{len(samples)} calibration samples)")
    for r in rows:
        extra = f", argmax agrees on {r['argmax_agreement']:.0%}" if "argmax_agreement" in r else ""
        print(f"  output '{r['output']}': float vs int8 max |diff| {r['max_abs_diff']:.4g}, mean "
              f"{r['mean_abs_diff']:.4g} (float range {r['float_range']:.4g}){extra}")
    return rows


def output_steps(qdq_model) -> list[float | None]:
    """Per graph output, the quantization step (scale) of the DequantizeLinear that produces
    it, when it is one with a constant per-tensor scale; else None (compare absolutely)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    for n in qdq_model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    steps = []
    for o in qdq_model.graph.output:
        n = producer.get(o.name)
        s = consts.get(n.input[1]) if n is not None and n.op_type == "DequantizeLinear" else None
        steps.append(float(s.ravel()[0]) if s is not None and s.size == 1 else None)
    return steps


def lsb_agreement(got, want, step: float | None) -> dict:
    """Share of elements identical, and the largest difference in quantization steps of the
    output (step given) or absolute."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    d = np.abs(g - w)
    row = {"identical": float(np.mean(g == w)), "max_abs": float(d.max()) if d.size else 0.0}
    if step:
        row["max_lsb"] = float(np.round(d.max() / step, 3)) if d.size else 0.0
    return row
