"""What the compile cache and the in-process runner cost: `python benchmarks/jit_bench.py`.

Why: the cache is only worth having if a hit is orders of magnitude cheaper than a compile,
and compile_model is only a usable inference path if a call adds little to the model's own
time. Printed per model (bundled KWS DS-CNN, ResNet-8):

  cold compile        compile_model with an empty cache (imports already paid)
  warm hit            compile_model again in the same process (in-process cache)
  disk hit            compile_model in a fresh process over the filled cache: the call
                      itself, and the process's wall time (interpreter + imports included)
  CLI cold / disk hit `python -m toolchain build` wall time, empty cache vs filled
  per call            CompiledModel.__call__ and the bare entry call (fastest batch each), and the
                      median paired difference (the overhead: checks, copies in and out, the lock)

The cache lives in a temporary directory: the user's cache is not touched.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODELS = [ROOT / "models" / "kws_dscnn.onnx", ROOT / "tests" / "models" / "resnet8_cifar10.onnx"]

DISK_HIT = """
import sys, time
t0 = time.perf_counter()
import onnx, numpy, llvmlite.binding, toolchain.inprocess  # what a hit needs anyway
t1 = time.perf_counter()
cm = toolchain.compile_model(sys.argv[1])
t2 = time.perf_counter()
print(f"{t1 - t0:.6f}", f"{t2 - t1:.6f}", cm.event["source"])
"""


def paired(call, bare, n: int) -> tuple[float, float, float]:
    """Medians of call, of bare, and of their difference call by call, the two alternating
    one call at a time: on a shared machine the model's own time drifts by more than the
    overhead, and a paired difference cancels the drift."""
    tc, tb, d = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        bare()
        t2 = time.perf_counter()
        tc.append(t1 - t0)
        tb.append(t2 - t1)
        d.append((t1 - t0) - (t2 - t1))
    return statistics.median(tc), statistics.median(tb), statistics.median(d)


def best_times(fns, n: int, repeat: int = 15) -> list[float]:
    """Fastest of `repeat` batches of n calls for each fn, batches of the fns alternating
    (so drift on a shared machine hits both alike); seconds per call."""
    runs = [[] for _ in fns]
    for _ in range(repeat):
        for fn, r in zip(fns, runs):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            r.append((time.perf_counter() - t) / n)
    return [min(r) for r in runs]


def fmt(s: float) -> str:
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.1f} ms" if s < 1 else f"{s:8.2f} s "


def tiny_model():
    import numpy as np
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), np.zeros((1, 8), np.float32)


def main():
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        os.environ["EDGEC_CACHE_DIR"] = str(Path(tmp) / "cache")
        os.environ.pop("EDGEC_CACHE", None)
        import numpy as np

        import toolchain
        from toolchain import cache

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        tiny, tx = tiny_model()
        cm = toolchain.compile_model(tiny)  # pays the imports and LLVM start-up once
        call, bare = best_times([lambda: cm(tx), lambda: cm._fn(cm._ins, cm._outs, cm._arena)], 5000)
        print(f"tiny Relu[1x8]: __call__ {fmt(call)}, bare entry call {fmt(bare)}, overhead {fmt(call - bare)}")
        print()
        for model in MODELS:
            print(f"{model.name}")
            cache.clear()
            t = time.perf_counter()
            cm = toolchain.compile_model(model)
            print(f"  cold compile (compile_model)     {fmt(time.perf_counter() - t)}")
            t = time.perf_counter()
            toolchain.compile_model(model)
            print(f"  warm in-process hit              {fmt(time.perf_counter() - t)}")
            out = subprocess.run([sys.executable, "-c", DISK_HIT, str(model)], env=env, capture_output=True,
                                 text=True, check=True)
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", DISK_HIT, str(model)], env=env, capture_output=True,
                                 text=True, check=True)
            wall = time.perf_counter() - t
            imports, secs, source = out.stdout.split()
            print(f"  disk hit, other process          {fmt(float(secs))} in compile_model ({source}); "
                  f"imports {fmt(float(imports))}, process wall {fmt(wall)}")
            cli = [sys.executable, "-m", "toolchain", "build", "--target", cm.target, "--model", str(model),
                   "--out", str(Path(tmp) / "cli")]
            t = time.perf_counter()
            subprocess.run(cli, env={**env, "EDGEC_CACHE": "0"}, capture_output=True, check=True)
            cold_cli = time.perf_counter() - t
            t = time.perf_counter()
            subprocess.run(cli, env=env, capture_output=True, check=True)
            hit_cli = time.perf_counter() - t
            print(f"  python -m toolchain build: cold  {fmt(cold_cli)}, disk hit {fmt(hit_cli)}")
            x = [np.random.default_rng(0).standard_normal(s).astype(d) for _, d, s in cm.inputs]
            n = 2000
            call, bare, over = paired(lambda: cm(*x), lambda: cm._fn(cm._ins, cm._outs, cm._arena), n)
            print(f"  per call (medians of {n}, alternating): __call__ {fmt(call)}, bare entry call {fmt(bare)}, "
                  f"paired overhead {fmt(over)}")
            print()
        imp = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import onnx; "
                              "print(time.perf_counter()-t)"], env=env, capture_output=True, text=True, check=True)
        print(f"(for scale: `import onnx` alone takes {fmt(float(imp.stdout))} in a fresh process here)")


if __name__ == "__main__":
    main()
