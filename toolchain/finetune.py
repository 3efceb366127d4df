"""On-device fine-tuning, the worked example of a --train build (examples/finetune.c):
the keyword spotter's last layer trained by SGD on a few labelled recordings, run on the
target's instruction set, its loss trajectory checked against a float64 numpy simulation
of the same steps.

    invoke finetune --target cortex-a76 [--bare-metal] [--epochs 6] [--out DIR]

The model is a small variant of the bundled DS-CNN (`small_variant`): its input layer (the
10x4 convolution and its ReLU) and its classifier (average pool, fc) without the final
Softmax (the cross-entropy loss takes the class scores). The bundled weights are not
trained on speech: after its four depthwise-separable blocks the pooled features barely
depend on the input (within 2% over inputs from -20 to 100), so no last layer could learn
from them; after the input layer they do. It is built with `--train --loss cross-entropy
--trainable 'fc.*'`: the convolution stays a read-only constant, fc.weight and fc.bias
live in the program's parameter buffer. The recordings are seeded synthetic ones, two new
keywords told apart by their energy (`recordings`), stored in the program (finetune_data.h). examples/finetune.c runs under qemu-user (or natively),
or with --bare-metal (and on the Cortex-M profiles) linked into the firmware's startup
code and booted on the QEMU board, printing the loss of every step. The simulation takes
the frozen layers' features from onnxruntime and repeats every step's forward, loss,
gradient and update in float64."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .compiler import DEFAULT_MODEL, PROJECT_ROOT, build
from .errors import CompileError
from .firmware import FIRMWARE, FIRMWARE_FRAMES, FirmwareError, boot, c_array, check_image, stack_script
from .harness.runner import HarnessError, launcher, zig_cc
from .harness.system import board_cc, board_for
from .targets import get_profile

EXAMPLE = PROJECT_ROOT / "examples" / "finetune.c"
TRAINABLE = "fc.*"
LEARNING_RATE = 0.1
TOLERANCE = 1e-4  # |compiled loss - float64 loss| <= TOLERANCE * max(1, |float64 loss|), every step
STEP = re.compile(r"^step (\d+) loss (\S+)$", re.M)
CORRECT = re.compile(r"^correct before (\d+)/(\d+) after (\d+)/(\d+)$", re.M)


@dataclass
class Outcome:
    losses: np.ndarray  # printed by the program, one per step
    reference: np.ndarray  # the float64 simulation's
    before: int
    after: int
    samples: int
    output: str

    @property
    def deviation(self) -> float:
        return float(np.max(np.abs(self.losses - self.reference) / np.maximum(1.0, np.abs(self.reference))))

    @property
    def passed(self) -> bool:
        return len(self.losses) == len(self.reference) and self.deviation <= TOLERANCE


def small_variant(model: onnx.ModelProto) -> onnx.ModelProto:
    """The DS-CNN's first convolution and its ReLU, then its classifier (GlobalAveragePool,
    Flatten, Gemm), without the final Softmax: its output is the class scores."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    head = list(g.node[:2])
    tail = [n for n in g.node if n.op_type in ("GlobalAveragePool", "Flatten", "Gemm")]
    if [n.op_type for n in head] != ["Conv", "Relu"] or [n.op_type for n in tail] != ["GlobalAveragePool", "Flatten", "Gemm"]:
        raise CompileError("the fine-tuning example takes the keyword spotter's layout: Conv, Relu, ..., "
                           "GlobalAveragePool, Flatten, Gemm")
    tail[0].input[0] = head[1].output[0]
    del g.node[:]
    g.node.extend(head + tail)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    g.output[0].name = tail[-1].output[0]
    return m


def recordings(shape, classes: int, samples: int, seed: int = 0):
    """Seeded synthetic recordings of `classes` new keywords (labels 0..classes-1 in turn),
    noise whose level is the keyword's (0.5, 1.5, 2.5, ...)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % classes
    x = rng.standard_normal((samples, *shape)) * (0.5 + labels).reshape(-1, *[1] * len(shape))
    return x.astype(np.float32), labels.astype(np.int64)


def _last_gemm(model: onnx.ModelProto):
    gemm = next(n for n in reversed(model.graph.node) if n.op_type == "Gemm")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        raise CompileError(f"the simulation takes a plain Gemm as the trained layer, not '{gemm.name}' {attrs}")
    return gemm, attrs.get("transB", 0)


def simulate(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray, epochs: int, lr: float) -> np.ndarray:
    """The losses of the same SGD steps in float64: the trained Gemm's input features from
    onnxruntime (the frozen layers do not change), then per step scores, softmax cross
    entropy, its gradient and the update of the weight and bias."""
    from .harness.oracle import onnxruntime_session

    gemm, trans_b = _last_gemm(model)
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w, b = inits[gemm.input[1]], inits[gemm.input[2]]
    w = w if trans_b else w.T  # (classes, features)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(gemm.input[0]))
    session = onnxruntime_session(probe)
    name = model.graph.input[0].name
    feats = [session.run([gemm.input[0]], {name: xi[None]})[0].reshape(-1).astype(np.float64) for xi in x]
    losses = []
    for _ in range(epochs):
        for f, label in zip(feats, labels):
            z = w @ f + b
            z_max = z.max()
            p = np.exp(z - z_max)
            total = p.sum()
            losses.append(np.log(total) + z_max - z[label])
            dz = p / total
            dz[label] -= 1.0
            w -= lr * np.outer(dz, f)
            b -= lr * dz
    return np.array(losses)


def data_header(x: np.ndarray, labels: np.ndarray, epochs: int, lr: float) -> str:
    per = int(np.prod(x.shape[1:]))
    lines = ["/* finetune_data.h: recordings generated by toolchain/finetune.py. Do not edit. */",
             f"#define FT_SAMPLES {len(x)}", f"#define FT_EPOCHS {epochs}", f"#define FT_LR {float(lr)!r}f",
             c_array("static const float ft_flat", x.reshape(-1)),
             f"#define ft_inputs ((const float (*)[{per}])ft_flat)",
             c_array("static const int64_t ft_labels", labels), ""]
    return "\n".join(lines)


def _link(out: Path, profile, bare_metal: bool, manifest: dict) -> Path:
    """examples/finetune.c + libmodel.a -> the program (hosted) or the board image; its stack
    the largest entry's bound (train_step, run_params, params_init) plus the firmware's frames."""
    exe = out / ("finetune.elf" if bare_metal else "finetune")
    common = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{out}"]
    if bare_metal:
        board = board_for(profile)
        bdir = FIRMWARE / board["dir"]
        stack = max(manifest.get("stack_bytes", {}).values(), default=0) + FIRMWARE_FRAMES
        script = stack_script(out, bdir / board["linker_script"], stack)
        cmd = [*board_cc(profile, board), *common, f"-I{bdir}", "-T", str(script),
               *[str(bdir / s) for s in board["sources"]], str(FIRMWARE / "print.c")]
    else:
        cmd = [*zig_cc(profile), *common, "-DFT_HOSTED"]
    proc = subprocess.run([*cmd, str(EXAMPLE), str(out / "libmodel.a"), "-o", str(exe)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"linking examples/finetune.c for {profile.name} failed:\n{proc.stderr.strip()}")
    if bare_metal:
        check_image(exe)
    return exe


def run(target: str, out: Path, bare_metal: bool = False, epochs: int = 6, samples: int = 8,
        classes: int = 2, lr: float = LEARNING_RATE, model_path: Path | None = None) -> Outcome:
    profile = get_profile(target)
    bare_metal = bare_metal or profile.run_mode == "system"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = small_variant(onnx.load(str(model_path or DEFAULT_MODEL)))
    onnx.save(model, str(out / "kws_small.onnx"))
    res = build(out / "kws_small.onnx", target, "model", out, train="cross-entropy", trainable=TRAINABLE)
    x, labels = recordings(res.manifest["inputs"][0]["shape"][1:], classes, samples)
    (out / "finetune_data.h").write_text(data_header(x, labels, epochs, lr))
    exe = _link(out, profile, bare_metal, res.manifest)
    if bare_metal:
        rc, text = boot(exe, profile)
    else:
        proc = subprocess.run([*launcher(profile), str(exe)], capture_output=True, text=True, timeout=600)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    if rc != 0 or not CORRECT.search(text):
        raise HarnessError(f"examples/finetune.c on {target} exited {rc}:\n{text.strip()[-2000:]}")
    losses = np.array([float(v) for _, v in STEP.findall(text)])
    before, n, after, _ = map(int, CORRECT.search(text).groups())
    return Outcome(losses, simulate(model, x, labels, epochs, lr), before, after, n, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m toolchain.finetune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--bare-metal", action="store_true",
                    help="link into the firmware's startup code and boot the QEMU board (the Cortex-M targets always do)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", help="work directory (default build/finetune-<target>)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else PROJECT_ROOT / "build" / f"finetune-{args.target}"
    try:
        o = run(args.target, out, args.bare_metal, args.epochs)
    except (CompileError, HarnessError, FirmwareError) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2
    print(f"{'step':>4} {'loss on ' + args.target:>18} {'float64 simulation':>20}")
    for i, (got, want) in enumerate(zip(o.losses, o.reference)):
        print(f"{i:4d} {got:18.7f} {want:20.7f}")
    print(f"correct before {o.before}/{o.samples}, after {o.after}/{o.samples}")
    verdict = "PASS" if o.passed else "FAIL"
    print(f"{verdict}: largest loss deviation {o.deviation:.2e} (tolerance {TOLERANCE:g} relative)")
    return 0 if o.passed else 1


if __name__ == "__main__":
    sys.exit(main())
