"""What a bounded batch costs: `python benchmarks/bounded_bench.py [--target T]`.

A `--dim N<=8` library runs the static batch-1 code once per item. Printed per batch size n:
guest instructions per inference of that library called with dims = {n}, against a static
build for exactly N = n (the best a per-size library can do), and the arenas. Counted with the
QEMU plugin (exact, repeatable); the model is tests/test_bounded_dims.py's small CNN and the
fully-connected autoencoder with its batch axis made symbolic.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_bounded_dims import batch_model  # noqa: E402

from toolchain.compiler import build  # noqa: E402
from toolchain.harness.plugin import count_instructions  # noqa: E402
from toolchain.harness.runner import link_harness  # noqa: E402
from toolchain.targets import get_profile  # noqa: E402

BOUND = 8


def models(tmp: Path) -> dict:
    out = {"small CNN": tmp / "cnn.onnx", "fc_autoencoder": tmp / "fc.onnx"}
    onnx.save(batch_model(), out["small CNN"])
    fc = onnx.load(ROOT / "tests" / "models" / "fc_autoencoder.onnx")
    for vi in [*fc.graph.input, *fc.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(fc, out["fc_autoencoder"])
    return out


def count(path, target, dims, n, tmp, env=None):
    out = tmp / f"{path.stem}-{target}-{'b' if isinstance(dims['N'], tuple) else dims['N']}"
    res = build(path, target, "model", out, dims=dims)
    profile = get_profile(target)
    exe = link_harness(out, "model", profile)
    inputs = [np.random.default_rng(0).standard_normal((n, *i["shape"][1:])).astype(i["dtype"])
              for i in res.manifest["inputs"]]
    specs = [(o["dtype"], (n, *o["shape"][1:])) for o in res.manifest["outputs"]]
    return count_instructions(exe, profile, inputs, specs, runs=3, env=env).per_inference, res.manifest["arena"]["size"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cortex-a76")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, path in models(tmp).items():
            print(f"{label} on {args.target}: N<={BOUND} library vs a static build per N")
            print(f"{'N':>3} {'bounded insns':>14} {'static insns':>13} {'ratio':>6} {'arena b/s':>12}")
            for n in (1, 3, BOUND):
                b, arena_b = count(path, args.target, {"N": (1, BOUND)}, n, tmp, env={"EDGEC_DIMS": str(n)})
                s, arena_s = count(path, args.target, {"N": n}, n, tmp)
                print(f"{n:>3} {b:>14,} {s:>13,} {b / s:>6.3f} {arena_b:>5}/{arena_s:<6}")


if __name__ == "__main__":
    main()
