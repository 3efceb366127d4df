"""The onnx package's per-operator node cases (tests/node_suite.py) as a regression guard.

tests/node_suite_passing.txt lists the cases that passed on x86-64-v3 when it was
generated (`python tests/node_suite.py --write-passing tests/node_suite_passing.txt`,
onnx 1.23.2); every one of them must still pass, those marked "(bound)" with their
shape-deciding graph inputs bound at build time (--bind), the others as they are. The default run takes a deterministic
sample (every k-th name in sorted order, SAMPLE names) through a pool of two processes,
each object called in process; the whole list, each case linked with the C harness and
run as a program, is marked slow. A case that newly passes is not a failure: regenerate the
list to lock it in.
"""
import os
from pathlib import Path

import onnx
import pytest

from helpers import ALL_TARGETS
from node_suite import load_index, read_passing_list, run_suite, select

HOST = "x86-64-v3"
LIST = Path(__file__).resolve().parent / "node_suite_passing.txt"
SAMPLE = 120  # ~15 s on 2 cores, called in process (the object through ctypes)
JOBS = int(os.environ.get("EDGEC_NODE_SUITE_JOBS", "2"))


def known_passing() -> list[str]:
    return list(read_passing_list(LIST))


def regressions(names, harness=False, target=HOST, emit="object"):
    index = load_index()  # materializes the cases on first use (~20 s), then cached
    missing = [n for n in names if n not in index["cases"]]
    if missing and index["onnx"] != "1.23.2":
        pytest.skip(f"the list was made with onnx 1.23.2; onnx {onnx.__version__} lacks {len(missing)} of its cases")
    assert missing == [], f"cases in {LIST.name} that the installed onnx does not have: {missing[:10]}"
    results = run_suite(names, target, jobs=JOBS, with_ort=False, progress=False, harness=harness, emit=emit)
    may_bind = read_passing_list(LIST)
    ok = {n: ("pass", "pass (bound)") if may_bind.get(n) else ("pass",) for n in names}
    bad = {n: r for n, r in results.items() if r["status"] not in ok[n]}
    return [f"{n}: {r['status']}: {r['message'][:300]}" for n, r in sorted(bad.items())]


def test_the_list_is_sorted_and_unique():
    names = known_passing()
    assert names == sorted(set(names))
    assert len(names) == len(LIST.read_text().split()) - LIST.read_text().count(" (bound)")
    assert len(names) >= 100


def test_known_passing_sample_still_passes():
    names = select(known_passing(), sample=SAMPLE)
    bad = regressions(names)
    assert not bad, f"{len(bad)} of {len(names)} known-passing node cases regressed:\n" + "\n".join(bad)


@pytest.mark.slow
def test_all_known_passing_still_pass():
    """All of them, each linked with the C harness and run as a program (~3 minutes)."""
    names = known_passing()
    bad = regressions(names, harness=True)
    assert not bad, f"{len(bad)} of {len(names)} known-passing node cases regressed:\n" + "\n".join(bad)


# The same cases on the other instruction sets and through the C backend: a small
# deterministic sample by default (each one built, linked with the harness and run under
# qemu-user or natively), a larger one in the slow run.
ELSEWHERE = [("cortex-a76", "object"), ("rv64gcv", "object"), (HOST, "c")]
ELSEWHERE_SAMPLE, ELSEWHERE_SLOW_SAMPLE = 12, 200


def _elsewhere(sample, offset=0):
    names = known_passing()
    return [names[(i * len(names)) // sample + offset] for i in range(sample)]


@pytest.mark.parametrize("where, emit", ELSEWHERE, ids=[f"{t}-{e}" for t, e in ELSEWHERE])
def test_known_passing_sample_passes_elsewhere(where, emit):
    """Offset by one from the host sample, so these are cases the host test does not pick."""
    assert where in ALL_TARGETS, f"{where} does not run on this machine (qemu-user missing?)"
    names = _elsewhere(ELSEWHERE_SAMPLE, offset=1)
    bad = regressions(names, target=where, emit=emit)
    assert not bad, f"{len(bad)} of {len(names)} host-passing node cases fail on {where} ({emit}):\n" + "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("where, emit", ELSEWHERE, ids=[f"{t}-{e}" for t, e in ELSEWHERE])
def test_larger_sample_passes_elsewhere(where, emit):
    names = _elsewhere(ELSEWHERE_SLOW_SAMPLE)
    bad = regressions(names, target=where, emit=emit)
    assert not bad, f"{len(bad)} of {len(names)} host-passing node cases fail on {where} ({emit}):\n" + "\n".join(bad)
