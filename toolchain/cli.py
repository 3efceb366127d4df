"""Command line: `edgec build|size|profile|targets|ops` (also `python -m toolchain`). invoke tasks call these."""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys

from .errors import CompileError, InvalidModelError

MAX_DIM = 2**31 - 1  # a symbolic dimension bound at build time; ONNX's own are int64


MAX_BOUND = 65536  # a bounded dimension (NAME<=N) is a loop count in the entry point


def _dims(specs):
    """--dim NAME=N binds a symbolic dimension; --dim NAME<=N bounds it (1..N at run time)."""
    dims = {}
    for spec in specs or []:
        m = re.fullmatch(r"(.+?)(<=|=)([0-9]{1,20})", spec)
        if not m:
            raise InvalidModelError(f"--dim wants NAME=N or NAME<=N with N a positive integer, got '{spec}'")
        key, how, val = m.group(1), m.group(2), int(m.group(3))
        top = MAX_BOUND if how == "<=" else MAX_DIM
        if not 1 <= val <= top:
            raise InvalidModelError(f"--dim {key}{how}{val} is out of range (1..{top})")
        new = (1, val) if how == "<=" else val
        if key in dims and dims[key] != new:
            raise InvalidModelError(f"--dim {key} given twice ({spec} and an earlier one)")
        dims[key] = new
    return dims


def _binds(specs):
    """--bind NAME=VALUES: the text of each (a comma list, or @file.npy); the graph's
    declaration checks it (frontend/binding.py)."""
    binds = {}
    for spec in specs or []:
        key, eq, val = spec.partition("=")
        if not eq or not key:
            raise InvalidModelError(f"--bind wants NAME=VALUES (a comma list such as 1,2 or @file.npy), got '{spec}'")
        if key in binds:
            raise InvalidModelError(f"--bind {key} given twice")
        binds[key] = val
    return binds


def _writable_file(flag: str, path):
    """A report file: its parent directories are created; a directory or a file where a
    directory should be is a one-line error, checked before any work."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise InvalidModelError(f"{flag} '{path}' is a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidModelError(f"{flag} '{path}': '{parent}' is not a directory")
    return path


def _write_report(flag: str, path, text: str):
    from .emit import replace_outputs

    path = _writable_file(flag, path)
    try:
        replace_outputs(path.parent, path.name, {path.name: text.encode()})
    except OSError as e:
        raise InvalidModelError(f"cannot write {flag} '{path}': {e.strerror or e}") from None
    print(f"wrote {path}")


def cmd_build(args):
    dims = _dims(args.dim)  # before the (slow) imports: a usage error is instant
    binds = _binds(getattr(args, "bind", None))
    models = args.model if isinstance(args.model, list) else [args.model] if args.model else []
    if len(models) > 1:
        if binds:
            raise InvalidModelError("a library of several models takes no --bind")
        return _build_library(args, models, dims)
    args.model = models[0] if models else None
    from .compiler import build

    dump = sys.stderr if args.dump_ir else None
    res = build(args.model, args.target, args.name, args.out, dims, dump, emit=args.emit,
                budgets={"flash_bytes": args.flash_budget, "ram_bytes": args.ram_budget},
                weights=getattr(args, "weights", "internal"), grad=getattr(args, "grad", None),
                train=getattr(args, "loss", None) if getattr(args, "train", False) else None, bind=binds or None,
                trainable=getattr(args, "trainable", None), optimizer=getattr(args, "optimizer", "sgd"),
                momentum=getattr(args, "momentum", None), wrt=getattr(args, "wrt", None),
                residuals=getattr(args, "residuals", None), weights_section=getattr(args, "weights_section", None),
                parallel=getattr(args, "parallel", None))
    m = res.manifest
    print(f"built {m['model']} for {m['target']['name']} -> {res.paths['header'].parent}")
    for kind, path in res.paths.items():
        print(f"  {kind:9} {path}")
    if "parallel" in m:
        p = m["parallel"]
        print(f"  parallel  {len(p['splits'])} node(s) cut into up to {p['tasks']} pieces for "
              f"{m['name']}_run_parallel; a task's stack {p['task_stack_bytes']} bytes")
    for b in m.get("bound_inputs", []):
        print(f"  bound     {b['name']} = {b['values'] if 'values' in b else b['sha256'][:16]} "
              f"({b['dtype']}, shape {b['shape']})")
    for spec in m.get("specialized_inputs", []):
        shown = ", ".join(str(a) for a in spec["accepted"][:4]) + (", ..." if len(spec["accepted"]) > 4 else "")
        print(f"  checked   {', '.join(spec['inputs'])} in {{{shown}}} (taken from the declared output shapes; "
              f"any other value: {m['name'].upper()}_ERR_INPUT_VALUE)")
    print(f"  arena     {m['arena']['size']} bytes (lower bound {m['arena']['lower_bound']}, "
          f"align {m['arena']['align']})")
    print(f"  code      {m['code_bytes']} bytes, weights {m['weight_bytes']} bytes, "
          f"{m['macs']} MACs/inference")
    print(f"  flash     {m['flash_bytes']} bytes; RAM {m['ram_bytes']} bytes "
          f"(arena + stack {max(m['stack_bytes'].values(), default=0)})")
    if m.get("grad", {}).get("mode") == "forward":
        g = m["grad"]
        stack = m["stack_bytes"].get(f"{m['name']}_jvp", 0)
        print(f"  forward   jvp arena {g['arenas']['jvp']['size']} bytes, {len(g['input_tangents'])} input tangent(s), "
              f"{len(g['output_tangents'])} output tangent(s), stack {stack} bytes")
    elif "grad" in m:
        g = m["grad"]
        print(f"  reverse   residuals {g['residuals']['size']} bytes ({len(g['residuals']['values'])} values), "
              f"arena primal {g['arenas']['primal']['size']} / pullback {g['arenas']['pullback']['size']} bytes, "
              f"{len(g['params'])} params")
        sizes = g["residuals"].get("sizes", {})
        print(f"  residuals {g['residuals'].get('mode', 'save')} (--residuals save {sizes.get('save')} / recompute "
              f"{sizes.get('recompute')} bytes), wrt {g.get('wrt', 'all')}, pullback {g['macs']['pullback']} MACs")
    if "train" in m:
        t = m["train"]
        mu = f" (momentum {t['momentum']})" if t["optimizer"] == "momentum" else ""
        print(f"  train     {t['loss']} loss, {t['optimizer']}{mu}: params buffer {t['params_size']} bytes "
              f"({len(t['params'])} params), opt state {t['opt_state_size']} bytes, train arena "
              f"{m['arena']['size']} bytes")
        if t["trainable"] != "*" and t["untrained"]:
            print(f"  note      --trainable '{t['trainable']}' also matched {len(t['untrained'])} initializer(s) that "
                  f"stay constant (not float32, read by no node, or folded at import): "
                  f"{', '.join(t['untrained'][:8])}{', ...' if len(t['untrained']) > 8 else ''}")
    return res


def _build_library(args, specs, dims):
    if (dims or args.emit != "object" or args.dump_ir or args.weights != "internal" or args.weights_section
            or getattr(args, "parallel", None) is not None):
        raise InvalidModelError("a library of several models takes no --dim, --emit c, --weights, --weights-section, "
                                "--parallel or --dump-ir")
    from .library import build_library, parse_model_specs

    res = build_library(parse_model_specs(specs), args.target, args.name, args.out,
                        budgets={"flash_bytes": args.flash_budget, "ram_bytes": args.ram_budget})
    m = res["manifest"]
    print(f"built {', '.join(m['models'])} into one library for {m['target']['name']}")
    for path in res["paths"].values():
        print(f"  {path}")
    for n, mm in m["models"].items():
        print(f"  {n:12} arena {mm['arena']['size']} bytes, stack {mm['stack_bytes'][n + '_run']} bytes, "
              f"{mm['macs']} MACs")
    print(f"  shared arena {m['shared_arena']['size']} bytes; flash {m['flash_bytes']} bytes; RAM {m['ram_bytes']} bytes")
    return res


def cmd_targets(args):
    from .targets import all_profiles

    for p in all_profiles().values():
        run = "native" if p.runs_natively() else f"{p.qemu} -cpu {p.qemu_cpu}"
        if p.run_mode == "system":
            run = f"{p.qemu} -M {p.board} -cpu {p.qemu_cpu}"
        print(f"{p.name:12} {p.triple:28} cpu={p.cpu:14} {p.description}  [run: {run}]")


def cmd_size(args):
    from pathlib import Path

    # the argument checks come before the (slow) imports
    for flag, path in (("--json", args.json), ("--html", args.html)):
        if path:
            _writable_file(flag, path)
    if not args.diff and not args.target:
        raise InvalidModelError("size needs --target (or --diff OLD_DIR NEW_DIR)")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent.parent / "build" / str(args.target)
    if not args.diff and out.exists() and not out.is_dir():
        raise InvalidModelError(f"--out '{out}' is not a directory")

    from .inspect.size import diff, html_chart, size_report, table

    if args.diff:
        old, new = (size_report(Path(d), args.name) for d in args.diff)
        print(diff(old, new))
        return
    if args.model or not (out / f"{args.name}.o").is_file():
        cmd_build(args)
    report = size_report(out, args.name)
    print(table(report))
    if args.json:
        _write_report("--json", args.json, report.to_json())
    if args.html:
        _write_report("--html", args.html, html_chart(report))


def cmd_profile(args):
    from pathlib import Path

    # the argument checks come before the (slow) imports and the build
    for flag, path in (("--json", args.json), ("--html", args.html)):
        if path:
            _writable_file(flag, path)
    if args.diff:
        if args.target or args.model or args.json or args.html or args.mode or args.train:
            raise InvalidModelError("profile --diff OLD.json NEW.json takes no other option")
        from .profile import diff, load_json

        old, new = (load_json(p) for p in args.diff)
        print(diff(old, new))
        return
    if not args.target:
        raise InvalidModelError("profile needs --target (or --diff OLD.json NEW.json)")
    if args.model and not Path(args.model).is_file():
        raise InvalidModelError(f"model file not found: {args.model}")
    if args.runs < 2:
        raise InvalidModelError(f"--runs must be at least 2 (N runs minus 1 cancels start-up), got {args.runs}")
    from .profile import html_page, profile_model, table

    report = profile_model(args.model, args.target, runs=args.runs, mode=args.mode or "lines", train=args.train)
    print(table(report))
    if args.json:
        _write_report("--json", args.json, report.to_json())
    if args.html:
        _write_report("--html", args.html, html_page(report))


def cmd_compare(args):
    dims = _dims(args.dim)
    if args.json:
        _writable_file("--json", args.json)
    from .compare import compare, load_inputs, outputs_ok, report, to_json

    inputs = load_inputs(args.input) if args.input else None
    diffs = compare(args.model, args.target, inputs, dims)
    print(report(diffs))
    if args.json:
        _write_report("--json", args.json, to_json(diffs))
    if not outputs_ok(diffs):
        raise CompileError(f"the outputs on {args.target} differ from onnxruntime beyond tolerance")

def cmd_quantize(args):
    from .quantize import run

    run(args.model, args.out, args.calibration, args.calibration_random)


def cmd_ops(args):
    from .ops import registry

    print(" ".join(registry.names()))


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too: `edgec: error: ...` (exit 2); --help still prints help."""

    def error(self, message):
        raise _UsageError(f"{self.prog.removeprefix('edgec').strip() or 'usage'}: {message}")


class _UsageError(Exception):
    pass


def one_line(text: str) -> str:
    """A message as one printable line: control characters (newlines included) are escaped,
    invalid UTF-8 from file names shows as \\xNN."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def parser():
    ap = _Parser(prog="edgec", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="compile an ONNX model to object, library, header, manifest")
    b.add_argument("--target", required=True)
    b.add_argument("--model", action="append",
                   help="ONNX file (default: the bundled keyword-spotting DS-CNN); several as FILE:NAME "
                        "build one library of them (--name names the library)")
    b.add_argument("--name", default="model", help="symbol prefix and file stem (default: model)")
    b.add_argument("--out", help="output directory (default: build/<target>)")
    b.add_argument("--dim", action="append", metavar="NAME=N", help="bind a symbolic input dimension (NAME=N) or bound a batch dimension (NAME<=N: one library "
                            "for every size up to N, <name>_run_dims)")
    b.add_argument("--bind", action="append", metavar="NAME=VALUES",
                   help="make graph input NAME a constant of this value (a comma list such as 1,2, or "
                        "@file.npy; the input's declared dtype and shape): it leaves the C contract")
    b.add_argument("--dump-ir", action="store_true", help="print the IR after every pass to stderr")
    b.add_argument("--flash-budget", type=_budget, metavar="BYTES", help="fail if flash (text+rodata+data) exceeds this")
    b.add_argument("--ram-budget", type=_budget, metavar="BYTES", help="fail if RAM (data+bss+arena+stack) exceeds this")
    b.add_argument("--emit", choices=["object", "c"], default="object",
                   help="object: <name>.o + lib<name>.a (default); c: portable C99 <name>.c")
    b.add_argument("--weights", choices=["internal", "external"], default="internal",
                   help="internal: in the object's .rodata.<name>.weights (default); external: in "
                        "<name>_weights.bin, passed to <name>_run_ext (external flash, a file system)")
    b.add_argument("--weights-section", metavar="NAME",
                   help="the ELF section of the weights instead of .rodata.<name>.weights, for a firmware linker "
                        "script to place (`*(NAME)`: external flash, a chosen bank); letters, digits, _ . $ -, at "
                        "most 64 characters")
    b.add_argument("--parallel", type=int, metavar="N",
                   help="also <name>_run_parallel: the nodes worth it cut into up to N pieces (N >= 2) that the "
                        "caller's threads run through a parallel_for callback it passes")
    b.add_argument("--grad", choices=["reverse", "forward"], help="reverse: <name>_primal and <name>_pullback "
                   "(derivatives with respect to every float input and initializer); forward: <name>_jvp (outputs "
                   "and their tangents from inputs and theirs); instead of <name>_run")
    b.add_argument("--wrt", choices=["inputs", "params", "all"], help="with --grad reverse: cotangents of the "
                   "float inputs, of the float initializers (the parameters), or both (default: all); the pullback "
                   "skips what only the other side needs")
    b.add_argument("--residuals", choices=["save", "recompute"], help="with --grad reverse: save (default) the "
                   "forward values the pullback reads in the residual buffer, or recompute them in the pullback "
                   "from the primal's inputs (fewer residual bytes, more work and pullback arena)")
    b.add_argument("--train", action="store_true", help="<name>_train_step (--optimizer on --loss, the --trainable "
                   "initializers in a caller-owned buffer), <name>_params_init and <name>_run_params instead of "
                   "<name>_run")
    b.add_argument("--loss", choices=["mse", "cross-entropy"], default="mse",
                   help="the training loss: mse (default), or cross-entropy of the class scores against int64 labels")
    b.add_argument("--trainable", metavar="PATTERN", help="with --train: train only the initializers whose name "
                   "matches this glob (such as '*fc*'); the others stay read-only constants (default: every float "
                   "initializer)")
    b.add_argument("--optimizer", choices=["sgd", "momentum"], default="sgd",
                   help="with --train: sgd (default; p -= lr * g) or momentum (v = mu * v + g; p -= lr * v, the "
                        "velocities in the caller's zeroed opt_state)")
    b.add_argument("--momentum", type=float, metavar="MU", help="with --optimizer momentum: the coefficient mu "
                   "(default 0.9)")
    b.set_defaults(fn=cmd_build)
    z = sub.add_parser("size", help="flash/RAM/stack report of a build (builds it if needed)")
    z.add_argument("--target")
    z.add_argument("--model", help="ONNX file (given: rebuild; default: the existing build or the bundled model)")
    z.add_argument("--name", default="model")
    z.add_argument("--out", help="build directory (default: build/<target>)")
    z.add_argument("--json", metavar="PATH", help="write the report as JSON")
    z.add_argument("--html", metavar="PATH", help="write a bar chart of the largest symbols")
    z.add_argument("--diff", nargs=2, metavar=("OLD_DIR", "NEW_DIR"), help="compare two builds symbol by symbol")
    z.set_defaults(fn=cmd_size, dim=None, dump_ir=False, flash_budget=None, ram_budget=None, emit="object")
    pr = sub.add_parser("profile", help="guest instructions per node of the final graph, under QEMU")
    pr.add_argument("--target", help="target profile (run.mode = user)")
    pr.add_argument("--model", help="ONNX file (default: the bundled keyword-spotting DS-CNN)")
    pr.add_argument("--json", metavar="PATH", help="write the profile as JSON")
    pr.add_argument("--html", metavar="PATH", help="write a self-contained page with a bar chart")
    pr.add_argument("--mode", choices=["functions", "lines"],
                    help="lines (default): the shipped code itself, nodes told apart by a line table (the sum is "
                         "the shipped count exactly); functions: every node in a never-inlined function of its own")
    pr.add_argument("--runs", type=int, default=3, help="inferences in the long run (default 3; minus 1 run)")
    pr.add_argument("--train", nargs="?", const="mse", choices=["mse", "cross-entropy"], metavar="LOSS",
                    help="profile the training step of a --train LOSS build (default mse: a zero target of each "
                         "output's shape, every float initializer trained, SGD) instead of an inference")
    pr.add_argument("--diff", nargs=2, metavar=("OLD_JSON", "NEW_JSON"), help="compare two --json profiles per node")
    pr.set_defaults(fn=cmd_profile)
    c = sub.add_parser("compare", help="per-layer differences on the target against onnxruntime")
    c.add_argument("--target", required=True)
    c.add_argument("--model", help="ONNX file (default: the bundled keyword-spotting DS-CNN)")
    c.add_argument("--input", metavar="FILE.npz", help="input arrays by input name (default: seeded normal)")
    c.add_argument("--dim", action="append", metavar="NAME=N", help="bind a symbolic input dimension")
    c.add_argument("--json", metavar="PATH", help="write the per-tensor figures as JSON")
    c.set_defaults(fn=cmd_compare)

    q = sub.add_parser("quantize", help="float ONNX model -> QDQ int8 model (onnxruntime's quantize_static)")
    q.add_argument("--model", required=True, help="float ONNX file")
    q.add_argument("--out", required=True, help="where to write the QDQ model (.onnx)")
    cal = q.add_mutually_exclusive_group(required=True)
    cal.add_argument("--calibration", metavar="FILE.npz", help="calibration inputs, one array per model input")
    cal.add_argument("--calibration-random", type=int, metavar="N", help="N seeded standard-normal samples")
    q.set_defaults(fn=cmd_quantize)
    sub.add_parser("targets", help="list target profiles").set_defaults(fn=cmd_targets)
    sub.add_parser("ops", help="list supported ops").set_defaults(fn=cmd_ops)
    return ap


def _budget(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text.strip()):
        raise argparse.ArgumentTypeError(f"wants a number of bytes, got '{text}'")
    return int(text)


class _Terminated(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    """Every failure is one line on stderr, `edgec: error: ...`, and a non-zero exit: build
    errors (1), usage errors (2), file system errors (1), an interrupt or SIGTERM (130/143:
    the temporaries are removed on the way out, the previous artifacts stay), anything
    unexpected (70, with EDGEC_TRACEBACK=1 showing the traceback)."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)  # unwind (finally: clauses) instead of dying
    try:
        args = parser().parse_args(argv)
        args.fn(args)
    except _UsageError as e:
        return _fail(f"{e} (see edgec --help)", 2)
    except CompileError as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except _Terminated:
        return _fail("terminated", 143)
    except OSError as e:
        where = f"'{e.filename}': " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", 1)
    except RecursionError:
        return _fail("the model is nested too deeply to compile", 1)
    except MemoryError:
        return _fail("out of memory", 1)
    except Exception as e:  # a bug: still one line, and a way to see the rest
        if os.environ.get("EDGEC_TRACEBACK"):
            raise
        return _fail(f"internal error: {type(e).__name__}: {e} (set EDGEC_TRACEBACK=1 for the traceback; "
                     f"please report it)", 70)
    return 0


def _fail(message: str, code: int) -> int:
    try:
        sys.stdout.flush()
    except Exception:
        pass
    print(f"edgec: error: {one_line(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
