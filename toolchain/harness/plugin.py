"""Guest instructions per inference, counted by the project's own QEMU TCG plugin
(runtime/insn_count_plugin.c, built on the host the first time it is needed).

Wall time under emulation says little about real hardware and is noisy; the number of
guest instructions is exact and repeatable. The harness is run with N inferences and
with 1, untimed (so every run executes the same instructions), and the difference
divided by N - 1 is the cost of one inference with start-up and I/O cancelled out.
Every target runs under qemu here, x86-64-v3 included (qemu-x86_64 -cpu max has AVX2);
system-mode targets (Cortex-M) on their QEMU board, where the count covers the whole
machine (startup, semihosting calls, the model) and N runs minus 1 run again leaves N-1
inferences.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..targets import Profile, zig
from .runner import RUNTIME, HarnessError, run_model
from .system import run_system

PLUGIN_SOURCE = RUNTIME / "insn_count_plugin.c"
CACHE = Path(os.environ.get("EDGEC_PLUGIN_DIR", Path(__file__).resolve().parents[2] / "build" / ".plugins"))


@dataclass
class InsnCount:
    per_inference: int  # (count(N runs) - count(1 run)) / (N - 1)
    total_n: int
    total_1: int
    runs: int


def host_cc() -> list[str]:
    """The host C compiler: $CC, gcc or cc, else zig's clang for the host."""
    for cand in (os.environ.get("CC"), "gcc", "cc"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()
    return zig("cc")


def build_plugin() -> Path:
    """Compile the plugin once per source version; returns the .so path."""
    src = PLUGIN_SOURCE.read_bytes() + (RUNTIME / "qemu_plugin_api.h").read_bytes()
    out = CACHE / f"insn_count-{hashlib.sha256(src).hexdigest()[:12]}.so"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = host_cc() + ["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
                       f"-I{RUNTIME}", str(PLUGIN_SOURCE), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"building the QEMU plugin failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    os.replace(tmp, out)
    return out


def qemu_command(profile: Profile) -> list[str]:
    qemu = shutil.which(profile.qemu)
    if qemu is None:
        raise HarnessError(f"{profile.qemu} is not installed; run: sudo apt-get install -y qemu-user")
    return [qemu, "-cpu", profile.qemu_cpu]


def count_once(exe: Path, profile: Profile, inputs, output_specs, runs: int, timeout: float = 600,
               env: dict | None = None) -> int:
    plugin = build_plugin()
    with tempfile.TemporaryDirectory(prefix="edgec-insn-") as tmp:
        report = Path(tmp) / "count.txt"
        if profile.run_mode == "system":  # a QEMU board: the image carries its inputs
            run_system(exe, profile, output_specs, runs=runs, timeout=timeout,
                       qemu_extra=["-plugin", f"{plugin},out={report}"])
        else:
            prefix = qemu_command(profile) + ["-plugin", f"{plugin},out={report}"]
            run_model(exe, profile, inputs, output_specs, runs=runs, prefix=prefix,
                      env={**(env or {}), "EDGEC_UNTIMED": "1"}, timeout=timeout, fixed_layout=True)
        if not report.is_file():
            raise HarnessError(f"the instruction-count plugin wrote no report under {profile.qemu}")
        key, _, value = report.read_text().partition(":")
        if key.strip() != "insns":
            raise HarnessError(f"unexpected plugin report: {report.read_text()!r}")
        return int(value)


def count_instructions(exe: Path, profile: Profile, inputs, output_specs, runs: int = 5,
                       env: dict | None = None) -> InsnCount:
    """env: added to the guest's environment (e.g. EDGEC_DIMS for a bounded batch)."""
    if runs < 2:
        raise ValueError("need at least 2 runs to cancel start-up")
    one = count_once(exe, profile, inputs, output_specs, 1, env=env)
    many = count_once(exe, profile, inputs, output_specs, runs, env=env)
    diff = many - one
    if diff <= 0 or diff % (runs - 1):
        raise HarnessError(f"instruction counts do not scale with runs: 1 run {one}, {runs} runs {many}")
    return InsnCount(diff // (runs - 1), many, one, runs)
