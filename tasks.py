"""invoke tasks: the user-facing commands (`invoke --list`)."""
import os
import shutil
import subprocess
import sys

from invoke import task

PY = sys.executable


@task(help={"target": "target profile (invoke targets lists them)",
            "model": "ONNX file (default: the bundled keyword-spotting DS-CNN)",
            "name": "symbol prefix and file stem", "out": "output directory (default build/<target>)",
            "dump_ir": "print the IR after every pass", "dim": "bind a symbolic dimension, NAME=N"})
def build(c, target, model=None, name="model", out=None, dump_ir=False, dim=None):
    """Compile a model to <out>/<name>.o, lib<name>.a, <name>.h and <name>.json."""
    args = [PY, "-m", "toolchain", "build", "--target", target, "--name", name]
    if model:
        args += ["--model", model]
    if out:
        args += ["--out", out]
    if dump_ir:
        args.append("--dump-ir")
    if dim:
        args += ["--dim", dim]
    rc = subprocess.call(args)
    if rc:
        sys.exit(rc)


@task
def targets(c):
    """List the target profiles."""
    subprocess.call([PY, "-m", "toolchain", "targets"])


def ensure_qemu():
    """qemu-user runs the non-native targets; install it or say exactly how."""
    if shutil.which("qemu-aarch64") and shutil.which("qemu-riscv64"):
        return
    how = "sudo apt-get update && sudo apt-get install -y qemu-user"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        sys.exit(f"qemu-user is missing; run: {how}")
    print("installing qemu-user with apt-get")
    if (subprocess.call(sudo + ["apt-get", "update", "-qq"]) != 0
            or subprocess.call(sudo + ["apt-get", "install", "-y", "-qq", "qemu-user"]) != 0):
        sys.exit(f"could not install qemu-user; run: {how}")


@task(help={"target": "run only this target's tests (default: all targets)",
            "slow": "also run the long sweeps (full ONNX backend node tests on every target)"})
def test(c, target=None, slow=False):
    """Run the test suite: every target, natively or under QEMU."""
    ensure_qemu()
    args = [PY, "-m", "pytest", "-q", "-rfE"]
    if target:
        args += ["--target", target]
    if not slow:
        args += ["-m", "not slow"]
    sys.exit(subprocess.call(args))
