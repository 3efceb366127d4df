"""The ONNX backend test data that ships inside the onnx wheel, as a conformance sweep.

A case is *supported* when the front end and pass pipeline accept it (every op, dtype
and attribute form known); supported cases must then compile, run and match the
expected outputs. Unsupported ones are counted and listed by reason, not hidden.

    python tests/onnx_backend.py [--target T] [--run] [suite ...]

prints the support figures per suite (and, with --run, the pass rate).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from toolchain.errors import CompileError, UnsupportedError  # noqa: E402
from toolchain.frontend.onnx_import import import_model  # noqa: E402
from toolchain.passes import run_pipeline  # noqa: E402

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ["simple", "pytorch-converted", "pytorch-operator", "light"]  # what the wheel ships


@dataclass
class Case:
    suite: str
    name: str
    model_path: Path
    data_sets: list = field(default_factory=list)  # [(inputs, outputs)] as lists of arrays

    @property
    def id(self):
        return f"{self.suite}/{self.name}"


def _read(pb: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(pb, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def discover(suite: str) -> list[Case]:
    root = DATA / suite
    if suite == "light":
        return [Case(suite, Path(p).stem, Path(p)) for p in sorted(glob.glob(str(root / "*.onnx")))]
    cases = []
    for d in sorted(p for p in root.iterdir() if (p / "model.onnx").is_file()):
        sets = []
        for ds in sorted(d.glob("test_data_set_*")):
            n_in = len(glob.glob(str(ds / "input_*.pb")))
            n_out = len(glob.glob(str(ds / "output_*.pb")))
            sets.append(([_read(str(ds / f"input_{i}.pb")) for i in range(n_in)],
                         [_read(str(ds / f"output_{i}.pb")) for i in range(n_out)]))
        cases.append(Case(suite, d.name, d / "model.onnx", sets))
    return cases


def classify(case: Case) -> tuple[str, str]:
    """("supported", "") or ("unsupported" | "error", reason), without generating code."""
    try:
        model = onnx.load(str(case.model_path))
        run_pipeline(import_model(model))
    except CompileError as e:  # classified by kind, never by message text
        return ("unsupported" if isinstance(e, UnsupportedError) else "error"), str(e)
    except Exception as e:  # an importer crash is our bug, never "unsupported"
        return "error", f"{type(e).__name__}: {e}"
    if not case.data_sets and case.suite != "light":
        return "unsupported", "no test data"
    return "supported", ""


def unsupported_op(reason: str) -> str:
    m = re.search(r"unsupported op '([^']+)'", reason)
    if m:
        return m.group(1)
    m = re.search(r"\(([A-Za-z]+)\)", reason)
    return f"{m.group(1) if m else '?'}: {reason.split(': ', 1)[-1][:60]}"


def report(suites, target=None):
    """Support figures per suite; with a target, also build, run and compare each case."""
    from helpers import compile_and_run
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="edgec-backend-"))
    hist = collections.Counter()
    for suite in suites:
        cases = discover(suite)
        kinds = collections.Counter()
        passed, failures = 0, []
        for c in cases:
            kind, reason = classify(c)
            kinds[kind] += 1
            if kind == "unsupported":
                hist[unsupported_op(reason)] += 1
            elif kind == "error":
                failures.append((c.id, reason[:200]))
            elif target and c.data_sets:
                try:
                    run_case(c, target, work, compile_and_run)
                    passed += 1
                except Exception as e:  # noqa: BLE001  (a report, not a test)
                    failures.append((c.id, str(e)[:200]))
        total = len(cases)
        line = f"{suite:18} {kinds['supported']:4}/{total:<4} supported ({100 * kinds['supported'] / max(total, 1):.0f}%)"
        if target:
            runnable = sum(1 for c in cases if c.data_sets) if suite != "light" else 0
            line += f", {passed} passed on {target}" + (f" of {runnable} with data" if runnable else "")
        print(line)
        for cid, why in failures:
            print(f"    FAIL {cid}: {why}")
    print("unsupported, by reason:")
    for reason, n in hist.most_common():
        print(f"  {n:4}  {reason}")


def run_case(case: Case, target: str, workdir: Path, compile_and_run):
    from helpers import assert_close

    model = onnx.load(str(case.model_path))
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for k, (inputs, outputs) in enumerate(case.data_sets):
        feeds = dict(zip(names, inputs))
        got, _, _ = compile_and_run(model, target, feeds, workdir)
        assert len(got) == len(outputs)
        for j, (g, w) in enumerate(zip(got, outputs)):
            assert_close(g, w.reshape(g.shape) if w.size == g.size else w, what=f"{case.id} set {k} output {j}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="*", default=["simple", "pytorch-converted", "pytorch-operator", "light"])
    ap.add_argument("--target", default="x86-64-v3")
    ap.add_argument("--run", action="store_true", help="also build, run and compare every supported case")
    args = ap.parse_args(argv)
    report(args.suites, args.target if args.run else None)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
