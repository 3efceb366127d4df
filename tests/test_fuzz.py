"""The differential fuzzer's short deterministic run (tests/fuzz.py has the long one):
random valid graphs must build and match onnxruntime, mutated models must end as a clean
one-line CompileError or a build that matches onnxruntime; no traceback, hang or crash."""
import time

import fuzz


def test_cases_are_deterministic_by_seed():
    for i in range(5):
        a, b = fuzz.random_graph(7, i), fuzz.random_graph(7, i)
        assert (a is None) == (b is None)
        if a is not None:
            assert a[0].SerializeToString() == b[0].SerializeToString()
            assert all((a[1][k] == b[1][k]).all() for k in a[1])
        assert fuzz.mutation_case(7, i, "real") == fuzz.mutation_case(7, i, "real")
    assert fuzz.random_graph(7, 0)[0].SerializeToString() != fuzz.random_graph(8, 0)[0].SerializeToString()


def test_short_fuzz_run_finds_nothing(tmp_path):
    start = time.monotonic()
    counts, found = fuzz.run(graphs=20, mutations=40, seed=0, bases="generated", timeout=60,
                             findings=tmp_path, log=lambda s: None)
    assert not found, found
    assert sum(counts.values()) == 60
    matched = counts["graph: match"]
    assert matched >= 15, counts  # the generator's graphs are valid: nearly all must build and match
    assert any(k.startswith("mutation: refused") for k in counts), counts
    assert time.monotonic() - start < 120
