"""The onnx package's own per-operator test cases (onnx.backend.test.case.node) as a
conformance suite: every case whose inputs and outputs are plain tensors of a numeric or
bool dtype is built for a target with the real driver, run on its first data set, and
compared with the case's expected outputs (rtol 1e-3, atol 1e-4; integers and bool
exactly). onnxruntime is measured on the same cases, same tolerances. On a host that runs
the target's instructions the object is linked into a shared object and called in process
(with the harness's arena guard and input checks; no 0.2 s harness link per case);
--harness, or any emulated target, links the C harness and runs it as a program.

    python tests/node_suite.py [--target T] [--jobs N] [--only REGEX] [--sample K] [--json OUT]
                               [--no-ort] [--harness] [--write-passing FILE] [--cache DIR]
                               [--report OLD.json] [--top N]

Each case ends as one of
  pass         outputs match
  pass (bound) outputs match once the graph inputs an error named as operands that must be
               compile-time constants (axes, pads, shape...) were bound at build time to the data
               set's values (--bind): the case needed binding; counted apart (--no-bind: never)
  fail         the compiled object ran and produced a wrong result (or shape, or dtype)
  unsupported  a CompileError saying we cannot take it (unsupported op, opset, dtype...)
  crash        anything else: a CompileError that is not an "unsupported", an exception
               in the compiler, a link or run failure, a timeout. Always a bug.

The cases are generated once (collect_testcases() takes ~15 s) into a cache laid out like
onnx's backend/test/data/node (<case>/model.onnx, <case>/test_data_set_0/{input,output}_*.pb)
under build/node-suite/onnx-<version>/ (gitignored; --cache to move it).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

RTOL, ATOL = 1e-3, 1e-4
DEFAULT_CACHE = ROOT / "build" / "node-suite"
CASE_TIMEOUT = 180  # seconds per case (compile + link + run)
# an UnsupportedError, or a CompileError whose text means "we can't", not "we're wrong"
UNSUPPORTED = re.compile(r"unsupported|not supported|must be a compile-time constant|is not an inference graph"
                         r"|no lowering|needs float32|dynamic dimension")
PLAIN_KINDS = "biuf"  # numpy kinds of numeric and bool dtypes (ml_dtypes' bfloat16, float8, int4 are 'V')


# -- the cache ---------------------------------------------------------------------------
def cache_root(cache: Path | None = None) -> Path:
    return Path(cache or DEFAULT_CACHE) / f"onnx-{onnx.__version__}"


def _as_array(x):
    """A data-set entry as an ndarray, or None when it is not a plain tensor."""
    if isinstance(x, onnx.TensorProto):
        try:
            x = numpy_helper.to_array(x)
        except Exception:
            return None
    elif isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray) and x.dtype.kind in PLAIN_KINDS:
        return x
    return None


def _plain(case) -> tuple[list, list] | None:
    """(inputs, outputs) of the first data set when the case counts, else None."""
    g = case.model.graph
    inits = {i.name for i in g.initializer}
    vis = [v for v in g.input if v.name not in inits] + list(g.output)
    for v in vis:
        if not v.type.HasField("tensor_type") or v.type.tensor_type.elem_type in (
                onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            return None
    if not case.data_sets:
        return None
    ins, outs = case.data_sets[0]
    ins, outs = [_as_array(x) for x in ins], [_as_array(x) for x in outs]
    if any(x is None for x in ins + outs):
        return None
    return ins, outs


def materialize(cache: Path | None = None, quiet: bool = False) -> Path:
    """Writes the counted cases to the cache once; returns its directory (holds index.json)."""
    root = cache_root(cache)
    if (root / "index.json").is_file():
        return root
    from onnx.backend.test.case.node import collect_testcases

    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            cases = collect_testcases()
    if len(cases) < 1000:  # onnx 1.23 has 1,884; the list is a module global a caller can empty
        raise RuntimeError(f"collect_testcases() gave only {len(cases)} cases: something in this "
                           "process emptied onnx's case list; not writing a partial index")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=root.parent))
    index = {"onnx": onnx.__version__, "total": len(cases), "cases": {}}
    for case in cases:
        data = _plain(case)
        if data is None:
            continue
        ins, outs = data
        d = tmp / case.name
        (d / "test_data_set_0").mkdir(parents=True)
        (d / "model.onnx").write_bytes(case.model.SerializeToString())
        for kind, arrays in (("input", ins), ("output", outs)):
            for j, a in enumerate(arrays):
                (d / "test_data_set_0" / f"{kind}_{j}.pb").write_bytes(
                    numpy_helper.from_array(np.asarray(a)).SerializeToString())  # 0-d stays 0-d
        dtypes = sorted({a.dtype.name for a in ins + outs})
        index["cases"][case.name] = {"rtol": case.rtol, "atol": case.atol, "dtypes": dtypes,
                                     "ops": sorted({n.op_type for n in case.model.graph.node})}
    (tmp / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    try:
        tmp.rename(root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"materialized {len(index['cases'])} of {len(cases)} node cases into {root} "
              f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return root


def load_index(cache: Path | None = None) -> dict:
    return json.loads((materialize(cache, quiet=True) / "index.json").read_text())


def load_case(root: Path, name: str):
    d = Path(root) / name
    model = onnx.load(str(d / "model.onnx"))
    ds = d / "test_data_set_0"

    def read(kind):
        out, j = [], 0
        while (ds / f"{kind}_{j}.pb").is_file():
            t = onnx.TensorProto()
            t.ParseFromString((ds / f"{kind}_{j}.pb").read_bytes())
            out.append(numpy_helper.to_array(t))
            j += 1
        return out

    return model, read("input"), read("output")


def select(names, only: str | None = None, sample: int | None = None) -> list[str]:
    """Sorted names matching `only`; with `sample`, K of them spread evenly (deterministic)."""
    names = sorted(n for n in names if not only or re.search(only, n))
    if sample and sample < len(names):
        step = len(names) / sample
        names = [names[int(i * step)] for i in range(sample)]
    return names


# -- one case ----------------------------------------------------------------------------
def feeds_for(model, inputs) -> dict:
    inits = {i.name for i in model.graph.initializer}
    vis = [v for v in model.graph.input if v.name not in inits]
    feeds = {}
    for vi, x in zip(vis, inputs):
        want = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = x.astype(want) if x.dtype != want else x
    return feeds


def compare(got: list, want: list, what: str = ""):
    from helpers import assert_close

    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} outputs, expected {len(want)}")
    for j, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.dtype != w.dtype:
            raise AssertionError(f"{what} output {j}: dtype {g.dtype} != {w.dtype}")
        assert_close(g, w, RTOL, ATOL, what=f"{what} output {j}")


GUARD, GUARD_BYTE = 4096, 0xA5


def run_in_process(model, feeds: dict, target: str, workdir: Path, bind=None) -> list:
    """The fast path on a host that runs the target's instructions: the same build (the real
    driver, the same object), linked into a shared object (`ld -shared`: the object is PIC
    and self-contained) and called through ctypes, with the harness's checks (an aligned
    arena followed by a guard zone, inputs not written). Saves the ~0.2 s harness link."""
    import ctypes

    from toolchain.compiler import build

    path = workdir / "model.onnx"
    path.write_bytes(model.SerializeToString())
    res = build(path, target, "model", workdir / "build", bind=bind)
    # a retry with inputs bound is another library: dlopen of a path already loaded would
    # return the first (whose file was just rewritten under it)
    so = workdir / ("model.so" if not bind else f"model-bound-{len(bind)}.so")
    proc = __import__("subprocess").run(["ld", "-shared", "-o", str(so), str(res.paths["object"])],
                                        capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ld -shared failed: {proc.stderr.strip()}")
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL)
    fn = lib.model_run
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3
    m = res.manifest
    ins = [np.ascontiguousarray(feeds[i["name"]]).copy() for i in m["inputs"]]
    saved = [x.copy() for x in ins]
    outs = [np.zeros(o["shape"], o["dtype"]) for o in m["outputs"]]
    size, align = m["arena"]["size"], m["arena"]["align"]
    raw = np.full(size + GUARD + align, GUARD_BYTE, np.uint8)
    start = (-raw.ctypes.data) % align
    arena = raw[start:start + size + GUARD]
    in_ptrs = (ctypes.c_void_p * max(len(ins), 1))(*[x.ctypes.data for x in ins])
    out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[y.ctypes.data for y in outs])
    rc = fn(in_ptrs, out_ptrs, arena.ctypes.data)
    if rc != 0:
        raise RuntimeError(f"model_run returned {rc}")
    for j, (x, y) in enumerate(zip(ins, saved)):
        if x.tobytes() != y.tobytes():
            raise RuntimeError(f"the model wrote to input {j}")
    if (arena[size:] != GUARD_BYTE).any():
        raise RuntimeError(f"the model wrote past its arena (byte {size + int(np.argmax(arena[size:] != GUARD_BYTE))}"
                           f" of {size})")
    return outs


def run_ours(model, inputs, outputs, target: str, workdir: Path, harness: bool = False, bound=(),
             emit: str = "object"):
    """Build with the real driver, run the object (in process on a native host unless
    `harness`: then linked with the C harness and run as a program, natively or under
    qemu-user), compare. `emit` "c": the C path (the generated C compiled by zig cc for the
    target, always through the harness). `bound`: graph inputs bound at build time to their
    data-set values (the others are fed). Raises."""
    from helpers import compile_and_run
    from toolchain.targets import get_profile

    feeds = feeds_for(model, inputs)
    bind = {n: feeds[n] for n in bound} or None
    if harness or emit != "object" or not get_profile(target).runs_natively() or shutil.which("ld") is None:
        got, _, _ = compile_and_run(model, target, feeds, workdir, bind=bind, emit=emit)
    else:
        got = run_in_process(model, feeds, target, workdir, bind=bind)
    compare(got, outputs, "edgec")


def run_binding(model, inputs, outputs, target: str, workdir: Path, harness: bool = False,
                bind: bool = True, emit: str = "object") -> list[str]:
    """run_ours; when it fails only because operands that must be compile-time constants
    come from graph inputs (the error names them: bind_inputs), or because the run refused
    the value of an input the build specialized from the declared shapes, again with those
    inputs bound to the data set's values, until it passes or fails otherwise. Returns the inputs
    bound (empty: passed as it is); raises the last attempt's error, with the bound inputs
    in its `bound` attribute."""
    from toolchain.errors import UnsupportedError

    bound: list[str] = []
    while True:
        try:
            run_ours(model, inputs, outputs, target, workdir, harness, bound, emit)
            return bound
        except UnsupportedError as e:
            more = [n for n in getattr(e, "bind_inputs", None) or [] if n not in bound]
            if not bind or not more:
                e.bound = bound
                raise
            bound += more
        except BaseException as e:
            more = [n for n in _specialized_inputs(model, inputs, bound) if n not in bound] if _value_refused(e) else []
            if not bind or not more:
                e.bound = bound
                raise
            bound += more


def _value_refused(e: BaseException) -> bool:
    """model_run refused an input the build specialized (frontend/specialize.py): the
    data set's value is not one the declared shapes allowed."""
    from toolchain.contract import ERR_INPUT_VALUE

    return f"run returned {ERR_INPUT_VALUE}" in str(e)


def _specialized_inputs(model, inputs, bound) -> list[str]:
    """The inputs the build (with `bound` bound) specialized."""
    from toolchain.frontend.batching import import_batched
    from toolchain.frontend.binding import bind_inputs

    feeds = feeds_for(model, inputs)
    with_bound = bind_inputs(model, {n: feeds[n] for n in bound})
    return [n for guard in import_batched(with_bound, "model", None).guards for n in guard.names]


def run_ort(model, inputs, outputs):
    from helpers import onnxruntime_outputs

    got = onnxruntime_outputs(model, feeds_for(model, inputs))
    compare(got, outputs, "onnxruntime")


def classify_exception(e: BaseException) -> tuple[str, str]:
    from toolchain.errors import CompileError, UnsupportedError

    if isinstance(e, AssertionError):
        return "fail", str(e)
    if isinstance(e, UnsupportedError) or (isinstance(e, CompileError) and UNSUPPORTED.search(str(e))):
        return "unsupported", str(e)
    return "crash", f"{type(e).__name__}: {e}"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"case took over {CASE_TIMEOUT} s")


def run_one(root: str, name: str, target: str, with_ort: bool = True, harness: bool = False,
            bind: bool = True, emit: str = "object") -> dict:
    """Worker: one case, ours (and onnxruntime's) verdict. Never raises."""
    marker = Path(root) / ".running" / str(os.getpid())
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(name)
    res = {"name": name}
    work = Path(tempfile.mkdtemp(prefix="edgec-node-"))
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        model, inputs, outputs = load_case(Path(root), name)
        t0 = time.time()
        signal.alarm(CASE_TIMEOUT)
        try:
            bound = run_binding(model, inputs, outputs, target, work, harness, bind, emit)
            res["status"], res["message"] = ("pass (bound)" if bound else "pass"), ""
            if bound:
                res["bound"] = bound
                # nothing left to compute at run time: the outputs are the compile-time fold's
                res["bound_every_input"] = len(bound) == len(inputs)
        except BaseException as e:  # noqa: BLE001  (a report: every exception is classified)
            if isinstance(e, KeyboardInterrupt):
                raise
            res["status"], res["message"] = classify_exception(e)
            if getattr(e, "bound", None):  # what binding those inputs ran into next
                res["bound"] = list(e.bound)
                res["message"] = f"with --bind {','.join(e.bound)}: {res['message']}"
            if isinstance(e, _Timeout):
                res["status"], res["message"] = "crash", f"Timeout: {e}"
            res["error_type"] = type(e).__name__
            res["error_op"] = getattr(e, "op", None)
        finally:
            signal.alarm(0)
        res["seconds"] = round(time.time() - t0, 2)
        if with_ort:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run_ort(model, inputs, outputs)
                res["ort"], res["ort_message"] = "pass", ""
            except AssertionError as e:
                res["ort"], res["ort_message"] = "fail", str(e)[:300]
            except Exception as e:  # noqa: BLE001
                res["ort"], res["ort_message"] = "error", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.signal(signal.SIGALRM, old)
        shutil.rmtree(work, ignore_errors=True)
        marker.unlink(missing_ok=True)
    res["message"] = res.get("message", "")[:500]
    return res


# -- the sweep ---------------------------------------------------------------------------
def _init_worker():
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.simplefilter("ignore")
    # onnxruntime and LLVM each want all cores; the pool is the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # its own warnings and errors: we report them


def run_suite(names, target="x86-64-v3", jobs=2, with_ort=True, cache=None, progress=True,
              harness=False, bind=True, emit="object") -> dict:
    root = str(materialize(cache))
    running = Path(root) / ".running"
    results: dict[str, dict] = {}
    todo = list(names)
    t0 = time.time()
    while todo:
        shutil.rmtree(running, ignore_errors=True)
        broken = False
        # no max_tasks_per_child: with it, Python 3.11's pool can hang when it replaces a worker
        with cf.ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
            futs = {pool.submit(run_one, root, n, target, with_ort, harness, bind, emit): n for n in todo}
            for f in cf.as_completed(futs):
                n = futs[f]
                try:
                    results[n] = f.result()
                except cf.process.BrokenProcessPool:
                    broken = True
                    continue
                if progress and len(results) % 50 == 0:
                    done = len(results)
                    print(f"  {done}/{len(names)} cases, {time.time() - t0:.0f} s", file=sys.stderr)
        if not broken:
            break
        # a worker died (a signal in the compiler or onnxruntime): the cases it was running
        # are crashes; everything else not finished is run again in a fresh pool
        culprits = {p.read_text() for p in running.glob("*")} if running.exists() else set()
        for n in culprits:
            results[n] = {"name": n, "status": "crash", "message": "WorkerDied: the process running "
                          "this case died (signal)", "error_type": "WorkerDied", "ort": "error",
                          "ort_message": "not measured (worker died)"}
        todo = [n for n in todo if n not in results]
        if not culprits:  # cannot tell which one: give up on the rest rather than loop
            for n in todo:
                results[n] = {"name": n, "status": "crash", "message": "WorkerDied: pool broke",
                              "error_type": "WorkerDied"}
            break
    return results


# -- the report ----------------------------------------------------------------------------
def _case_op(info: dict, name: str) -> str:
    ops = info.get("ops") or []
    if len(ops) == 1:
        return ops[0]
    m = re.match(r"test_([a-z0-9]+)", name)
    return f"{'+'.join(ops[:3])}{'+...' if len(ops) > 3 else ''}" if ops else (m.group(1) if m else "?")


def reason(res: dict, info: dict) -> str:
    """Groups a non-passing case's message into a reason."""
    msg, status = res.get("message", ""), res["status"]
    if res.get("bound"):  # the failure binding ran into, grouped apart
        return "after --bind: " + reason({**res, "bound": None, "message": msg.split(": ", 1)[-1]}, info)
    op = _case_op(info, res["name"])
    if status == "fail":
        return f"wrong result: {op}"
    if status == "crash":
        t = res.get("error_type") or msg.split(":", 1)[0]
        return f"crash {t}: {res.get('error_op') or op}"
    body = re.sub(r"^node '[^']*' \(([^)]*)\): ", "", msg)
    body = re.sub(r"^op ([A-Za-z]+): ", "", body)
    node_op = res.get("error_op") or op
    m = re.search(r"unsupported op '([^']+)'", body)
    if m:
        return f"unsupported op '{m.group(1)}'"
    m = re.search(r"opset \d+ is not supported", body)
    if m:
        return m.group(0)
    m = re.search(r"unsupported element type \S+", body)
    if m:
        return m.group(0)
    m = re.search(r"unsupported op domain '[^']+'", body)
    if m:
        return m.group(0)
    body = re.sub(r"'[^']*'", "'…'", body)
    body = re.sub(r"\([0-9, ]*\)|\[[0-9, ]*\]", "(…)", body)
    body = re.sub(r"-?\d+(\.\d+)?", "N", body)
    return f"{node_op}: {body[:90]}"


def summarize(results: dict, index: dict, target: str) -> dict:
    cases = index["cases"]
    names = sorted(results)
    f32 = [n for n in names if cases[n]["dtypes"] == ["float32"]]
    count = collections.Counter(results[n]["status"] for n in names)

    def rate(sel, key="status", ok=("pass",)):
        return sum(1 for n in sel if results[n].get(key) in ok), len(sel)

    bound = ("pass", "pass (bound)")
    reasons = collections.Counter(reason(results[n], cases[n]) for n in names
                                  if results[n]["status"] not in bound)
    ort_measured = [n for n in names if "ort" in results[n]]
    return {"target": target, "onnx": index["onnx"], "total_node_cases": index["total"],
            "counted": len(cases), "run": len(names), "status": dict(count),
            "pass_all": rate(names), "pass_float32": rate(f32),
            # passing with the graph inputs that had to be constants bound at build time too
            "pass_bound_all": rate(names, ok=bound), "pass_bound_float32": rate(f32, ok=bound),
            "bound_only": sorted(n for n in names if results[n]["status"] == "pass (bound)"),
            "bound_every_input": sorted(n for n in names if results[n]["status"] == "pass (bound)"
                                        and results[n].get("bound_every_input")),
            "ort_all": rate(ort_measured, "ort"),
            "ort_float32": rate([n for n in f32 if n in ort_measured], "ort"),
            "reasons": reasons.most_common()}


def print_report(s: dict, top: int | None = None):
    def pct(p):
        return f"{p[0]}/{p[1]} ({100 * p[0] / max(p[1], 1):.1f}%)" if p[1] else "not measured"

    print(f"onnx {s['onnx']} node cases: {s['total_node_cases']}, counted (plain numeric/bool tensors): "
          f"{s['counted']}, run: {s['run']} on {s['target']}")
    bound_all = s.get("pass_bound_all", s["pass_all"])  # an older --json has no binding figures
    bound_f32 = s.get("pass_bound_float32", s["pass_float32"])
    print(f"  {'':14} {'edgec':>22} {'edgec with --bind':>22} {'onnxruntime':>22}")
    print(f"  {'all':14} {pct(s['pass_all']):>22} {pct(bound_all):>22} {pct(s['ort_all']):>22}")
    print(f"  {'float32-only':14} {pct(s['pass_float32']):>22} {pct(bound_f32):>22} {pct(s['ort_float32']):>22}")
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items())))
    if s.get("bound_only"):
        print(f"  {len(s['bound_only'])} pass only with graph inputs bound at build time (--bind): "
              + " ".join(s["bound_only"][:8]) + (" ..." if len(s["bound_only"]) > 8 else ""))
        every = s.get("bound_every_input", [])
        print(f"    of which {len(every)} with every input bound (all computed at compile time, nothing at run time)")
    print("failure reasons, by count:")
    for r, n in s["reasons"][:top]:
        print(f"  {n:5}  {r}")


BOUND_MARK = " (bound)"


def passing_list(results: dict) -> str:
    """The regression list: one passing case a line, sorted; a case that passes only with
    graph inputs bound at build time is marked " (bound)"."""
    return "".join(f"{n}{BOUND_MARK if results[n]['status'] == 'pass (bound)' else ''}\n"
                   for n in sorted(results) if results[n]["status"] in ("pass", "pass (bound)"))


def read_passing_list(path: Path) -> dict[str, bool]:
    """name -> whether it may need --bind, from a file passing_list wrote."""
    out = {}
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if ln and not ln.startswith("#"):
            out[ln.removesuffix(BOUND_MARK)] = ln.endswith(BOUND_MARK)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86-64-v3")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="regular expression over case names")
    ap.add_argument("--sample", type=int, help="run K cases spread evenly over the sorted names")
    ap.add_argument("--json", help="write every case's verdict and the summary here")
    ap.add_argument("--no-ort", action="store_true", help="do not measure onnxruntime")
    ap.add_argument("--no-bind", action="store_true",
                    help="never rebuild a case with graph inputs bound to its data set's values")
    ap.add_argument("--harness", action="store_true",
                    help="link every case with the C harness and run it as a program (the default on a "
                         "native host calls the object in process)")
    ap.add_argument("--emit", choices=["object", "c"], default="object",
                    help="c: build each case through the C backend (compiled by zig cc, run as a program)")
    ap.add_argument("--cache", type=Path, help=f"where the cases are materialized (default {DEFAULT_CACHE})")
    ap.add_argument("--write-passing", type=Path, help="write the passing case names here, one a line")
    ap.add_argument("--report", help="re-print the report of an earlier --json file (no run)")
    ap.add_argument("--top", type=int, default=None, help="show only the N most common reasons")
    args = ap.parse_args(argv)

    if args.report:
        data = json.loads(Path(args.report).read_text())
        index = load_index(args.cache)
        print_report(summarize(data["cases"], index, data["summary"]["target"]), args.top)
        return 0
    index = load_index(args.cache)
    names = select(index["cases"], args.only, args.sample)
    t0 = time.time()
    results = run_suite(names, args.target, args.jobs, not args.no_ort, args.cache, harness=args.harness,
                        bind=not args.no_bind, emit=args.emit)
    s = summarize(results, index, args.target)
    s["seconds"] = round(time.time() - t0)
    print_report(s, args.top)
    print(f"({s['seconds']} s with {args.jobs} jobs)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": s, "cases": results}, indent=1, sort_keys=True))
    if args.write_passing:
        args.write_passing.write_text(passing_list(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
