"""Links the C harness against a built library for a target (zig cc, static musl) and runs
it natively or under qemu-user with the profile's CPU, returning outputs and timings."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import (check_weights_symbol, macro_prefix, parallel_type, params_init_symbol, primal_symbol,
                        pullback_symbol, run_dims_symbol, run_ext_symbol, run_parallel_symbol, run_symbol,
                        train_step_symbol)
from ..targets import Profile

RUNTIME = Path(__file__).resolve().parent.parent.parent / "runtime"


class HarnessError(Exception):
    """The program could not be built or run, or the guest failed; the message says how."""


@dataclass
class RunResult:
    outputs: list
    times_ns: list
    stdout: str
    stderr: str


def zig_cc(profile: Profile) -> list[str]:
    return profile.zig_cc() + ["-static", "-O2"]


def link_harness(build_dir: Path, name: str, profile: Profile, out: Path | None = None) -> Path:
    """harness.c + lib<name>.a -> a static executable for the target."""
    build_dir = Path(build_dir)
    out = Path(out) if out else build_dir / f"{name}_harness"
    cmd = zig_cc(profile) + [
        f"-I{build_dir}", f'-DEDGEC_HEADER="{name}.h"', f"-DEDGEC_RUN={run_symbol(name)}",
        f"-DEDGEC_PREFIX={macro_prefix(name)}", str(RUNTIME / "harness.c"),
        str(build_dir / f"lib{name}.a"), "-o", str(out)]
    manifest = build_dir / f"{name}.json"
    facts = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if facts.get("bounded_dims"):
        cmd.insert(-4, f"-DEDGEC_RUN_DIMS={run_dims_symbol(name)}")
    if facts.get("parallel"):  # the pool of EDGEC_THREADS threads (runtime/parallel_pool.c)
        cmd[-4:-4] = [f"-DEDGEC_RUN_PARALLEL={run_parallel_symbol(name)}", f"-DEDGEC_PARALLEL_T={parallel_type(name)}",
                      f"-I{RUNTIME}", str(RUNTIME / "parallel_pool.c")]
    if facts.get("weights"):  # external: the harness reads <name>_weights.bin from EDGEC_WEIGHTS
        cmd[-4:-4] = [f"-DEDGEC_RUN_EXT={run_ext_symbol(name)}", f"-DEDGEC_CHECK_WEIGHTS={check_weights_symbol(name)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"linking the harness for {profile.name} failed:\n{proc.stderr.strip()}")
    return out


def link_train_harness(build_dir: Path, name: str, profile: Profile, learning_rate: float = 0.01,
                       out: Path | None = None) -> Path:
    """train_harness.c + lib<name>.a of a --train build (RUNS training steps after one
    params_init) or of a --grad reverse build (RUNS primal + pullback calls) -> a static
    executable for the target, driven by run_model like the inference harness."""
    build_dir = Path(build_dir)
    facts = json.loads((build_dir / f"{name}.json").read_text())
    if "train" in facts:
        defs = [f"-DEDGEC_TRAIN_STEP={train_step_symbol(name)}", f"-DEDGEC_PARAMS_INIT={params_init_symbol(name)}",
                f"-DEDGEC_NUM_TARGETS={len(facts['train']['targets'])}", f"-DEDGEC_LR={float(learning_rate)!r}f"]
    elif facts.get("grad", {}).get("mode") == "reverse":
        defs = [f"-DEDGEC_PRIMAL={primal_symbol(name)}", f"-DEDGEC_PULLBACK={pullback_symbol(name)}"]
    else:
        raise HarnessError(f"{build_dir / name}.json is neither a --train nor a --grad reverse build")
    out = Path(out) if out else build_dir / f"{name}_train_harness"
    cmd = zig_cc(profile) + [f"-I{build_dir}", f'-DEDGEC_HEADER="{name}.h"', f"-DEDGEC_PREFIX={macro_prefix(name)}",
                             *defs, str(RUNTIME / "train_harness.c"), str(build_dir / f"lib{name}.a"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"linking the training harness for {profile.name} failed:\n{proc.stderr.strip()}")
    return out


def launcher(profile: Profile) -> list[str]:
    """How to execute a target binary on this host: directly, or under qemu-user."""
    if profile.runs_natively():
        return []
    qemu = shutil.which(profile.qemu)
    if qemu is None:
        raise HarnessError(f"{profile.qemu} is not installed; run: sudo apt-get install -y qemu-user")
    return [qemu, "-cpu", profile.qemu_cpu]


ADDR_NO_RANDOMIZE = 0x0040000


def _no_aslr():
    """In the child before exec: no address-space randomization. Under qemu-user the
    host's layout shifts where the guest's heap and mappings land, which changes the
    paths musl's memcpy/memset take by a few instructions from run to run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.personality(ctypes.c_ulong(libc.personality(ctypes.c_ulong(0xFFFFFFFF)) | ADDR_NO_RANDOMIZE))


def run_program(cmd: list[str], timeout: float, env: dict | None = None,
                fixed_layout: bool = False) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **env} if env else None,
                              preexec_fn=_no_aslr if fixed_layout else None)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        if proc.returncode < 0 or proc.returncode >= 128:
            signum = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
            try:
                what = f"killed by signal {signal.Signals(signum).name}"
            except ValueError:
                what = f"exit code {proc.returncode}"
        else:
            what = f"exit code {proc.returncode}"
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise HarnessError(f"guest program failed ({what}): {' '.join(cmd)}\n{tail}")
    return proc


def run_model(exe: Path, profile: Profile, inputs: list[np.ndarray], output_specs: list[tuple],
              runs: int = 1, arena_bytes: int | None = None, timeout: float = 300,
              prefix: list[str] | None = None, env: dict | None = None,
              fixed_layout: bool = False) -> RunResult:
    """output_specs: [(dtype, shape)] in graph order. `prefix` replaces the launcher (e.g. a
    qemu command line with an instruction-counting plugin); `env` adds to the guest's
    environment."""
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as tmp:
        tmp = Path(tmp)
        data = [np.ascontiguousarray(x) for x in inputs]
        (tmp / "in.bin").write_bytes(b"".join(x.tobytes() for x in data))
        sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for dt, shape in output_specs]
        cmd = (launcher(profile) if prefix is None else prefix) + [
            str(exe), str(runs), str(tmp / "in.bin"), str(tmp / "out.bin"),
            str(len(data)), *[str(x.nbytes) for x in data], str(len(sizes)), *map(str, sizes)]
        if arena_bytes is not None:
            cmd.append(str(arena_bytes))
        proc = run_program(cmd, timeout, env, fixed_layout)
        raw = (tmp / "out.bin").read_bytes()
    outputs, pos = [], 0
    for (dt, shape), size in zip(output_specs, sizes):
        outputs.append(np.frombuffer(raw[pos:pos + size], dtype=dt).reshape(shape).copy())
        pos += size
    times = []
    for line in proc.stdout.splitlines():
        if line.startswith("times_ns:"):
            times = [int(t) for t in line.split()[1:]]
    return RunResult(outputs, times, proc.stdout, proc.stderr)
