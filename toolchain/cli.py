"""Command line: `edgec build|targets|ops` (also `python -m toolchain`). invoke tasks call these."""
from __future__ import annotations

import argparse
import sys

from .errors import CompileError, InvalidModelError


def _dims(specs):
    dims = {}
    for spec in specs or []:
        key, _, val = spec.partition("=")
        if not key or not val.isdigit() or int(val) <= 0:
            raise InvalidModelError(f"--dim wants NAME=POSITIVE_INT, got '{spec}'")
        dims[key] = int(val)
    return dims


def cmd_build(args):
    from .compiler import build

    dump = sys.stderr if args.dump_ir else None
    res = build(args.model, args.target, args.name, args.out, _dims(args.dim), dump, emit=args.emit,
                budgets={"flash_bytes": args.flash_budget, "ram_bytes": args.ram_budget})
    m = res.manifest
    print(f"built {m['model']} for {m['target']['name']} -> {res.paths['header'].parent}")
    for kind, path in res.paths.items():
        print(f"  {kind:9} {path}")
    print(f"  arena     {m['arena']['size']} bytes (lower bound {m['arena']['lower_bound']}, "
          f"align {m['arena']['align']})")
    print(f"  code      {m['code_bytes']} bytes, weights {m['weight_bytes']} bytes, "
          f"{m['macs']} MACs/inference")
    print(f"  flash     {m['flash_bytes']} bytes; RAM {m['ram_bytes']} bytes "
          f"(arena + stack {max(m['stack_bytes'].values(), default=0)})")
    return res


def cmd_targets(args):
    from .targets import all_profiles

    for p in all_profiles().values():
        run = "native" if p.runs_natively() else f"{p.qemu} -cpu {p.qemu_cpu}"
        print(f"{p.name:12} {p.triple:28} cpu={p.cpu:14} {p.description}  [run: {run}]")


def cmd_size(args):
    from pathlib import Path

    from .compiler import PROJECT_ROOT
    from .inspect.size import diff, html_chart, size_report, table

    if args.diff:
        old, new = (size_report(Path(d), args.name) for d in args.diff)
        print(diff(old, new))
        return
    if not args.target:
        raise InvalidModelError("size needs --target (or --diff OLD_DIR NEW_DIR)")
    out = Path(args.out) if args.out else PROJECT_ROOT / "build" / args.target
    if args.model or not (out / f"{args.name}.o").is_file():
        cmd_build(args)
    report = size_report(out, args.name)
    print(table(report))
    if args.json:
        Path(args.json).write_text(report.to_json())
        print(f"wrote {args.json}")
    if args.html:
        Path(args.html).write_text(html_chart(report))
        print(f"wrote {args.html}")


def cmd_ops(args):
    from .ops import registry

    print(" ".join(registry.names()))


def parser():
    ap = argparse.ArgumentParser(prog="edgec", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile an ONNX model to object, library, header, manifest")
    b.add_argument("--target", required=True)
    b.add_argument("--model", help="ONNX file (default: the bundled keyword-spotting DS-CNN)")
    b.add_argument("--name", default="model", help="symbol prefix and file stem (default: model)")
    b.add_argument("--out", help="output directory (default: build/<target>)")
    b.add_argument("--dim", action="append", metavar="NAME=N", help="bind a symbolic input dimension")
    b.add_argument("--dump-ir", action="store_true", help="print the IR after every pass to stderr")
    b.add_argument("--flash-budget", type=int, metavar="BYTES", help="fail if flash (text+rodata+data) exceeds this")
    b.add_argument("--ram-budget", type=int, metavar="BYTES", help="fail if RAM (data+bss+arena+stack) exceeds this")
    b.add_argument("--emit", choices=["object", "c"], default="object",
                   help="object: <name>.o + lib<name>.a (default); c: portable C99 <name>.c")
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
    sub.add_parser("targets", help="list target profiles").set_defaults(fn=cmd_targets)
    sub.add_parser("ops", help="list supported ops").set_defaults(fn=cmd_ops)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except CompileError as e:
        print(f"edgec: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
