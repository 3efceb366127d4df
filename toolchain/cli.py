"""Command line: `edgec build|targets|ops` (also `python -m toolchain`). invoke tasks call these."""
from __future__ import annotations

import argparse
import sys

from .errors import CompileError


def _dims(specs):
    dims = {}
    for spec in specs or []:
        key, _, val = spec.partition("=")
        if not key or not val.isdigit() or int(val) <= 0:
            raise CompileError(f"--dim wants NAME=POSITIVE_INT, got '{spec}'")
        dims[key] = int(val)
    return dims


def cmd_build(args):
    from .compiler import build

    dump = sys.stderr if args.dump_ir else None
    res = build(args.model, args.target, args.name, args.out, _dims(args.dim), dump)
    m = res.manifest
    print(f"built {m['model']} for {m['target']['name']} -> {res.paths['library'].parent}")
    for kind, path in res.paths.items():
        print(f"  {kind:9} {path}")
    print(f"  arena     {m['arena']['size']} bytes (lower bound {m['arena']['lower_bound']}, "
          f"align {m['arena']['align']})")
    print(f"  code      {m['code_bytes']} bytes, weights {m['weight_bytes']} bytes, "
          f"{m['macs']} MACs/inference")
    return res


def cmd_targets(args):
    from .targets import all_profiles

    for p in all_profiles().values():
        run = "native" if p.runs_natively() else f"{p.qemu} -cpu {p.qemu_cpu}"
        print(f"{p.name:12} {p.triple:28} cpu={p.cpu:14} {p.description}  [run: {run}]")


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
    b.set_defaults(fn=cmd_build)
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
