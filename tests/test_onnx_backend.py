"""The ONNX backend test data shipped in the onnx wheel (see tests/onnx_backend.py).

Every supported case is a test item, checked against the expected outputs stored with
it; unsupported cases are not skipped items but a counted figure, guarded by a floor.
Every case runs on the host and on one emulated target in the default run (rotating: each
emulated target gets a quarter of the cases, all of them in the slow run); the
ImageNet-size "light" models (8 minutes with today's kernels) are marked slow."""
import numpy as np
import onnx
import pytest

from helpers import ALL_TARGETS, assert_close, compile_and_run, onnxruntime_outputs
from onnx_backend import classify, discover, run_case

SUITES = ["simple", "pytorch-converted", "pytorch-operator"]
ALL = {s: discover(s) for s in SUITES + ["light"]}
KIND = {c.id: classify(c) for cases in ALL.values() for c in cases}  # once: the light models take seconds each
SUPPORTED = {s: [c for c in cases if KIND[c.id][0] == "supported"] for s, cases in ALL.items()}
DATA_CASES = [c for s in SUITES for c in SUPPORTED[s]]
# measured 2026-11-23: simple 3/23 (the rest are sequence/string/training ops, runtime
# shapes), pytorch-converted 82/82, pytorch-operator 35/35, light 9/9
FLOOR = {"simple": 3, "pytorch-converted": 82, "pytorch-operator": 35, "light": 9}


def test_support_does_not_regress():
    got = {s: len(SUPPORTED[s]) for s in FLOOR}
    print("supported:", {s: f"{got[s]}/{len(ALL[s])}" for s in FLOOR})
    assert all(got[s] >= FLOOR[s] for s in FLOOR), got


def test_nothing_fails_in_the_front_end():
    """A case we cannot take must say so (unsupported), never crash or mis-type."""
    errors = [(c.id, reason) for cases in ALL.values() for c in cases
              for kind, reason in [KIND[c.id]] if kind == "error"]
    assert errors == []


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_case_on_host(case, workdir):
    run_case(case, "x86-64-v3", workdir, compile_and_run)


EMULATED = [t for t in ALL_TARGETS if t != "x86-64-v3"]


def _emulated_cases():
    """Every case on every emulated target; in the default run each case on one of them
    (rotating, so the default run still covers every case and every target; the rest is
    marked slow, for the separate CI step)."""
    for i, case in enumerate(DATA_CASES):
        for j, where in enumerate(EMULATED):
            yield pytest.param(case, where, id=f"{case.id}-{where}",
                               marks=() if (i + j) % len(EMULATED) == 0 else (pytest.mark.slow,))


@pytest.mark.parametrize("case, where", list(_emulated_cases()))
def test_case_on_emulated_target(case, where, workdir):
    run_case(case, where, workdir, compile_and_run)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUPPORTED["light"], ids=[c.name for c in SUPPORTED["light"]])
def test_light_model(case, workdir):
    """ImageNet-size models (weights generated in-graph) with seeded inputs, against onnxruntime."""
    model = onnx.load(str(case.model_path))
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input if i.name not in inits}
    got, _, _ = compile_and_run(model, "x86-64-v3", feeds, workdir)
    for g, w in zip(got, onnxruntime_outputs(model, feeds)):
        assert_close(g, w, what=case.name)
