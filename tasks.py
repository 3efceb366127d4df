"""invoke tasks: the user-facing commands (`invoke --list`)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import task

PY = sys.executable


def _exec(args):
    """Become the command (os.execv): it is the process invoke was, so Ctrl-C, SIGTERM and
    the exit code reach it directly, and nothing outlives a killed `invoke`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(args[0], args)


# Every task's arguments are options with defaults (none is positional): invoke would
# otherwise take `--help` as the value of a required positional (`invoke build --help`
# ran a build of target "--help"). Missing required options are reported by the command.
@task(help={"target": "target profile (invoke targets lists them); required",
            "model": "ONNX file (default: the bundled keyword-spotting DS-CNN); repeat as FILE:NAME for "
                     "one library of several models",
            "name": "symbol prefix and file stem", "out": "output directory (default build/<target>)",
            "dump_ir": "print the IR after every pass",
            "dim": "bind a symbolic dimension, NAME=N, or bound a batch, NAME<=N (repeatable)",
            "bind": "make graph input NAME a constant: NAME=1,2 or NAME=@file.npy (repeatable)",
            "emit": "object (default: <name>.o, lib<name>.a) or c (portable C99 <name>.c)",
            "flash_budget": "fail if flash (text+rodata+data) exceeds BYTES",
            "ram_budget": "fail if RAM (data+bss+arena+stack) exceeds BYTES",
            "weights": "internal (default) or external: weights in <name>_weights.bin, <name>_run_ext",
            "weights_section": "the ELF section of the weights (default .rodata.<name>.weights), for a linker script",
            "grad": "reverse: <name>_primal and <name>_pullback; forward: <name>_jvp; instead of <name>_run",
            "wrt": "with --grad reverse: inputs, params or all (the default): which cotangents",
            "residuals": "with --grad reverse: save (the default) or recompute the forward values in the pullback",
            "train": "<name>_train_step, <name>_params_init and <name>_run_params instead of <name>_run",
            "loss": "training loss: mse (the default) or cross-entropy (class scores against int64 labels)",
            "trainable": "with --train: a glob over initializer names to train (default: every float one)",
            "optimizer": "with --train: sgd (the default) or momentum (v = mu * v + g; p -= lr * v)",
            "momentum": "with --optimizer momentum: the coefficient mu (default 0.9)",
            "parallel": "also <name>_run_parallel: nodes cut into up to N pieces the caller's threads run"},
      iterable=["dim", "model", "bind"])
def build(c, target=None, model=None, name=None, out=None, dump_ir=False, dim=None, emit=None,
          flash_budget=None, ram_budget=None, weights=None, grad=None, train=False, loss=None, bind=None,
          trainable=None, optimizer=None, momentum=None, wrt=None, residuals=None, weights_section=None,
          parallel=None):
    """Compile a model to <out>/<name>.o, lib<name>.a (or <name>.c), <name>.h, <name>.json,
    <name>.cmake and <name>.mk (runs `python -m toolchain build`, the edgec CLI)."""
    args = [PY, "-m", "toolchain", "build"]
    for flag, value in (("--target", target), ("--name", name), ("--out", out),
                        ("--emit", emit), ("--flash-budget", flash_budget), ("--ram-budget", ram_budget),
                        ("--weights", weights), ("--grad", grad), ("--loss", loss), ("--trainable", trainable),
                        ("--optimizer", optimizer), ("--momentum", momentum), ("--wrt", wrt),
                        ("--residuals", residuals), ("--weights-section", weights_section),
                        ("--parallel", parallel)):
        if value is not None:
            args += [flag, str(value)]
    for m in model or []:
        args += ["--model", m]
    for d in dim or []:
        args += ["--dim", d]
    for b in bind or []:
        args += ["--bind", b]
    if dump_ir:
        args.append("--dump-ir")
    if train:
        args.append("--train")
    _exec(args)


@task(help={"graphs": "random valid graphs to compile and compare (default 2000)",
            "mutations": "structural corruptions of the real models (default 1000)",
            "seed": "the run's seed (the same seed gives the same cases)",
            "minutes": "stop starting new cases after this long (default 60)",
            "json": "write the counts and findings here"})
def fuzz(c, graphs=2000, mutations=1000, seed=0, minutes=60, json=None):
    """The differential fuzzer, long run (tests/fuzz.py): random valid graphs and mutations of
    the real models against onnxruntime; findings are saved under build/fuzz-findings/."""
    args = [PY, str(Path(__file__).parent / "tests" / "fuzz.py"), "--graphs", str(graphs),
            "--mutations", str(mutations), "--seed", str(seed), "--minutes", str(minutes)]
    if json:
        args += ["--json", json]
    _exec(args)


@task(help={"target": "target profile (required)", "model": "ONNX file (default: the bundled DS-CNN)",
            "input": "an .npz of input arrays by name (default: seeded normal)",
            "dim": "bind a symbolic dimension, NAME=N (repeatable)", "json": "write the figures as JSON"},
      iterable=["dim"])
def compare(c, target=None, model=None, input=None, dim=None, json=None):
    """Per-layer differences on the target against onnxruntime (every intermediate tensor:
    max abs/rel error, cosine), the first node out of tolerance; non-zero exit if the outputs differ."""
    ensure_tools()
    args = [PY, "-m", "toolchain", "compare"]
    for flag, value in (("--target", target), ("--model", model), ("--input", input), ("--json", json)):
        if value is not None:
            args += [flag, str(value)]
    for d in dim or []:
        args += ["--dim", d]
    _exec(args)


@task(help={"target": "target profile whose CPU the firmware runs on (e.g. cortex-a76); required",
            "model": "ONNX file (default: the bundled keyword-spotting DS-CNN)",
            "path": "object, c or both (default): which build of the model to link",
            "out": "work directory (default build/firmware-<target>)",
            "corrupt_expected": "falsify one expected value: must report FAIL and exit non-zero",
            "weights_section": "the model's weights in this ELF section (Cortex-M: .weights goes to WEIGHTS)"})
def firmware(c, target=None, model=None, path=None, out=None, corrupt_expected=False, weights_section=None):
    """Build the bare-metal example firmware (firmware/) and boot it on full-system QEMU:
    prints PASS with the max error and exits 0, or FAIL and exits non-zero."""
    args = [PY, "-m", "toolchain.firmware"]
    for flag, value in (("--target", target), ("--path", path), ("--model", model), ("--out", out),
                        ("--weights-section", weights_section)):
        if value is not None:
            args += [flag, str(value)]
    if corrupt_expected:
        args.append("--corrupt-expected")
    _exec(args)


@task(help={"target": "target profile (user-mode targets run under qemu-user, Cortex-M on their board); required",
            "bare_metal": "link into the firmware's startup code and boot the QEMU board (cortex-a76: the virt board)",
            "epochs": "passes over the 8 stored recordings (default 6)",
            "out": "work directory (default build/finetune-<target>)"})
def finetune(c, target=None, bare_metal=False, epochs=None, out=None):
    """The worked fine-tuning example (examples/finetune.c): train the keyword spotter's last
    layer on the target, print each step's loss beside a float64 simulation's, PASS or FAIL."""
    args = [PY, "-m", "toolchain.finetune"]
    for flag, value in (("--target", target), ("--epochs", epochs), ("--out", out)):
        if value is not None:
            args += [flag, str(value)]
    if bare_metal:
        args.append("--bare-metal")
    _exec(args)


@task(help={"model": "float ONNX file; required", "out": "QDQ model to write; required",
            "calibration": "calibration inputs (.npz: one array per model input, (N, *shape))",
            "calibration_random": "calibrate on N seeded standard-normal samples instead"})
def quantize(c, model=None, out=None, calibration=None, calibration_random=None):
    """Quantize a float model to a QDQ int8 model with onnxruntime's quantize_static (per-channel
    int8 weights, per-tensor int8 activations) and print each output's float-vs-int8 agreement
    (runs `python -m toolchain quantize`, the edgec CLI)."""
    args = [PY, "-m", "toolchain", "quantize"]
    for flag, value in (("--model", model), ("--out", out), ("--calibration", calibration),
                        ("--calibration-random", calibration_random)):
        if value is not None:
            args += [flag, str(value)]
    _exec(args)


@task
def targets(c):
    """List the target profiles."""
    _exec([PY, "-m", "toolchain", "targets"])


@task(help={"stats": "print entries, bytes and the size bound (the default)",
            "clear": "remove every entry"})
def cache(c, stats=False, clear=False):
    """The compile cache ($EDGEC_CACHE_DIR, default ~/.cache/edgec; EDGEC_CACHE=0 disables it)."""
    sys.exit(subprocess.call([PY, "-m", "toolchain.cache", "--clear" if clear else "--stats"]))


def ensure_tools():
    """qemu-user runs the non-native targets; qemu-system-arm boots the firmware images and runs
    the Cortex-M (system-mode) targets; llvm's llvm-mc names the Armv8.1-M instructions QEMU's
    disassembler cannot (bench --cycles on cortex-m55); install them or say exactly how."""
    missing = [b for b in ("qemu-aarch64", "qemu-riscv64", "qemu-system-aarch64", "qemu-system-arm", "llvm-mc")
               if not shutil.which(b)]
    if not missing:
        return
    packages = ["qemu-user", "qemu-system-arm", "llvm"]
    how = f"sudo apt-get update && sudo apt-get install -y {' '.join(packages)}"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        sys.exit(f"{', '.join(missing)} missing; run: {how}")
    print(f"installing {' '.join(packages)} with apt-get")
    if (subprocess.call(sudo + ["apt-get", "update", "-qq"]) != 0
            or subprocess.call(sudo + ["apt-get", "install", "-y", "-qq", *packages]) != 0):
        sys.exit(f"could not install {' '.join(packages)}; run: {how}")


@task(help={"target": "run only this target's tests (default: all targets)",
            "slow": "also run the long sweeps (full ONNX backend node tests on every target)"})
def test(c, target=None, slow=False):
    """Run the test suite: every target, natively or under QEMU, one worker per core
    (pytest-xdist; a file's tests stay on one worker, so its shared builds are made once)."""
    ensure_tools()
    args = [PY, "-m", "pytest", "-q", "-rfE", "-n", "auto", "--dist", "loadfile"]
    if target:
        args += ["--target", target]
    if not slow:
        args += ["-m", "not slow"]
    _exec(args)


@task(help={"target": "target profile (repeatable; default: every target of ci/matrix.toml)",
            "model": "ONNX file (repeatable; default: every model of ci/matrix.toml)",
            "json": "write the figures to this JSON file", "runs": "timed runs per measurement",
            "layers": "also the single-layer cases (GEMM 256^3 and 512^3, 3x3, depthwise, 1x1 conv)",
            "train": "also instructions per training step (a --train mse build, SGD, zero target), "
                     "and the ratio to those per inference",
            "grad": "reverse: also instructions per primal and per pullback (a --grad reverse build)",
            "cycles": "also ESTIMATED cycles per inference on the Cortex-M boards (the core's [cycles] "
                      "table x instructions per mnemonic; not measured)",
            "threads": "also a --parallel N build on N threads: checked everywhere, timed natively against "
                       "one thread and onnxruntime with N threads"},
      iterable=["target", "model"])
def bench(c, target=None, model=None, json=None, runs=20, layers=False, train=False, grad=None, cycles=False,
          threads=None):
    """Latency table: instructions per inference and per MAC (QEMU plugin), median and p99
    time (emulated, or native next to onnxruntime), correctness against onnxruntime; with
    --train / --grad reverse, instructions per training step / primal + pullback too; with
    --cycles, estimated cycles on the Cortex-M boards."""
    ensure_tools()
    args = [PY, "-m", "toolchain.bench", "--runs", str(runs)]
    if train:
        args.append("--train")
    if grad:
        args += ["--grad", grad]
    if cycles:
        args.append("--cycles")
    if threads:
        args += ["--threads", str(threads)]
    for t in target or []:
        args += ["--target", t]
    for m in model or []:
        args += ["--model", m]
    if json:
        args += ["--json", json]
    if layers:
        args.append("--layers")
    _exec(args)


@task(help={"json": "write the figures to this JSON file"})
def ci(c, json=None):
    """The whole matrix (ci/matrix.toml): every target x every model, built, run on the
    target's instruction set, compared with onnxruntime; a summary table; non-zero exit
    if any cell fails."""
    ensure_tools()
    args = [PY, "-m", "toolchain.bench", "--runs", "5"]
    if json:
        args += ["--json", json]
    _exec(args)


@task(help={"target": "target profile", "model": "ONNX file (rebuilds; default: the existing build)",
            "name": "symbol prefix / file stem", "out": "build directory (default build/<target>)",
            "json": "write the report as JSON", "html": "write a bar chart of the largest symbols",
            "diff": "compare two build directories: --diff OLD,NEW"})
def size(c, target=None, model=None, name=None, out=None, json=None, html=None, diff=None):
    """Flash, RAM, stack and the largest symbols of a build, read from its ELF object."""
    args = [PY, "-m", "toolchain", "size"]
    for flag, value in (("--target", target), ("--model", model), ("--name", name), ("--out", out),
                        ("--json", json), ("--html", html)):
        if value is not None:
            args += [flag, str(value)]
    if diff is not None:
        old, sep, new = str(diff).partition(",")
        if not sep or not old or not new or "," in new:
            sys.exit(f"edgec: error: --diff wants OLD_DIR,NEW_DIR, got '{diff}'")
        args += ["--diff", old, new]
    _exec(args)


@task(help={"target": "target profile (run under qemu-user, x86-64-v3 included); required unless --diff",
            "model": "ONNX file (default: the bundled keyword-spotting DS-CNN)",
            "json": "write the profile as JSON", "html": "write a self-contained page with a bar chart",
            "runs": "inferences in the long run (the count is N runs minus 1 run; default 3)",
            "mode": "lines (default: the shipped code itself, nodes told apart by a line table) or "
                    "functions (each node in a never-inlined function)",
            "diff": "compare two JSON profiles node by node: --diff OLD.json,NEW.json",
            "train": "profile the training step of a --train LOSS build (mse or cross-entropy) instead"})
def profile(c, target=None, model=None, json=None, html=None, runs=None, mode=None, diff=None, train=None):
    """Guest instructions per node of the final graph (after fusion), counted under QEMU:
    MACs, insns/MAC, share; a table by cost, JSON, an HTML bar chart, or a diff of two JSONs."""
    ensure_tools()
    args = [PY, "-m", "toolchain", "profile"]
    for flag, value in (("--target", target), ("--model", model), ("--json", json), ("--html", html),
                        ("--runs", runs), ("--mode", mode), ("--train", train)):
        if value is not None:
            args += [flag, str(value)]
    if diff is not None:
        old, sep, new = str(diff).partition(",")
        if not sep or not old or not new or "," in new:
            sys.exit(f"edgec: error: --diff wants OLD.json,NEW.json, got '{diff}'")
        args += ["--diff", old, new]
    _exec(args)
