"""invoke compare: per-tensor differences against onnxruntime on the target, and the first
node out of tolerance when a kernel is wrong."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import ROOT

from toolchain import cli
from toolchain.compare import compare, debug_variant, outputs_ok, report
from toolchain.ops import elementwise

KWS = ROOT / "models" / "kws_dscnn.onnx"
T = "x86-64-v3"


def test_every_float_intermediate_is_compared_and_within_tolerance_on_a76():
    diffs = compare(KWS, "cortex-a76")
    model = onnx.load(KWS)
    _, producers = debug_variant(model)
    assert [d.tensor for d in diffs] == list(producers)  # graph order, none missing
    assert len(diffs) > 20
    assert all(d.ok for d in diffs), report(diffs)
    assert outputs_ok(diffs) and diffs[-1].is_output
    assert min(d.cosine for d in diffs) > 0.99999


def test_a_wrong_kernel_is_found_at_its_first_node(monkeypatch, capsys):
    """Relu's lowering made wrong (x * 1.5 for x > 0): the first tensor out of tolerance is
    the first Relu's output, the Conv before it is still right, and the CLI exits 1."""
    facts = elementwise.UNARY["Relu"]
    monkeypatch.setitem(elementwise.UNARY, "Relu", facts._replace(scalar=lambda k, x, a: k.max(x, 0.0) * 1.5))
    diffs = compare(KWS, T)
    first = next(d for d in diffs if not d.ok)
    nodes = onnx.load(KWS).graph.node
    first_relu = next(n for n in nodes if n.op_type == "Relu")
    assert (first.op, first.node) == ("Relu", first_relu.name)
    assert diffs[diffs.index(first) - 1].op == "Conv" and diffs[diffs.index(first) - 1].ok
    assert f"first out of tolerance: tensor '{first.tensor}' from node '{first_relu.name}' (Relu)" in report(diffs)
    assert not outputs_ok(diffs)
    assert cli.main(["compare", "--target", T]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgec: error: the outputs on x86-64-v3 differ from onnxruntime beyond tolerance"]


def test_inputs_from_a_file(tmp_path):
    model = onnx.load(KWS)
    vi = model.graph.input[0]
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    np.savez(tmp_path / "in.npz", **{vi.name: np.full(shape, 0.25, np.float32)})
    assert cli.main(["compare", "--target", T, "--input", str(tmp_path / "in.npz"),
                     "--json", str(tmp_path / "r.json")]) == 0
    assert '"cosine"' in (tmp_path / "r.json").read_text()


@pytest.mark.parametrize("content,message", [
    (b"not an npz", "is not a readable .npz file"),
    (None, "the input file has no array for model input"),
])
def test_bad_input_files_are_one_line_errors(content, message, tmp_path, capsys):
    path = tmp_path / "in.npz"
    if content is None:
        np.savez(path, wrong_name=np.zeros(3, np.float32))
    else:
        path.write_bytes(content)
    assert cli.main(["compare", "--target", T, "--input", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
