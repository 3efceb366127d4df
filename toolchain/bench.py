"""Benchmarks and the test matrix: build a model for a target, run it on the target's
instruction set, compare with onnxruntime, count guest instructions per inference with
the QEMU plugin, and time it (emulated, or native where the host has the ISA, next to
onnxruntime measured alternately in the same run).

    invoke bench --target cortex-a76 [--model M] [--json PATH]
    invoke bench --target cortex-a76 --train [--grad reverse]  # also insns per training step / pullback
    invoke bench --target cortex-m4 --cycles    # also ESTIMATED cycles from the core's [cycles] table
    invoke ci                                   # every target x every model of ci/matrix.toml
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .compiler import PROJECT_ROOT, build
from .harness.oracle import ATOL, RTOL, onnxruntime_session
from .harness.cycles import count_mnemonics, estimate_cycles
from .harness.plugin import count_instructions
from .harness.runner import HarnessError, link_harness, link_train_harness, run_model
from .harness.system import link_system_harness, run_system
from .errors import BudgetError
from .quantize import output_steps
from .targets import get_profile, runnable_targets

MATRIX = PROJECT_ROOT / "ci" / "matrix.toml"
LEARNING_RATE = 0.01  # of the training steps --train counts


def matrix() -> tuple[list[str], list[Path]]:
    data = tomllib.loads(MATRIX.read_text())
    return runnable_targets("user") + runnable_targets("system"), [PROJECT_ROOT / m for m in data["models"]]


@dataclass
class ErrorReport:
    max_abs: float
    max_rel: float
    worst_index: tuple
    got: float
    want: float
    ok: bool

    def __str__(self):
        return (f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, worst at {self.worst_index} "
                f"(got {self.got:.6g}, want {self.want:.6g})")


def error_report(got, want, rtol=RTOL, atol=ATOL) -> ErrorReport:
    """How far `got` is from `want`: the worst element by the allclose criterion."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return ErrorReport(float("inf"), float("inf"), (), float("nan"), float("nan"), False)
    if got.size == 0:
        return ErrorReport(0.0, 0.0, (), 0.0, 0.0, True)
    err = np.abs(got - want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    err = np.where(same, 0.0, err)
    excess = err - rtol * np.abs(want)
    i = np.unravel_index(int(np.argmax(np.where(np.isnan(excess), np.inf, excess))), err.shape)
    rel = err / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    ok = bool(np.all((err <= atol + rtol * np.abs(want)) | same))
    return ErrorReport(float(err.max()), float(rel.max()), tuple(int(j) for j in i), float(got[i]),
                       float(want[i]), ok)


def seeded_inputs(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


@dataclass
class Result:
    model: str
    target: str
    ok: bool = False
    error: str = ""
    max_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    worst: str = ""
    macs: int = 0
    insns_per_inference: int = 0
    insns_per_mac: float = float("nan")
    median_ns: float = float("nan")
    p99_ns: float = float("nan")
    timing: str = ""  # "native" or "emulated"
    ort_median_ns: float = float("nan")
    ratio_vs_ort: float = float("nan")
    arena_bytes: int = 0
    code_bytes: int = 0
    weight_bytes: int = 0
    refused: str = ""  # over the target part's flash/RAM budget: the BudgetError's message
    insns_per_train_step: int = 0  # --train: one train_step (forward, loss, pullback, update)
    train_ratio: float = float("nan")  # insns per training step / insns per inference
    insns_per_primal: int = 0  # --grad reverse: one <name>_primal call
    insns_per_pullback: int = 0  # and one <name>_pullback call after it
    grad_ratio: float = float("nan")  # (primal + pullback) / inference
    extra: dict = field(default_factory=dict)


def bench(model_path: Path, target: str, workdir: Path, runs: int = 20, count: bool = True,
          compare: bool = True, train: str | None = None, grad: str | None = None,
          learning_rate: float = LEARNING_RATE, cycles: bool = False, threads: int = 1) -> Result:
    """Build, check against onnxruntime, count instructions, time. Failures are recorded
    in the result (the matrix goes on), not raised. train (a loss, e.g. "mse") and grad
    ("reverse") also build those variants and count their instructions (bench_train).
    cycles: on a system-mode target with a [cycles] table, also the cycle ESTIMATE of one
    inference (harness/cycles.py) in extra["cycle_estimate"]. threads > 1: also a --parallel
    build on that many threads (bench_threads), in extra["threads"]."""
    model_path = Path(model_path)
    res = Result(model_path.stem, target)
    try:
        _bench_into(res, model_path, target, workdir, runs, count, compare, cycles)
        if threads > 1 and res.ok and not res.refused and get_profile(target).run_mode != "system":
            bench_threads(res, model_path, target, workdir, threads, runs)
    except Exception as e:  # noqa: BLE001  (one failing cell must not stop the matrix)
        res.ok, res.error = False, f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if (train or grad) and not res.refused:
        try:
            bench_train(res, model_path, target, workdir, train, grad, learning_rate, compare)
        except Exception as e:  # noqa: BLE001
            res.ok = False
            res.error = (res.error + "; " if res.error else "") + f"{'train' if train else 'grad'}: {type(e).__name__}: {e}".splitlines()[0][:300]
    return res


def bench_train(res: Result, model_path: Path, target: str, workdir: Path, train: str | None,
                grad: str | None, learning_rate: float = LEARNING_RATE, compare: bool = True):
    """Instructions per training step (a --train build: the loss against a zero target of
    each output's shape, default optimizer; params_init once, then train_step) and per
    primal and pullback (a --grad reverse build, seeded output cotangents), counted like an
    inference: N steps minus 1 step, on the bench's seeded inputs. The losses of the first
    and of the third step go into extra["train_losses"] (refused unless finite)."""
    profile = get_profile(target)
    if profile.run_mode == "system":
        raise HarnessError(f"training and reverse-mode counts run under qemu-user; {target} is a system-mode board")
    if grad not in (None, "reverse"):
        raise ValueError(f"--grad {grad}: only reverse mode has a pullback to count")
    model = onnx.load(str(model_path))
    feeds = seeded_inputs(model)
    if train:
        out = Path(workdir) / f"{target}-{model_path.stem}-train"
        start = time.perf_counter()
        man = build(model_path, target, "model", out, train=train).manifest
        res.extra["train_build_s"] = round(time.perf_counter() - start, 1)
        res.extra["train_arena"], res.extra["params_bytes"] = man["arena"]["size"], man["train"]["params_size"]
        targets = [np.zeros(t["shape"], t["dtype"]) for t in man["train"]["targets"]]
        data = [feeds[i["name"]] for i in man["inputs"]] + targets
        exe = link_train_harness(out, "model", profile, learning_rate)
        losses = run_model(exe, profile, data, [("float32", (2,))], runs=3).outputs[0]
        res.extra["train_losses"] = [float(v) for v in losses]
        if not np.all(np.isfinite(losses)):
            raise HarnessError(f"training step losses not finite: {losses.tolist()}")
        res.insns_per_train_step = count_instructions(exe, profile, data, [("float32", (2,))], runs=3).per_inference
        if res.insns_per_inference:
            res.train_ratio = res.insns_per_train_step / res.insns_per_inference
    if grad:
        out = Path(workdir) / f"{target}-{model_path.stem}-grad"
        start = time.perf_counter()
        man = build(model_path, target, "model", out, grad=grad).manifest
        res.extra["grad_build_s"] = round(time.perf_counter() - start, 1)
        rng = np.random.default_rng(1)
        cts = [rng.standard_normal(c["shape"]).astype(c["dtype"]) for c in man["grad"]["output_cotangents"]]
        data = [feeds[i["name"]] for i in man["inputs"]] + cts
        specs = [(v["dtype"], tuple(v["shape"])) for v in man["outputs"] + man["grad"]["input_cotangents"]
                 + man["grad"]["params"]]
        exe = link_train_harness(out, "model", profile)
        if compare:  # the primal is the inference: its outputs against onnxruntime
            got = run_model(exe, profile, data, specs, runs=1).outputs
            want = onnxruntime_session(model).run(None, feeds)
            bad = [r for r in (error_report(g, w) for g, w in zip(got, want)) if not r.ok]
            if bad:
                raise HarnessError(f"the primal's outputs differ from onnxruntime: {bad[0]}")
        both = count_instructions(exe, profile, data, specs, runs=3).per_inference
        res.insns_per_primal = count_instructions(exe, profile, data, specs, runs=3,
                                                  env={"EDGEC_PRIMAL_ONLY": "1"}).per_inference
        res.insns_per_pullback = both - res.insns_per_primal
        if res.insns_per_inference:
            res.grad_ratio = both / res.insns_per_inference


def against_onnxruntime(model, feeds, outputs, session=None) -> tuple[bool, ErrorReport]:
    """(all outputs within tolerance, the worst report). A quantized model against its ONNX
    semantics (the graph as written), within one quantization step (a product's float
    rounding against our exact integers); session: a float model's one-thread session."""
    steps = output_steps(model)
    quantized = any(steps)
    if quantized or session is None:
        session = onnxruntime_session(model, optimized=not quantized)
    reports = [error_report(g, w, atol=max(ATOL, 1.001 * s) if s else ATOL)
               for g, w, s in zip(outputs, session.run(None, feeds), steps)]
    return all(r.ok for r in reports), max(reports, key=lambda r: r.max_abs)


def _bench_into(res, model_path, target, workdir, runs, count, compare, cycles=False):
    profile = get_profile(target)
    model = onnx.load(str(model_path))
    out = Path(workdir) / f"{target}-{model_path.stem}"
    try:
        built = build(model_path, target, "model", out)
    except BudgetError as e:  # the part cannot hold it: a verdict, not a failure
        res.ok, res.refused = True, str(e)
        return
    res.extra["compiled"] = built.compiled is not None  # False: the compile cache had it
    man = built.manifest
    res.macs, res.arena_bytes = man["macs"], man["arena"]["size"]
    res.code_bytes, res.weight_bytes = man["code_bytes"], man["weight_bytes"]
    feeds = seeded_inputs(model)
    inputs = [feeds[i["name"]] for i in man["inputs"]]
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    session = onnxruntime_session(model) if compare or profile.runs_natively() else None
    if profile.run_mode == "system":  # a QEMU board: inputs linked in, no guest clock
        exe = link_system_harness(out, "model", profile, inputs, [o["bytes"] for o in man["outputs"]])
        run = run_system(exe, profile, specs, runs=1)
    else:
        exe = link_harness(out, "model", profile)
        run = run_model(exe, profile, inputs, specs, runs=runs)
    res.ok = True
    if compare:
        res.ok, worst = against_onnxruntime(model, feeds, run.outputs, session)
        res.max_abs_err, res.max_rel_err, res.worst = worst.max_abs, worst.max_rel, str(worst)
        if not res.ok:
            res.error = f"mismatch vs onnxruntime: {worst}"
    if count:
        c = count_instructions(exe, profile, inputs, specs, runs=3)
        res.insns_per_inference = c.per_inference
        res.insns_per_mac = c.per_inference / res.macs if res.macs else float("nan")
    if profile.run_mode == "system":
        res.timing = "none"  # emulated boards have no meaningful clock: the counts are the figure
        if cycles and profile.cycles:
            res.extra["cycle_estimate"] = cycle_estimate(exe, profile, inputs, specs, res.insns_per_inference)
        return
    if profile.runs_natively():
        res.timing = "native"
        ours, theirs = _alternate(exe, profile, inputs, specs, session, feeds, runs)
        res.ort_median_ns = float(np.median(theirs))
        res.ratio_vs_ort = float(np.median(ours)) / res.ort_median_ns
    else:
        res.timing = "emulated"
        ours = run.times_ns
    res.median_ns = float(np.median(ours))
    res.p99_ns = float(np.percentile(ours, 99))


def bench_threads(res: Result, model_path: Path, target: str, workdir: Path, threads: int, runs: int):
    """A --parallel N build run by the harness's pool of N threads: its outputs against
    onnxruntime (a failure fails the cell), and natively its latency against the one-thread
    figure and onnxruntime with N intra-op threads (alternating rounds)."""
    profile = get_profile(target)
    model = onnx.load(str(model_path))
    out = Path(workdir) / f"{target}-{model_path.stem}-x{threads}"
    man = build(model_path, target, "model", out, parallel=threads).manifest
    feeds = seeded_inputs(model)
    inputs = [feeds[i["name"]] for i in man["inputs"]]
    specs = [(o["dtype"], tuple(o["shape"])) for o in man["outputs"]]
    exe = link_harness(out, "model", profile)
    env = {"EDGEC_THREADS": str(threads)}
    run = run_model(exe, profile, inputs, specs, runs=1, env=env)
    ok, worst = against_onnxruntime(model, feeds, run.outputs)
    info = {"n": threads, "splits": len(man["parallel"]["splits"]), "code_bytes": man["code_bytes"],
            "arena_bytes": man["arena"]["size"], "max_abs_err": worst.max_abs}
    res.extra["threads"] = info
    if not ok:
        res.ok, res.error = False, f"{threads} threads: mismatch vs onnxruntime: {worst}"
        return
    if profile.runs_natively():
        session = onnxruntime_session(model, threads=threads)
        ours, theirs = _alternate(exe, profile, inputs, specs, session, feeds, runs, env=env)
        info["median_ns"], info["ort_median_ns"] = float(np.median(ours)), float(np.median(theirs))
        info["speedup"] = res.median_ns / info["median_ns"]
        info["ratio_vs_ort"] = info["median_ns"] / info["ort_median_ns"]


def threads_table(results: list[Result]) -> str:
    rows = [r for r in results if "threads" in r.extra]
    if not rows:
        return ""
    n = rows[0].extra["threads"]["n"]
    head = (f"{'model':26} {'target':11} {'splits':>6} {'x1':>10} {f'x{n}':>10} {'speedup':>8} "
            f"{f'ORT x{n}':>10} {'vs ORT':>7} {'code':>8}")
    lines = [f"--parallel {n}, on {n} threads (the harness's pthread pool; onnxruntime with {n} intra-op threads)",
             head, "-" * len(head)]
    for r in rows:
        t = r.extra["threads"]
        native = "median_ns" in t
        lines.append(f"{r.model:26} {r.target:11} {t['splits']:6d} {_fmt_ns(r.median_ns) if native else '-':>10} "
                     f"{_fmt_ns(t['median_ns']) if native else 'checked':>10} "
                     f"{('%.2fx' % t['speedup']) if native else '-':>8} "
                     f"{_fmt_ns(t['ort_median_ns']) if native else '-':>10} "
                     f"{('%.2f' % t['ratio_vs_ort']) if native else '-':>7} {t['code_bytes']:8d}")
    return "\n".join(lines)


def cycle_estimate(exe, profile, inputs, specs, insns: int) -> dict:
    """Estimated cycles of one inference: instructions per mnemonic (N runs minus 1 run),
    each charged its class's cycles from the profile's [cycles] table. A failure (say, no
    llvm-mc to name MVE encodings) is recorded as {"error": ...}: the estimate is an extra."""
    try:
        counts = count_mnemonics(exe, profile, inputs, specs, runs=3)
        if insns and sum(counts.values()) != insns:
            raise HarnessError(f"per-mnemonic counts sum to {sum(counts.values())}, not the {insns} counted")
        total, per_class = estimate_cycles(counts, profile.cycles)
    except HarnessError as e:
        return {"error": str(e).splitlines()[0][:300]}
    return {"estimated_cycles": round(total), "insns": sum(counts.values()),
            "note": "ESTIMATE: instructions per mnemonic x the core's per-class cycles table, not measured",
            "table": dict(profile.cycles), "per_class": per_class, "mnemonics": counts}


def _alternate(exe, profile, inputs, specs, session, feeds, runs, rounds=5, env=None):
    """Our library and onnxruntime measured in alternating rounds, so that a change in
    machine load hits both alike; ours timed inside the harness. env: the harness's (its
    thread count); then a pause before each round of ours, as onnxruntime's pool threads
    spin a while after its runs and would take a core."""
    ours, theirs = [], []
    session.run(None, feeds)
    for _ in range(rounds):
        if env:
            time.sleep(0.2)
        ours += run_model(exe, profile, inputs, specs, runs=runs, env=env).times_ns[1:]  # first run warms caches
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            session.run(None, feeds)
            theirs.append(time.perf_counter_ns() - t0)
    return ours, theirs


def _fmt_ns(ns):
    if ns != ns:
        return "-"
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.1f} us"


def measure_clock_mhz(adds_per_iteration=100, iterations=2_000_000) -> float:
    """The core's clock while it runs, measured: a JIT-compiled chain of dependent integer
    adds (one cycle each on every x86-64 core since 2011) timed over ~0.05 s; the best of
    three. /proc/cpuinfo's figure is the nominal clock, not the turbo clock the GEMM runs at."""
    import ctypes

    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    chain = "; ".join(["add $$1, $0"] * adds_per_iteration)
    module = llvm.parse_assembly(f"""
define i64 @chain(i64 %n) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i2, %loop]
  %x = phi i64 [0, %entry], [%y, %loop]
  %y = call i64 asm sideeffect "{chain}", "=r,0"(i64 %x)
  %i2 = add i64 %i, 1
  %more = icmp slt i64 %i2, %n
  br i1 %more, label %loop, label %done
done:
  ret i64 %y
}}""")
    engine = llvm.create_mcjit_compiler(module, llvm.Target.from_default_triple().create_target_machine())
    engine.finalize_object()
    run = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(engine.get_function_address("chain"))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter_ns()
        run(iterations)
        best = max(best, adds_per_iteration * iterations / (time.perf_counter_ns() - start) * 1000)
    return best


def peak_gflops() -> tuple[float, str]:
    """The host core's single-precision peak for x86-64-v3 code: 2 FMA units x 8 lanes x
    2 flops per cycle at the measured clock (falls back on /proc/cpuinfo's nominal clock)."""
    try:
        mhz = measure_clock_mhz()
        return 2 * 8 * 2 * mhz / 1000, f"{mhz:.0f} MHz measured by a dependent-add chain"
    except Exception:  # no JIT for this host: the nominal clock is the next best figure
        pass
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return float("nan"), "unknown clock"
    return 2 * 8 * 2 * mhz / 1000, f"{mhz:.0f} MHz from /proc/cpuinfo (nominal)"


def table(results: list[Result]) -> str:
    head = (f"{'model':26} {'target':11} {'ok':4} {'max abs err':>11} {'insns/inf':>12} {'insns/MAC':>9} "
            f"{'median':>10} {'p99':>10} {'timing':8} {'vs ORT':>7} {'arena':>8} {'code':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.model:26} {r.target:11} {'yes' if r.ok else 'NO':4} {r.max_abs_err:11.2g} "
            f"{r.insns_per_inference:12,d} {r.insns_per_mac:9.3f} {_fmt_ns(r.median_ns):>10} "
            f"{_fmt_ns(r.p99_ns):>10} {r.timing:8} "
            f"{('%.2f' % r.ratio_vs_ort) if r.ratio_vs_ort == r.ratio_vs_ort else '-':>7} "
            f"{r.arena_bytes:8d} {r.code_bytes:8d}")
        if r.error:
            lines.append(f"    {r.error}")
        if r.refused:
            lines[-1] = f"{r.model:26} {r.target:11} {'-':4} refused: {r.refused}"
    native = [r for r in results if r.timing == "native" and r.macs and r.median_ns == r.median_ns]
    if not native:
        return "\n".join(lines)
    peak, clock = peak_gflops()  # measures the clock: only when there is a native figure to relate
    for r in native:
        gflops = 2 * r.macs / r.median_ns
        r.extra["gflops"], r.extra["pct_of_peak"], r.extra["clock"] = gflops, 100 * gflops / peak, clock
        if r.macs >= 10 ** 8:
            lines.append(f"{r.model} on {r.target}: {gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of the "
                         f"{peak:.0f} GFLOP/s peak ({clock})")
    return "\n".join(lines)


def train_table(results: list[Result]) -> str:
    """Instructions per training step and per primal + pullback next to those per inference."""
    def ratio(x):
        return f"{x:.2f}x" if x == x else "-"

    head = (f"{'model':26} {'target':11} {'insns/inf':>12} {'insns/step':>12} {'step/inf':>8} "
            f"{'insns/primal':>12} {'insns/pullback':>14} {'(p+pb)/inf':>10}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.model:26} {r.target:11} {r.insns_per_inference:12,d} {r.insns_per_train_step:12,d} "
                     f"{ratio(r.train_ratio):>8} {r.insns_per_primal:12,d} {r.insns_per_pullback:14,d} "
                     f"{ratio(r.grad_ratio):>10}")
    return "\n".join(lines)


CYCLES_LABEL = "estimated cycles (per-instruction-class table of the core, not measured)"


def cycle_table(results: list[Result]) -> str:
    """The cycle estimates (bench --cycles): per model, estimated cycles, cycles per
    instruction, and each class's share of the estimated cycles (largest first)."""
    head = f"{'model':26} {'target':11} {'insns/inf':>12} {'est. cycles':>12} {'est. CPI':>8}  est. share of cycles"
    lines = [CYCLES_LABEL, head, "-" * len(head)]
    for r in results:
        est = r.extra.get("cycle_estimate")
        if est is None:
            continue
        if "error" in est:
            lines.append(f"{r.model:26} {r.target:11} no estimate: {est['error']}")
            continue
        shares = sorted(est["per_class"].items(), key=lambda kv: -kv[1]["share"])
        text = " ".join(f"{c} {v['share']:.0%}" for c, v in shares if v["share"] >= 0.005)
        lines.append(f"{r.model:26} {r.target:11} {est['insns']:12,d} {est['estimated_cycles']:12,d} "
                     f"{est['estimated_cycles'] / est['insns']:8.2f}  {text}")
    if len(lines) == 3:
        lines.append("(no system-mode target with a [cycles] table among these)")
    return "\n".join(lines)


def write_json(results: list[Result], path: Path):
    Path(path).write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")


def run(targets: list[str], models: list[Path], json_path: str | None = None, runs: int = 20,
        count: bool = True, train: str | None = None, grad: str | None = None,
        learning_rate: float = LEARNING_RATE, cycles: bool = False, threads: int = 1) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        for target in targets:
            for model in models:
                r = bench(model, target, Path(tmp), runs=runs, count=count, train=train, grad=grad,
                          learning_rate=learning_rate, cycles=cycles, threads=threads)
                print(f"  {r.model} on {r.target}: {'refused' if r.refused else 'ok' if r.ok else 'FAILED'}", file=sys.stderr, flush=True)
                results.append(r)
    print(table(results))
    if train or grad:
        print(train_table(results))
    if cycles:
        print(cycle_table(results))
    if threads > 1:
        print(threads_table(results))
    print(compile_summary(results))
    if json_path:
        write_json(results, Path(json_path))
        print(f"wrote {json_path}")
    return 0 if all(r.ok for r in results) else 1


def compile_summary(results: list[Result]) -> str:
    """Whether the matrix compiled anything: a second run over unchanged inputs takes
    every build from the compile cache (toolchain/cache.py)."""
    built = [r for r in results if "compiled" in r.extra]
    compiled = sum(r.extra["compiled"] for r in built)
    if built and compiled == 0:
        return f"compiled nothing: all {len(built)} builds came from the compile cache"
    return f"compiled {compiled} of {len(built)} builds ({len(built) - compiled} from the compile cache)"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="edgec-bench", description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", help="target profile (repeatable; default: the matrix)")
    ap.add_argument("--model", action="append", help="ONNX file (repeatable; default: the matrix)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-count", action="store_true", help="skip instruction counting")
    ap.add_argument("--layers", action="store_true",
                    help="also the single-layer cases of benchmarks/layers.py (GEMM 256^3/512^3, convolutions)")
    ap.add_argument("--train", nargs="?", const="mse", metavar="LOSS",
                    help="also instructions per training step (a --train LOSS build, default mse, against "
                         "a zero target; SGD)")
    ap.add_argument("--grad", choices=["reverse"], help="also instructions per primal and per pullback")
    ap.add_argument("--cycles", action="store_true",
                    help="also ESTIMATED cycles per inference on system-mode targets with a [cycles] table "
                         "(instructions per mnemonic x the core's per-class cycles; not measured)")
    ap.add_argument("--lr", type=float, default=LEARNING_RATE, help="learning rate of the counted steps")
    ap.add_argument("--threads", type=int, default=1, metavar="N",
                    help="also a --parallel N build on N threads: checked against onnxruntime everywhere, "
                         "timed natively against one thread and onnxruntime with N intra-op threads")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be 1 or more, got {args.threads}")
    if (args.train or args.grad or args.cycles) and args.no_count:
        ap.error("--train, --grad and --cycles count instructions: drop --no-count")
    targets, models = matrix()
    models = [Path(m) for m in args.model] if args.model else models
    with tempfile.TemporaryDirectory(prefix="edgec-layers-") as tmp:
        if args.layers:
            sys.path.insert(0, str(PROJECT_ROOT))
            from benchmarks.layers import write

            models = models + write(Path(tmp))
        return run(args.target or targets, models, args.json, args.runs, not args.no_count, args.train, args.grad,
                   args.lr, args.cycles, args.threads)


if __name__ == "__main__":
    sys.exit(main())
