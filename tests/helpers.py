"""Shared test helpers: build an ONNX model for a target, run it on that target's
instruction set (natively or under qemu-user) and compare with onnxruntime."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from toolchain.compiler import build
from toolchain.harness.clib import build_c_library
from toolchain.harness.oracle import ATOL, RTOL, onnxruntime_outputs  # noqa: F401  (tests import them here)
from toolchain.harness.runner import link_harness, run_model
from toolchain.harness.system import link_system_harness, run_system
from toolchain.targets import get_profile, runnable_targets

ROOT = Path(__file__).resolve().parent.parent
ALL_TARGETS = runnable_targets("user")  # every profile in targets/ that runs here


def make_model(nodes, inputs: dict, outputs: dict, inits: dict | None = None, opset=13) -> onnx.ModelProto:
    """inputs/outputs: name -> (dtype np, shape) ; inits: name -> array."""
    def vi(name, spec):
        dt, shape = spec
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
    g = helper.make_graph(nodes, "test", [vi(k, v) for k, v in inputs.items()],
                          [vi(k, v) for k, v in outputs.items()],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def without_output_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph outputs declare no shape: a shape-deciding graph input is then
    refused (nothing to specialize it from, frontend/specialize.py) instead of checked at run time."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for o in out.graph.output:
        o.type.tensor_type.ClearField("shape")
    return out


def host_and_one_emulated(items, ids):
    """(item, target) params: each item on the host and on every emulated target, where only
    the host and one emulated target (rotating over the items, so every target still runs
    some) are in the default run; the other pairs are marked slow (the separate CI step)."""
    host = [t for t in ALL_TARGETS if t == "x86-64-v3"]
    emulated = [t for t in ALL_TARGETS if t not in host]
    for i, (item, name) in enumerate(zip(items, ids)):
        for t in host:
            yield pytest.param(item, t, id=f"{name}-{t}")
        for j, t in enumerate(emulated):
            yield pytest.param(item, t, id=f"{name}-{t}",
                               marks=() if (i + j) % len(emulated) == 0 else (pytest.mark.slow,))


def compile_and_run(model: onnx.ModelProto | Path, target: str, feeds: dict, workdir: Path,
                    name: str = "model", runs: int = 1, arena_bytes=None, bind=None, emit="object"):
    """Build with the real CLI path, link the harness, run; returns (outputs, build result, run result).
    bind: graph inputs bound at build time (build's bind); the others are fed from `feeds`.
    emit "c": the generated C, compiled into lib<name>.a for the target by zig cc."""
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        path = workdir / f"{hashlib.sha1(data).hexdigest()[:12]}.onnx"
        path.write_bytes(data)
    else:
        path = Path(model)
    out = workdir / f"build-{target}-{path.stem}"
    res = build(path, target, name, out, bind=bind, emit=emit)
    profile = get_profile(target)
    if emit == "c":
        build_c_library(out, name, profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    ordered = [feeds[i["name"]] for i in res.manifest["inputs"]]
    if profile.run_mode == "system":  # a QEMU board: inputs are linked into the image
        assert arena_bytes is None, "the system-mode harness always gives the model its full arena"
        image = link_system_harness(out, name, profile, ordered, [o["bytes"] for o in res.manifest["outputs"]])
        run = run_system(image, profile, specs, runs=runs)
        return run.outputs, res, run
    exe = link_harness(out, name, profile)
    run = run_model(exe, profile, ordered, specs, runs=runs, arena_bytes=arena_bytes)
    return run.outputs, res, run


def assert_close(got, want, rtol=RTOL, atol=ATOL, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype.kind in "biu" or want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=what)
        return
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    same = (g64 == w64) | (np.isnan(g64) & np.isnan(w64))  # equal infinities, NaN for NaN
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(g64 - w64))
        # a NaN error, or an infinity not matched exactly, is a failure
        bad = ~same & (~(err <= atol + rtol * np.abs(w64)) | np.isinf(g64) | np.isinf(w64))
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf) + 1, 0)), err.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements differ; worst at {i}: "
                             f"got {got[i]}, want {want[i]} (max abs err {np.max(np.nan_to_num(err, nan=np.inf)):.3g})")


def check_against_onnxruntime(model, feeds, target, workdir, **kw):
    want = onnxruntime_outputs(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)), feeds)
    got, res, run = compile_and_run(model, target, feeds, workdir, **kw)
    for j, (g_, w) in enumerate(zip(got, want)):
        assert_close(g_, w, what=f"{target} output {j}")
    return res, run
