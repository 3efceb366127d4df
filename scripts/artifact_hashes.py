"""Hash every artifact of the real models on several targets, for refactors that must not
change behaviour: run before and after, then diff the two JSON files.

    python scripts/artifact_hashes.py OUT.json [--targets a,b,c]

Builds each model with `emit=object` and `emit=c` through the same driver as `invoke
build`, and records the SHA-256 of each file written (object, archive, header, C source;
the manifest too, minus nothing: it holds content hashes only, no paths or times).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.compiler import build  # noqa: E402

MODELS = [ROOT / "models" / "kws_dscnn.onnx", *sorted((ROOT / "tests" / "models").glob("*.onnx"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--targets", default="x86-64-v3,cortex-a76,rv64gcv")
    args = ap.parse_args()
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            for model in MODELS:
                for emit in ("object", "c"):
                    out = Path(tmp) / f"{target}-{model.stem}-{emit}"
                    res = build(model, target, "model", out, emit=emit)
                    for kind, path in sorted(res.paths.items()):
                        hashes[f"{target}/{model.stem}/{emit}/{kind}"] = hashlib.sha256(path.read_bytes()).hexdigest()
                    print(target, model.stem, emit, flush=True)
    Path(args.out).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
