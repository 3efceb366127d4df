"""The parallel build (--parallel N, passes/parallel.py): which nodes are cut where
(records pinned in milliseconds), that the pieces recompose the node (numpy, from the
op's reference, before any code), and the compiled <name>_run_parallel: outputs equal
to the unsplit build bit for bit and to onnxruntime, on a pool of 1, 2 and 4 threads
natively and under qemu-user, with tasks in any order, the same arena, no undefined
symbols; the same on the C path (--emit c); and the refusals."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import ROOT, assert_close, make_model
from toolchain.backends.c import STRICT_FLAGS
from toolchain.bench import seeded_inputs
from toolchain.compiler import build
from toolchain.errors import InvalidModelError
from toolchain.frontend.onnx_import import import_model
from toolchain.harness.oracle import onnxruntime_outputs
from toolchain.harness.runner import RUNTIME, link_harness, run_model, zig_cc
from toolchain.ir import DTYPES
from toolchain.ops import registry
from toolchain.passes import run_pipeline
from toolchain.passes.parallel import MIN_PIECE_MACS, choose_splits, pieces
from toolchain.targets import get_profile

HOST = "x86-64-v3"
R = np.random.default_rng(7)
KWS = ROOT / "models" / "kws_dscnn.onnx"
RESNET = ROOT / "tests" / "models" / "resnet8_cifar10.onnx"


def w(*shape):
    return R.standard_normal(shape).astype(np.float32)


def graph(nodes, inputs, outputs, inits, target=HOST):
    g = import_model(make_model(nodes, inputs, outputs, inits), "model", None)
    run_pipeline(g, vector=get_profile(target).vector_unit)
    return g


CASES = {
    "conv": ([helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])],
             {"x": (np.float32, [1, 8, 12, 12])}, {"y": (np.float32, [1, 32, 12, 12])},
             {"W": w(32, 8, 3, 3), "B": w(32)}),
    "depthwise": ([helper.make_node("Conv", ["x", "W"], ["y"], group=24, pads=[1, 1, 1, 1])],
                  {"x": (np.float32, [1, 24, 40, 40])}, {"y": (np.float32, [1, 48, 40, 40])},
                  {"W": w(48, 1, 3, 3)}),
    "grouped": ([helper.make_node("Conv", ["x", "W"], ["y"], group=4)],
                {"x": (np.float32, [1, 16, 20, 20])}, {"y": (np.float32, [1, 32, 18, 18])},
                {"W": w(32, 4, 3, 3)}),
    "conv-residual-relu": ([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                            helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                           {"x": (np.float32, [1, 16, 16, 16])}, {"y": (np.float32, [1, 16, 16, 16])},
                           {"W": w(16, 16, 3, 3)}),
    "fc-row": ([helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
               {"x": (np.float32, [1, 256])}, {"y": (np.float32, [1, 512])}, {"W": w(512, 256), "B": w(512)}),
    "gemm-rows": ([helper.make_node("Gemm", ["x", "W"], ["y"])],
                  {"x": (np.float32, [64, 96])}, {"y": (np.float32, [64, 40])}, {"W": w(96, 40)}),
    "matmul-rows": ([helper.make_node("MatMul", ["x", "W"], ["y"])],
                    {"x": (np.float32, [1, 48, 64])}, {"y": (np.float32, [1, 48, 80])}, {"W": w(64, 80)}),
    "maxpool": ([helper.make_node("Conv", ["x", "W"], ["c"]),
                 helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                {"x": (np.float32, [1, 16, 34, 34])}, {"y": (np.float32, [1, 32, 16, 16])}, {"W": w(32, 16, 3, 3)}),
}


def _piece_inputs(node, piece, arrays):
    """Each piece input from the whole operand as the backend addresses it: the bytes at
    its offset, read as the piece's shape; a constant of its own as it is."""
    out = []
    for v, part, offset, a in zip(node.inputs, piece.node.inputs, piece.offsets, arrays):
        if v is None:
            out.append(None)
        elif offset is None:
            out.append(part.data)
        else:
            flat = np.ascontiguousarray(a).reshape(-1)
            start = offset // a.itemsize
            out.append(flat[start:start + part.type.size].reshape(part.type.shape))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_pieces_recompose_the_node(case):
    g = graph(*CASES[case])
    splits = choose_splits(g.nodes, 4, get_profile(HOST).vector_unit)
    assert splits, f"{case}: nothing was cut"
    vec = get_profile(HOST).vector_unit
    for split in splits:
        node = next(n for n in g.nodes if n.name == split.node)
        op = registry.get(node.op)
        arrays = [None if v is None else v.data if v.is_const else
                  R.standard_normal(v.type.shape).astype(DTYPES[v.type.dtype]) for v in node.inputs]
        whole = op.reference(node, *arrays[:op.own_inputs or len(arrays)])[0]
        for step in node.epilogue:  # the fused steps, in numpy
            extra = arrays[step.operand] if step.operand is not None else None
            whole = {"Relu": lambda y: np.maximum(y, 0), "Add": lambda y: y + extra}[step.op](whole)
        flat = np.zeros(whole.size, whole.dtype)
        for piece in pieces(node, split, vec):
            ins = _piece_inputs(node, piece, arrays)
            got = op.reference(piece.node, *ins[:op.own_inputs or len(ins)])[0]
            for step in piece.node.epilogue:
                extra = ins[step.operand] if step.operand is not None else None
                got = {"Relu": lambda y: np.maximum(y, 0), "Add": lambda y: y + extra}[step.op](got)
            start = piece.out_offset // whole.itemsize
            flat[start:start + got.size] = got.reshape(-1)
        np.testing.assert_allclose(flat.reshape(whole.shape), whole, rtol=1e-5, atol=1e-5, err_msg=case)


def test_split_records_pinned():
    """Where the cost model cuts: output channels (whole groups of a grouped convolution),
    columns of a one-row Gemm, rows of a many-row one; balanced pieces unless whole
    register tiles make the slowest piece faster."""
    vec = get_profile(HOST).vector_unit  # 8 lanes

    def cuts(case, tasks=4):
        return [(s.axis, s.bounds) for s in choose_splits(graph(*CASES[case]).nodes, tasks, vec)]

    assert cuts("conv") == [(1, ((0, 8), (8, 16), (16, 24), (24, 32)))]
    assert cuts("conv", tasks=2) == [(1, ((0, 16), (16, 32)))]
    assert cuts("grouped") == [(1, ((0, 8), (8, 16), (16, 24), (24, 32)))]  # 8 outputs per group
    assert cuts("depthwise") == [(1, ((0, 12), (12, 24), (24, 36), (36, 48)))]  # whole groups of 2
    assert cuts("conv-residual-relu", tasks=2) == [(1, ((0, 8), (8, 16)))]  # not 12 + 4 for 6-row tiles
    assert cuts("fc-row") == [(1, ((0, 128), (128, 256), (256, 384), (384, 512)))]
    assert cuts("gemm-rows") == [(0, ((0, 16), (16, 32), (32, 48), (48, 64)))]
    assert cuts("matmul-rows") == [(1, ((0, 12), (12, 24), (24, 36), (36, 48)))]
    assert cuts("maxpool") == [(1, ((0, 8), (8, 16), (16, 24), (24, 32))),  # the Conv
                               (1, ((0, 16), (16, 32)))]  # the pool: 32,768 elements read, 2 pieces


def test_slowest_piece_cost():
    from toolchain.passes.parallel import _slowest
    assert _slowest(16, 8, 6) == 10 < _slowest(16, 12, 6) == 12  # 8 + 8 beats 12 + 4 with 6-row tiles
    assert _slowest(16, 8, 8) == 8 < _slowest(16, 10, 8) == 13  # whole 8-row tiles beat 10 + 6


def test_small_and_unsplittable_nodes_run_whole():
    vec = get_profile(HOST).vector_unit
    small = graph([helper.make_node("Conv", ["x", "W"], ["y"])], {"x": (np.float32, [1, 4, 6, 6])},
                  {"y": (np.float32, [1, 8, 4, 4])}, {"W": w(8, 4, 3, 3)})
    assert registry.get("Conv").macs(small.nodes[0]) < 2 * MIN_PIECE_MACS
    assert choose_splits(small.nodes, 4, vec) == []
    batch2 = graph([helper.make_node("Conv", ["x", "W"], ["y"])], {"x": (np.float32, [2, 16, 20, 20])},
                   {"y": (np.float32, [2, 32, 18, 18])}, {"W": w(32, 16, 3, 3)})
    assert choose_splits(batch2.nodes, 4, vec) == []  # output channels are not one block with 2 items
    softmax = graph([helper.make_node("Softmax", ["x"], ["y"])], {"x": (np.float32, [64, 1000])},
                    {"y": (np.float32, [64, 1000])}, {})
    assert choose_splits(softmax.nodes, 4, vec) == []
    assert choose_splits(graph(*CASES["conv"]).nodes, 1, vec) == []


# -- the compiled entry point --------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_builds(tmp_path_factory):
    """ResNet-8 on the host, cut into up to 4 pieces, and the same model unsplit."""
    d = tmp_path_factory.mktemp("par")
    par = build(RESNET, HOST, "model", d / "par", parallel=4)
    seq = build(RESNET, HOST, "model", d / "seq")
    return d, par, seq


def _run(build_dir, target, model_path, threads, runs=2):
    p = get_profile(target)
    man = json.loads((build_dir / "model.json").read_text())
    feeds = seeded_inputs(onnx.load(str(model_path)))
    inputs = [feeds[i["name"]] for i in man["inputs"]]
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    exe = link_harness(build_dir, "model", p)
    env = {"EDGEC_THREADS": str(threads)} if threads else None
    return run_model(exe, p, inputs, specs, runs=runs, env=env).outputs, feeds


def test_resnet_parallel_equals_unsplit_and_onnxruntime(resnet_builds):
    d, par, seq = resnet_builds
    m = par.manifest
    assert len(m["parallel"]["splits"]) == 9 and m["parallel"]["tasks"] == 4
    assert m["arena"]["size"] == seq.manifest["arena"]["size"]
    assert set(m["stack_bytes"]) == {"model_run", "model_run_parallel"}
    assert 0 < m["parallel"]["task_stack_bytes"] <= m["stack_bytes"]["model_run_parallel"]
    assert par.compiled.info.undefined == []  # the caller's parallel_for is a pointer, not a symbol
    want, feeds = _run(d / "seq", HOST, RESNET, None)
    oracle = onnxruntime_outputs(onnx.load(str(RESNET)), feeds)
    for threads in (1, 2, 4):
        got, _ = _run(d / "par", HOST, RESNET, threads, runs=3)
        for g_, w_ in zip(got, want):
            assert np.array_equal(g_, w_), f"{threads} threads differ from the unsplit build"
        for g_, o in zip(got, oracle):
            assert_close(g_, o)


def test_header_declares_the_parallel_contract(resnet_builds):
    d, par, _ = resnet_builds
    h = (d / "par" / "model.h").read_text()
    assert "} model_parallel_t;" in h
    assert ("int model_run_parallel(const void *const *inputs, void *const *outputs, void *arena, "
            "const model_parallel_t *par);") in h
    assert f"#define MODEL_TASK_STACK_SIZE {par.manifest['parallel']['task_stack_bytes']}u" in h
    assert "#define MODEL_PARALLEL_TASKS 4" in h


DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "model.h"
static unsigned char arena[MODEL_ARENA_SIZE] __attribute__((aligned(MODEL_ARENA_ALIGN)));
static int calls, pieces;
/* runs the pieces last to first: the result must not depend on their order */
static void backwards(void *ctx, int n, void (*task)(void *, int), void *arg) {
    calls++;
    pieces += n;
    for (int i = n - 1; i >= 0; i--) task(arg, i);
}
int main(void) {
    static float x[MODEL_INPUT0_ELEMS], a[MODEL_OUTPUT0_ELEMS], b[MODEL_OUTPUT0_ELEMS], c[MODEL_OUTPUT0_ELEMS];
    for (unsigned i = 0; i < MODEL_INPUT0_ELEMS; i++) x[i] = (float)((i * 37u) % 101u) / 50.0f - 1.0f;
    const void *in[] = {x};
    void *oa[] = {a}, *ob[] = {b}, *oc[] = {c};
    model_parallel_t par = {backwards, 4, NULL}, one = {backwards, 1, NULL};
    if (model_run(in, oa, arena) || model_run_parallel(in, ob, arena, &par)) return 1;
    int used = calls;
    if (model_run_parallel(in, oc, arena, &one) || model_run_parallel(in, oc, arena, NULL)) return 1;
    printf("%d %d %d %d\n", used, pieces, calls, memcmp(a, b, sizeof a) == 0 && memcmp(a, c, sizeof a) == 0);
    return 0;
}
"""


def test_any_task_order_and_no_pool(resnet_builds, tmp_path):
    """A caller's parallel_for that runs the pieces backwards gives model_run's bytes; one
    worker or a NULL par never calls it."""
    d, par, _ = resnet_builds
    (tmp_path / "main.c").write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(zig_cc(get_profile(HOST)) + [f"-I{d / 'par'}", str(tmp_path / "main.c"),
                                                str(d / "par" / "libmodel.a"), "-o", str(exe)], check=True)
    used, n, calls, same = map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                                   check=True).stdout.split())
    splits = par.manifest["parallel"]["splits"]
    assert used == len(splits) and n == sum(len(s["bounds"]) for s in splits)
    assert calls == used  # one worker, NULL par: no callback
    assert same == 1


# -- the C path (--emit c) ------------------------------------------------------------------
C_DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "model.h"
#include "parallel_pool.h"
static unsigned char arena[MODEL_ARENA_SIZE] __attribute__((aligned(MODEL_ARENA_ALIGN)));
static int calls, pieces;
static void backwards(void *ctx, int n, void (*task)(void *, int), void *arg) {
    (void)ctx;
    calls++;
    pieces += n;
    for (int i = n - 1; i >= 0; i--) task(arg, i);
}
int main(int argc, char **argv) {
    static float x[MODEL_INPUT0_ELEMS], a[MODEL_OUTPUT0_ELEMS], b[MODEL_OUTPUT0_ELEMS], c[MODEL_OUTPUT0_ELEMS];
    if (argc != 2) return 2;
    for (unsigned i = 0; i < MODEL_INPUT0_ELEMS; i++) x[i] = (float)((i * 37u) % 101u) / 50.0f - 1.0f;
    const void *in[] = {x};
    void *oa[] = {a}, *ob[] = {b}, *oc[] = {c};
    model_parallel_t par = {backwards, 4, NULL}, one = {backwards, 1, NULL};
    memset(b, 0xff, sizeof b);
    if (model_run(in, oa, arena) || model_run_parallel(in, ob, arena, &par)) return 1;
    int used = calls, same = memcmp(a, b, sizeof a) == 0;
    memset(c, 0xff, sizeof c);
    if (model_run_parallel(in, oc, arena, &one)) return 1;
    same &= memcmp(a, c, sizeof a) == 0;
    memset(c, 0xff, sizeof c);
    if (model_run_parallel(in, oc, arena, NULL)) return 1;
    same &= memcmp(a, c, sizeof a) == 0;
    int after = calls;
    /* runtime/parallel_pool.c: the caller and one worker thread */
    edgec_pool *pool = edgec_pool_create(2);
    if (pool == NULL) return 1;
    model_parallel_t pooled = {edgec_parallel_for, edgec_pool_threads(pool), pool};
    int threads = edgec_pool_threads(pool), pool_same = 1;
    for (int r = 0; r < 5; r++) {
        memset(c, 0xff, sizeof c);
        if (model_run_parallel(in, oc, arena, &pooled)) return 1;
        pool_same &= memcmp(a, c, sizeof a) == 0;
    }
    edgec_pool_destroy(pool);
    FILE *f = fopen(argv[1], "wb");
    if (f == NULL || fwrite(a, sizeof a, 1, f) != 1 || fclose(f) != 0) return 1;
    printf("%d %d %d %d %d %d\n", used, pieces, after, same, threads, pool_same);
    return 0;
}
"""


@pytest.fixture(scope="module")
def resnet_c(tmp_path_factory):
    """ResNet-8 on the C path cut into up to 4 pieces; model.c compiled with the strict C99
    flags, linked with C_DRIVER and runtime/parallel_pool.c, and run once: (build, its
    numbers, model_run's output)."""
    d = tmp_path_factory.mktemp("par-c")
    c = build(RESNET, HOST, "model", d / "c", emit="c", parallel=4)
    cc = zig_cc(get_profile(HOST))
    obj, exe, out = d / "model.o", d / "driver", d / "out.bin"
    subprocess.run(cc + STRICT_FLAGS + ["-c", str(d / "c" / "model.c"), "-o", str(obj)], check=True)
    (d / "main.c").write_text(C_DRIVER)
    subprocess.run(cc + [f"-I{d / 'c'}", f"-I{RUNTIME}", str(d / "main.c"), str(RUNTIME / "parallel_pool.c"), str(obj),
                         "-o", str(exe)], check=True)
    numbers = list(map(int, subprocess.run([str(exe), str(out)], capture_output=True, text=True,
                                           check=True).stdout.split()))
    spec = c.manifest["outputs"][0]
    return c, numbers, np.fromfile(out, dtype=np.float32).reshape(spec["shape"])


def test_c_path_any_task_order_and_no_pool(resnet_c):
    """The C path's model_run_parallel with pieces run backwards, one worker and NULL gives
    model_run's bytes, which agree with onnxruntime."""
    c, (used, n, after, same, _, _), got = resnet_c
    splits = c.manifest["parallel"]["splits"]
    assert len(splits) == 9 and c.manifest["parallel"]["tasks"] == 4
    assert set(c.manifest["stack_bytes"]) == {"model_run", "model_run_parallel"}
    assert 0 < c.manifest["parallel"]["task_stack_bytes"] <= c.manifest["stack_bytes"]["model_run_parallel"]
    assert c.compiled.info.undefined == []
    assert used == len(splits) and n == sum(len(s["bounds"]) for s in splits)
    assert after == used  # one worker, NULL par: no callback
    assert same == 1
    spec = c.manifest["inputs"][0]
    x = (np.arange(int(np.prod(spec["shape"])), dtype=np.uint32) * 37 % 101).astype(np.float32)
    x = (x / np.float32(50) - np.float32(1)).reshape(spec["shape"])
    want = onnxruntime_outputs(onnx.load(str(RESNET)), {spec["name"]: x})[0]
    assert_close(got, want)


def test_c_path_on_a_pool_of_two_threads(resnet_c):
    """runtime/parallel_pool.c with 2 threads: the same bytes as model_run, five times over."""
    _, (*_, threads, pool_same), _ = resnet_c
    assert threads == 2
    assert pool_same == 1


def test_c_path_header_has_the_object_paths_parallel_block(resnet_builds, resnet_c):
    """The header's multi-core block is the object build's, but for the task stack (the C
    compiler's frames), which is the C build's own."""
    d, par, _ = resnet_builds
    c = resnet_c[0]

    def block(h):
        lines = h.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("/* Multi-core"))
        end = next(i for i, ln in enumerate(lines) if ln.startswith("int model_run_parallel("))
        return lines[start:end + 1]

    obj, src = block((d / "par" / "model.h").read_text()), block(c.paths["header"].read_text())
    stack = "#define MODEL_TASK_STACK_SIZE {}u  /* worst-case stack of one task */"
    assert stack.format(par.manifest["parallel"]["task_stack_bytes"]) in obj
    assert stack.format(c.manifest["parallel"]["task_stack_bytes"]) in src
    assert [ln for ln in src if "TASK_STACK_SIZE " not in ln] == [ln for ln in obj if "TASK_STACK_SIZE " not in ln]
    assert len(src) == len(obj) > 8


@pytest.mark.parametrize("emulated", ["cortex-a76", "rv64gcv"])
def test_kws_four_threads_under_qemu(emulated, tmp_path):
    par = build(KWS, emulated, "model", tmp_path / "par", parallel=4)
    assert par.manifest["parallel"]["splits"]
    got, feeds = _run(tmp_path / "par", emulated, KWS, 4, runs=1)
    alone, _ = _run(tmp_path / "par", emulated, KWS, 1, runs=1)
    oracle = onnxruntime_outputs(onnx.load(str(KWS)), feeds)
    for g_, a, o in zip(got, alone, oracle):
        assert np.array_equal(g_, a)
        assert_close(g_, o)


def test_pool_source_is_the_runtime_one():
    assert (RUNTIME / "parallel_pool.c").is_file() and (RUNTIME / "parallel_pool.h").is_file()


# -- refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"parallel": 1}, "2 or more; got 1"),
    ({"parallel": 0}, "2 or more; got 0"),
    ({"parallel": 65}, "above 64"),
    ({"parallel": 2, "weights": "external"}, "not supported with --weights external"),
    ({"parallel": 2, "emit": "c", "weights": "external"}, "not supported with --weights external"),
    ({"parallel": 2, "grad": "reverse"}, "inference builds"),
    ({"parallel": 2, "train": "mse"}, "inference builds"),
])
def test_refusals_write_nothing(kw, match, tmp_path):
    with pytest.raises(InvalidModelError, match=match):
        build(KWS, HOST, "model", tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bounded_batch_refused(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (np.float32, ["N", 8])},
                   {"y": (np.float32, ["N", 8])})
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(InvalidModelError, match="bounded dimension"):
        build(tmp_path / "m.onnx", HOST, "model", tmp_path / "out", dims={"N": (1, 4)}, parallel=2)


def test_cli_refusal_exit_code(tmp_path):
    import sys
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", "--target", HOST, "--out", str(tmp_path / "o"),
                           "--parallel", "1"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "--parallel takes the most pieces a node is cut into, 2 or more; got 1" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_compile_cache_keys_parallel(tmp_path, monkeypatch):
    """A --parallel build comes from the cache the second time, byte for byte; another N or
    no --parallel is another build."""
    from toolchain import cache
    monkeypatch.setenv("EDGEC_CACHE", "1")
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path / "cache"))
    first = build(KWS, HOST, "model", tmp_path / "a", parallel=2)
    again = build(KWS, HOST, "model", tmp_path / "b", parallel=2)
    other = build(KWS, HOST, "model", tmp_path / "c", parallel=4)
    plain = build(KWS, HOST, "model", tmp_path / "d")
    assert first.compiled is not None and again.compiled is None  # the second was a hit
    assert other.compiled is not None and plain.compiled is not None
    for f in ("model.o", "model.h", "model.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert again.manifest["parallel"] == first.manifest["parallel"]
    assert cache.events[-2]["fields"]["options"]["parallel"] == 4
    assert "parallel" not in plain.manifest and "parallel" not in cache.events[-1]["fields"]["options"]


@pytest.mark.parametrize("where", [HOST, "cortex-a76"])
def test_bench_threads_checks_and_times_the_parallel_build(where, tmp_path):
    """`invoke bench --threads 2`: the --parallel 2 build on 2 threads, checked against
    onnxruntime on every target, timed (against one thread and onnxruntime on 2) natively."""
    from toolchain.bench import bench, threads_table
    r = bench(KWS, where, tmp_path, runs=2, count=False, threads=2)
    assert r.ok, r.error
    t = r.extra["threads"]
    assert t["n"] == 2 and t["splits"] > 0 and t["max_abs_err"] < 1e-5 and t["arena_bytes"] == r.arena_bytes
    native = where == HOST
    assert ("speedup" in t) == native and ("ratio_vs_ort" in t) == native
    if native:
        assert t["speedup"] > 0 and t["ort_median_ns"] > 0
    row = threads_table([r]).splitlines()[-1]
    assert row.split()[:3] == ["kws_dscnn", where, str(t["splits"])]
    assert ("checked" in row) != native
