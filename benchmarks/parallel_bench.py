"""Multi-core scaling of the parallel build: `python benchmarks/parallel_bench.py
[--model M.onnx ...] [--threads 2] [--tasks N] [--runs 30]`.

Native on the host (x86-64-v3), per model, all in the same run and alternating rounds so a
change in machine load hits every variant alike (medians of the harness's own clock):
- the ordinary build's <name>_run (one thread),
- the --parallel build's <name>_run (its pieces in turn, one thread) and <name>_run_parallel
  on a pool of T threads (runtime/parallel_pool.c),
- onnxruntime with 1 and with T intra-op threads.
Prints latencies, our speedup at T threads over our one-thread build, and each against
onnxruntime at the same thread count. Also the code and arena of both builds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.bench import seeded_inputs  # noqa: E402
from toolchain.compiler import build  # noqa: E402
from toolchain.harness.oracle import onnxruntime_session  # noqa: E402
from toolchain.harness.runner import link_harness, run_model  # noqa: E402
from toolchain.targets import get_profile  # noqa: E402

HOST = "x86-64-v3"
MODELS = [ROOT / "models" / "kws_dscnn.onnx", ROOT / "tests" / "models" / "resnet8_cifar10.onnx",
          ROOT / "tests" / "models" / "mobilenet_v1_025_vww.onnx", ROOT / "tests" / "models" / "fc_autoencoder.onnx",
          ROOT / "tests" / "models" / "transformer_encoder.onnx"]


def measure(model_path: Path, work: Path, threads: int, tasks: int, runs: int, rounds: int) -> dict:
    p = get_profile(HOST)
    model = onnx.load(str(model_path))
    seq = build(model_path, HOST, "model", work / "seq")
    par = build(model_path, HOST, "model", work / "par", parallel=tasks)
    feeds = seeded_inputs(model)
    man = par.manifest
    inputs = [feeds[i["name"]] for i in man["inputs"]]
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    exes = {"seq": link_harness(work / "seq", "model", p), "par": link_harness(work / "par", "model", p)}
    sessions = {1: onnxruntime_session(model), threads: onnxruntime_session(model, threads=threads)}
    times = {k: [] for k in ("ours 1", "split 1", f"ours {threads}", "ort 1", f"ort {threads}")}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(rounds):
        time.sleep(0.2)  # onnxruntime's pool threads spin a while after its runs: let them settle
        times["ours 1"] += run_model(exes["seq"], p, inputs, specs, runs=runs).times_ns[1:]
        times["split 1"] += run_model(exes["par"], p, inputs, specs, runs=runs).times_ns[1:]
        times[f"ours {threads}"] += run_model(exes["par"], p, inputs, specs, runs=runs,
                                              env={"EDGEC_THREADS": str(threads)}).times_ns[1:]
        for n, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                s.run(None, feeds)
                times[f"ort {n}"].append(time.perf_counter_ns() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": model_path.stem, "median_ns": med, "splits": len(man["parallel"]["splits"]),
            "code": (seq.manifest["code_bytes"], man["code_bytes"]),
            "arena": (seq.manifest["arena"]["size"], man["arena"]["size"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="ONNX file (repeatable; default: the bundled models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=None, help="--parallel N of the build (default: --threads)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    t = a.threads
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-par-") as tmp:
        for i, m in enumerate(a.model or MODELS):
            r = measure(Path(m), Path(tmp) / str(i), t, a.tasks or t, a.runs, a.rounds)
            rows.append(r)
            md = r["median_ns"]
            print(f"{r['model']:28s} splits {r['splits']:3d}  run {md['ours 1'] / 1e3:9.1f} us  "
                  f"split x1 {md['split 1'] / 1e3:9.1f}  x{t} {md[f'ours {t}'] / 1e3:9.1f} us  "
                  f"speedup {md['ours 1'] / md[f'ours {t}']:.2f}x  |  ort x1 {md['ort 1'] / 1e3:9.1f}  "
                  f"x{t} {md[f'ort {t}'] / 1e3:9.1f} us  ratio x1 {md['ours 1'] / md['ort 1']:.2f} "
                  f"x{t} {md[f'ours {t}'] / md[f'ort {t}']:.2f}  |  code {r['code'][0]}->{r['code'][1]} B  "
                  f"arena {r['arena'][0]}->{r['arena'][1]} B", flush=True)
    speedups = [r["median_ns"]["ours 1"] / r["median_ns"][f"ours {t}"] for r in rows]
    print(f"geomean speedup at {t} threads: {float(np.exp(np.mean(np.log(speedups)))):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
