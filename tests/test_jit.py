"""compile_model / jit (in-process execution of the shipped object) and the compile cache.

Everything runs natively on x86-64-v3 and against a private cache directory per test, so
the user's cache is never read or written and no test sees another's entries."""
from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_close, make_model, onnxruntime_outputs
from onnx import helper

import toolchain
import toolchain.version
from toolchain import cache
from toolchain.compiler import build
from toolchain.errors import CompileError
from toolchain.targets import get_profile

T = "x86-64-v3"
KWS = ROOT / "models" / "kws_dscnn.onnx"

pytestmark = pytest.mark.skipif(not get_profile(T).runs_natively(), reason="needs an x86-64-v3 host")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A fresh cache directory and an empty in-process cache for each test; logging off."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(d))
    monkeypatch.setenv("EDGEC_CACHE", "1")
    monkeypatch.delenv("EDGEC_LOG", raising=False)
    monkeypatch.delenv("EDGEC_CACHE_MAX_BYTES", raising=False)
    cache._memory.clear()
    return d


def dense(path: Path | None = None, n="N", scale=1.0) -> onnx.ModelProto:
    """x[n, 8] @ W[8, 4] + b, then Relu: small, compiles in about a second; n may be symbolic."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((8, 4)) * scale).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
                    helper.make_node("Relu", ["a"], ["y"])],
                   {"x": (np.float32, [n, 8])}, {"y": (np.float32, [n, 4])}, {"w": w, "b": b})
    if path is not None:
        path.write_bytes(m.SerializeToString())
    return m


def two_inputs() -> onnx.ModelProto:
    return make_model([helper.make_node("Mul", ["a", "b"], ["y"])],
                      {"a": (np.float32, [2, 3]), "b": (np.float32, [2, 3])}, {"y": (np.float32, [2, 3])})


def files_of(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


# ---------------------------------------------------------------- running in-process

def test_compile_model_matches_onnxruntime_on_kws_and_a_small_model():
    rng = np.random.default_rng(0)
    kws = toolchain.compile_model(KWS)
    assert kws.target == T  # target=None is the host's profile
    x = rng.standard_normal((1, 1, 49, 10)).astype(np.float32)
    got = kws(x)
    want = onnxruntime_outputs(onnx.load(str(KWS)), {"input": x})
    assert len(got) == len(want) == 1
    assert_close(got[0], want[0], what="KWS in-process")
    # a second call with other data: nothing stale in the arena or the output buffers
    x2 = rng.standard_normal((1, 1, 49, 10)).astype(np.float32)
    assert_close(kws(x2)[0], onnxruntime_outputs(onnx.load(str(KWS)), {"input": x2})[0], what="KWS 2nd")

    m = dense(n=3)
    cm = toolchain.compile_model(m)
    xs = rng.standard_normal((3, 8)).astype(np.float32)
    assert_close(cm(xs)[0], onnxruntime_outputs(m, {"x": xs})[0], what="dense")


def test_outputs_are_fresh_arrays_and_inputs_untouched():
    cm = toolchain.compile_model(dense(n=2))
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    keep = x.copy()
    y1 = cm(x)[0]
    y2 = cm(-x)[0]
    assert y1 is not y2 and not np.shares_memory(y1, y2)
    assert not np.array_equal(y1, y2)  # the first result was not overwritten by the second call
    np.testing.assert_array_equal(x, keep)
    # a non-contiguous input of the right dtype and shape is accepted (layout, not a cast)
    big = np.zeros((2, 16), np.float32)
    big[:, ::2] = x
    assert_close(cm(big[:, ::2])[0], y1, what="strided input")


def test_wrong_inputs_are_refused_naming_the_input():
    cm = toolchain.compile_model(two_inputs())
    a = np.ones((2, 3), np.float32)
    cases = [
        ((a, a.astype(np.float64)), ["'b'", "float32", "float64"]),
        ((a.reshape(3, 2), a), ["'a'", "(2, 3)", "(3, 2)"]),
        ((a,), ["2 input", "'a'", "'b'", "got 1"]),
        ((a, a, a), ["2 input", "got 3"]),
        ((a, [[1.0] * 3] * 2), ["'b'", "list"]),
        ((a, a.astype(np.int32)), ["'b'", "int32"]),
    ]
    for args, words in cases:
        with pytest.raises(CompileError) as e:
            cm(*args)
        msg = str(e.value)
        assert "\n" not in msg, msg
        for w in words:
            assert w in msg, (w, msg)
    # nothing was cast or half-run: the right call still gives the right answer
    assert_close(cm(a * 2, a * 3)[0], np.full((2, 3), 6, np.float32), what="after refusals")


def test_no_native_profile_is_a_compile_error_naming_the_cpu(monkeypatch):
    from toolchain.targets import Profile

    monkeypatch.setattr(Profile, "runs_natively", lambda self: False)
    with pytest.raises(CompileError) as e:
        toolchain.compile_model(two_inputs())
    msg = str(e.value)
    assert platform.machine() in msg and "x86-64-v3" in msg and "cortex-a76" in msg


def test_foreign_target_compiles_and_exports_but_does_not_run(tmp_path):
    cm = toolchain.compile_model(two_inputs(), "cortex-a76")
    paths = cm.export(tmp_path / "a76")
    assert paths["object"].read_bytes()[:4] == b"\x7fELF" and cm.manifest["target"]["name"] == "cortex-a76"
    a = np.ones((2, 3), np.float32)
    with pytest.raises(CompileError, match="cortex-a76.*does not run on this host"):
        cm(a, a)


def test_import_toolchain_stays_cheap():
    code = "import sys, toolchain; print(sorted(m for m in ('onnx', 'numpy', 'llvmlite') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[]"
    assert callable(toolchain.jit) and callable(toolchain.compile_model)


# ---------------------------------------------------------------- export == build

def test_export_is_byte_identical_to_build(tmp_path, monkeypatch):
    cm = toolchain.compile_model(KWS, T)
    paths = cm.export(tmp_path / "exported")
    assert set(paths) == {"object", "library", "header", "manifest", "cmake", "make"}
    monkeypatch.setenv("EDGEC_CACHE", "0")  # the reference is a real compile, not a cache hit
    res = build(KWS, T, "model", tmp_path / "built")
    assert res.compiled is not None
    exported, built = files_of(tmp_path / "exported"), files_of(tmp_path / "built")
    assert sorted(exported) == sorted(built) == sorted(p.name for p in paths.values())
    for name in built:
        assert exported[name] == built[name], name
    assert cm.object == built["model.o"]  # and the JIT ran those very bytes


def test_build_cache_hit_writes_identical_files_without_compiling(tmp_path, monkeypatch):
    src = tmp_path / "dense.onnx"
    dense(src, n=2)
    before = cache.compile_count
    first = build(src, T, "net", tmp_path / "a")
    assert cache.compile_count == before + 1 and first.compiled is not None
    cache._memory.clear()  # the second build must come from disk
    second = build(src, T, "net", tmp_path / "b")
    assert cache.compile_count == before + 1 and second.compiled is None
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert second.manifest == first.manifest
    assert {k: p.name for k, p in second.paths.items()} == {k: p.name for k, p in first.paths.items()}

    # the same file in another directory: a hit (no paths in the key), byte-identical to an
    # uncached build of it; under another file name: a miss (the manifest and header name
    # the file)
    other = tmp_path / "elsewhere" / src.name
    other.parent.mkdir()
    shutil.copy(src, other)
    hit = build(other, T, "net", tmp_path / "c")
    assert cache.compile_count == before + 1 and hit.compiled is None
    renamed = tmp_path / "elsewhere" / "renamed.onnx"
    shutil.copy(src, renamed)
    assert build(renamed, T, "net", tmp_path / "r").manifest["model"] == "renamed.onnx"
    assert cache.compile_count == before + 2
    monkeypatch.setenv("EDGEC_CACHE", "0")
    build(other, T, "net", tmp_path / "d")
    assert cache.compile_count == before + 3
    assert files_of(tmp_path / "c") == files_of(tmp_path / "d")


# ---------------------------------------------------------------- jit

def test_jit_compiles_once_per_distinct_shape(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("EDGEC_LOG", "compiles")
    src = tmp_path / "dense.onnx"
    model = dense(src, n="N")
    f = toolchain.jit(src)
    assert len(f.variants) == 0  # lazy: nothing compiled before the first call
    rng = np.random.default_rng(1)
    before = cache.compile_count
    for n in (2, 2, 5, 2, 5):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        assert_close(f(x)[0], onnxruntime_outputs(model, {"x": x})[0], what=f"jit N={n}")
    assert cache.compile_count - before == 2
    assert sorted(f.variants) == [(("N", 2),), (("N", 5),)]
    err = capfd.readouterr().err
    assert err.count("edgec: compiled:") == 2
    # the second compilation says why it was not a hit
    assert "input 'x' shape (5,8) != cached (2,8)" in err
    assert "option dims {'N': 5} != cached {'N': 2}" in err
    explained = f.variants[(("N", 5),)].explain()
    assert "input 'x' shape (5,8) != cached (2,8)" in explained and "compile+emit" in explained
    # a rank mismatch is refused before any compile, naming the input
    with pytest.raises(CompileError, match="input 'x'.*rank 2"):
        f(np.zeros((2, 8, 1), np.float32))
    assert cache.compile_count - before == 2


def test_jit_binds_one_symbol_consistently_across_inputs():
    m = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                   {"a": (np.float32, ["B", 4]), "b": (np.float32, ["B", 4])}, {"y": (np.float32, ["B", 4])})
    f = toolchain.jit(m)
    a = np.ones((3, 4), np.float32)
    assert_close(f(a, 2 * a)[0], 3 * a, what="jit add")
    with pytest.raises(CompileError, match="'B'"):
        f(np.ones((3, 4), np.float32), np.ones((2, 4), np.float32))


# ---------------------------------------------------------------- the key

def test_key_changes_with_every_field_and_only_with_them(tmp_path, monkeypatch):
    src = tmp_path / "dense.onnx"
    dense(src, n="N")
    profile = get_profile(T)

    def key(path=src, prof=profile, name="model", dims=None, emit="object", budgets=None):
        return cache.BuildHook.open(path, prof, name, {"N": 2} if dims is None else dims, emit, budgets).key

    base = key()
    # a different directory holding identical bytes, and a different time, give the same key
    copy = tmp_path / "sub" / "dense.onnx"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    os.utime(copy, (1_000_000, 1_000_000))
    assert key(copy) == base
    assert key() == base

    other_weights = tmp_path / "w" / "dense.onnx"
    other_weights.parent.mkdir()
    dense(other_weights, n="N", scale=2.0)
    renamed = tmp_path / "renamed.onnx"
    shutil.copy(src, renamed)
    changed = {
        "model bytes": key(other_weights),
        "model file name (the manifest and header name it)": key(renamed),
        "bound shape": key(dims={"N": 3}),
        "extra dim option": key(dims={"N": 2, "M": 1}),
        "target": key(prof=get_profile("cortex-a76")),
        "name": key(name="net"),
        "emit": key(emit="c"),
        "budgets": key(budgets={"flash_bytes": 1 << 20}),
        "profile contents": key(prof=dataclasses.replace(profile, vector_registers=8)),
    }
    # the profile's file: the same profile name, one comment more in its TOML
    targets = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", targets)
    with open(targets / f"{T}.toml", "a") as fh:
        fh.write("\n# edited\n")
    import toolchain.targets as targets_module
    with monkeypatch.context() as mp:
        mp.setattr(targets_module, "TARGETS_DIR", targets)
        changed["profile file"] = key()
    with monkeypatch.context() as mp:
        mp.setattr(toolchain.version, "__version__", "9.9.9")
        changed["compiler version"] = key()
    with monkeypatch.context() as mp:
        mp.setattr(cache, "_llvm_versions", lambda: ("0.0.1", "22.1.0"))
        changed["llvmlite version"] = key()
        mp.setattr(cache, "_llvm_versions", lambda: ("0.50.0", "1.2.3"))
        changed["LLVM version"] = key()
    assert key() == base

    # an input dtype (same bytes otherwise): through the fields themselves
    fields = cache.BuildHook.open(src, profile, "model", {"N": 2}, "object", None).fields
    f64 = {**fields, "inputs": [{**fields["inputs"][0], "dtype": "float64"}]}
    changed["input dtype"] = cache.make_key(f64)

    for what, k in changed.items():
        assert k != base, what
    assert len(set(changed.values())) == len(changed)
    # nothing path- or time-like went into the fields: the file's base name only
    text = repr(fields)
    assert str(tmp_path) not in text and fields["model_file"] == "dense.onnx"


# ---------------------------------------------------------------- robustness of the disk cache

def test_corrupt_entry_is_reported_discarded_and_recompiled(tmp_path, private_cache, capfd):
    m = dense(n=4)
    x = np.ones((4, 8), np.float32)
    want = toolchain.compile_model(m)(x)[0]
    entries = list((private_cache / "v1").glob("*.entry"))
    assert len(entries) == 1
    entry = entries[0]
    good = entry.read_bytes()
    at = len(good) - 100  # inside the artifacts' bytes: only the checksum can tell
    for damage in (good[: len(good) // 2],  # truncated
                   good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1:]):  # one bit flipped
        entry.write_bytes(damage)
        cache._memory.clear()
        before = cache.compile_count
        capfd.readouterr()
        cm = toolchain.compile_model(m)
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "warning" in err[0] and "corrupt" in err[0] and entry.name in err[0]
        assert cache.compile_count == before + 1  # recompiled, the bad bytes were not used
        assert_close(cm(x)[0], want, what="after a corrupt entry")
        meta, _ = cache.decode(entry.read_bytes())  # rewritten, whole again
        assert meta["key"] == cm.key


RACE = textwrap.dedent("""
    import sys
    from toolchain import cache
    from toolchain.compiler import build
    res = build(sys.argv[1], "x86-64-v3", "net", sys.argv[2])
    print(cache.compile_count, res.compiled is not None)
""")


def test_two_processes_racing_on_one_key(tmp_path, private_cache):
    src = tmp_path / "dense.onnx"
    dense(src, n=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEC_CACHE_DIR": str(private_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(src), str(tmp_path / f"out{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err
        assert "warning" not in err, err
    assert files_of(tmp_path / "out0") == files_of(tmp_path / "out1")
    entries = list((private_cache / "v1").glob("*.entry"))
    assert len(entries) == 1 and not list((private_cache / "v1").glob("*.tmp"))
    meta, files = cache.decode(entries[0].read_bytes())
    assert files == files_of(tmp_path / "out0")
    # and this process hits it from disk
    before = cache.compile_count
    res = build(src, T, "net", tmp_path / "out2")
    assert cache.compile_count == before and res.compiled is None
    assert files_of(tmp_path / "out2") == files_of(tmp_path / "out0")


def test_size_bound_evicts_least_recently_used(private_cache, monkeypatch):
    def put(tag: str):
        fields = {"model_sha256": tag * 64}
        return cache.put(tag * 64, {"fields": fields, "model_name": "m.onnx", "kinds": {"a": "x"}},
                         {"a": bytes(1000)})

    def path(tag):
        return cache.entry_path(tag * 64, tag * 64)

    size = len(cache.encode("a" * 64, {"fields": {"model_sha256": "a" * 64}, "model_name": "m.onnx",
                                       "kinds": {"a": "x"}}, {"a": bytes(1000)}))
    monkeypatch.setenv("EDGEC_CACHE_MAX_BYTES", str(int(2.5 * size)))
    put("a")
    put("b")
    os.utime(path("a"), (1000, 1000))
    os.utime(path("b"), (2000, 2000))
    put("c")  # three do not fit: the oldest goes
    assert not path("a").exists() and path("b").exists() and path("c").exists()
    os.utime(path("c"), (3000, 3000))
    cache._memory.clear()
    assert cache.get("b" * 64, "b" * 64).source == "disk"  # a hit makes b the most recent
    put("d")
    assert path("b").exists() and path("d").exists() and not path("c").exists()
    assert cache.stats()["bytes"] <= int(2.5 * size)


def test_cache_cli_stats_and_clear(tmp_path, private_cache):
    toolchain.compile_model(two_inputs())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEC_CACHE_DIR": str(private_cache)}

    def run(flag):
        return subprocess.run([sys.executable, "-m", "toolchain.cache", flag], capture_output=True, text=True,
                              env=env, check=True).stdout

    stats = run("--stats")
    assert str(private_cache) in stats and "entries    1" in stats
    assert "removed 1" in run("--clear")
    assert "entries    0" in run("--stats")
    assert not list((private_cache / "v1").glob("*.entry"))


def test_cache_disabled_compiles_every_time(monkeypatch, private_cache):
    monkeypatch.setenv("EDGEC_CACHE", "0")
    m = two_inputs()
    before = cache.compile_count
    toolchain.compile_model(m)
    toolchain.compile_model(m)
    assert cache.compile_count == before + 2
    assert not private_cache.exists() or not list(private_cache.rglob("*.entry"))


def test_the_matrix_run_twice_compiles_nothing_the_second_time(capsys):
    """`invoke ci` (toolchain.bench.run) over unchanged inputs: the second run takes every
    build from the disk cache and says so."""
    from toolchain import bench

    models = [KWS]
    assert bench.run([T, "cortex-a76"], models, runs=3, count=False) == 0
    first = capsys.readouterr().out
    cache._memory.clear()  # as a new process would start
    assert bench.run([T, "cortex-a76"], models, runs=3, count=False) == 0
    second = capsys.readouterr().out
    assert "compiled 2 of 2 builds (0 from the compile cache)" in first
    assert "compiled nothing: all 2 builds came from the compile cache" in second


def test_a_put_scans_the_directory_only_when_the_bound_may_be_passed(private_cache, monkeypatch):
    """One stat per entry on every put made a 18,000-entry cache cost 0.4 s a build: the
    process keeps an estimate and scans when it would pass the bound (or every SCAN_EVERY puts)."""
    scans = []
    real = cache.evict
    monkeypatch.setattr(cache, "evict", lambda **kw: scans.append(1) or real(**kw))
    monkeypatch.setenv("EDGEC_CACHE_MAX_BYTES", str(10 << 20))

    def put(i):
        tag = f"{i:064x}"
        cache.put(tag, {"fields": {"model_sha256": tag}, "model_name": "m.onnx", "kinds": {"a": "x"}},
                  {"a": bytes(1000)})

    for i in range(10):
        put(i)
    assert len(scans) == 1  # the first put: nothing known yet
    monkeypatch.setenv("EDGEC_CACHE_MAX_BYTES", str(12_000))  # the next puts would pass it
    for i in range(10, 13):
        put(i)
    assert len(scans) == 4 and cache.stats()["bytes"] <= 12_000
