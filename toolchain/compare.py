"""`invoke compare`: which layer first departs from the reference, on the target.

A debug variant of the model exposes every intermediate tensor of the ONNX graph as an
extra graph output. It is a separate build (the shipped library's code is not touched; the
extra outputs keep the compiler from fusing across them, so the variant's code differs from
the shipped one where fusion happened). The variant runs on the target (natively or under
QEMU) and onnxruntime runs the same variant on the same input; each tensor is compared in
graph order with the project's tolerances (toolchain.harness.oracle): max abs error, max
relative error, cosine similarity. The first tensor out of tolerance names its node, op and
attributes. Exit status 1 when any of the model's own outputs is out of tolerance.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .compiler import DEFAULT_MODEL, build
from .errors import InvalidModelError
from .frontend.onnx_import import load_model
from .harness.oracle import ATOL, RTOL, onnxruntime_session
from .harness.runner import link_harness, run_model
from .targets import get_profile

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


@dataclass
class TensorDiff:
    tensor: str
    node: str
    op: str
    attributes: str
    shape: list
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool
    is_output: bool


def debug_variant(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The model with every float intermediate tensor also a graph output; returns it and
    {tensor: producing NodeProto} for the tensors it compares (outputs included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    outputs = {o.name for o in model.graph.output}
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    producers = {}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            variant.graph.node[i].name = f"{node.op_type}_{i}"
        for t in node.output:
            vi = types.get(t)
            if not t or vi is None or vi.type.tensor_type.elem_type not in FLOAT_TYPES:
                continue
            producers[t] = variant.graph.node[i]
            if t not in outputs and node.op_type != "Constant":
                variant.graph.output.append(vi)
    return variant, producers


def diff_tensor(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float, bool]:
    g, w = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if g.shape != w.shape:
        return float("inf"), float("inf"), float("nan"), False
    err = np.abs(g - w)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    err = np.where(same, 0.0, err)
    rel = err / np.maximum(np.abs(w), np.finfo(np.float32).tiny)
    ok = bool(np.all(same | (err <= ATOL + RTOL * np.abs(w))))
    norm = np.linalg.norm(g) * np.linalg.norm(w)
    cosine = float(np.dot(g, w) / norm) if norm > 0 else (1.0 if not err.any() else 0.0)
    return float(err.max(initial=0.0)), float(rel.max(initial=0.0)), cosine, ok


def compare(model_path, target: str, inputs: dict | None = None, dims=None, workdir=None) -> list[TensorDiff]:
    """Per-tensor differences of the debug variant on `target` against onnxruntime, in
    graph order. `inputs`: {name: array}; default: seeded normal inputs."""
    from .bench import seeded_inputs

    model = load_model(Path(model_path) if model_path else DEFAULT_MODEL)
    variant, producers = debug_variant(model)
    feeds = inputs if inputs is not None else seeded_inputs(model)
    with tempfile.TemporaryDirectory(prefix="edgec-compare-") as tmp:
        tmp = Path(workdir or tmp)
        path = tmp / "debug_variant.onnx"
        onnx.save(variant, path)
        res = build(path, target, "model", tmp / "build", dims=dims)
        profile = get_profile(target)
        exe = link_harness(tmp / "build", "model", profile)
        try:
            ordered = [feeds[i["name"]] for i in res.manifest["inputs"]]
        except KeyError as e:
            raise InvalidModelError(f"the input file has no array for model input {e}") from None
        specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
        ours = dict(zip((o["name"] for o in res.manifest["outputs"]),
                        run_model(exe, profile, ordered, specs).outputs))
    session = onnxruntime_session(variant)
    theirs = dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))
    model_outputs = {o.name for o in model.graph.output}
    diffs = []
    for tensor, node in producers.items():
        if tensor not in ours or tensor not in theirs:
            continue
        attrs = ", ".join(f"{a.name}={_attr_text(a)}" for a in node.attribute)
        diffs.append(TensorDiff(tensor, node.name, node.op_type, attrs, list(np.shape(theirs[tensor])),
                                *diff_tensor(ours[tensor], theirs[tensor]), tensor in model_outputs))
    return diffs


def _attr_text(a: onnx.AttributeProto) -> str:
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, onnx.TensorProto):
        return f"tensor{list(value.dims)}"
    return str(value)


def report(diffs: list[TensorDiff]) -> str:
    w = min(max([len(d.tensor) for d in diffs] + [6]), 56)
    lines = [f"{'tensor':{w}} {'op':20} {'max abs':>10} {'max rel':>10} {'cosine':>10}  ok"]
    for d in diffs:
        mark = "yes" if d.ok else "NO"
        name = d.tensor if len(d.tensor) <= w else "..." + d.tensor[-(w - 3):]
        lines.append(f"{name:{w}} {d.op[:20]:20} {d.max_abs:10.3g} {d.max_rel:10.3g} {d.cosine:10.7f}  "
                     f"{mark}{'  (output)' if d.is_output else ''}")
    first = next((d for d in diffs if not d.ok), None)
    if first is None:
        lines.append(f"all {len(diffs)} tensors within tolerance (rtol {RTOL}, atol {ATOL})")
    else:
        lines.append(f"first out of tolerance: tensor '{first.tensor}' from node '{first.node}' ({first.op}"
                     f"{', ' + first.attributes if first.attributes else ''}): max abs {first.max_abs:.3g}, "
                     f"max rel {first.max_rel:.3g}, cosine {first.cosine:.7f}")
    return "\n".join(lines)


def outputs_ok(diffs: list[TensorDiff]) -> bool:
    return all(d.ok for d in diffs if d.is_output)


def load_inputs(path) -> dict:
    """An .npz of {input name: array}."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"--input '{path}' is not a readable .npz file: {e}") from None


def to_json(diffs: list[TensorDiff]) -> str:
    return json.dumps([asdict(d) for d in diffs], indent=2, allow_nan=True) + "\n"
