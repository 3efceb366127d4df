"""Guest instructions per inference, counted by the project's own QEMU TCG plugins
(runtime/insn_count_plugin.c: the whole program; runtime/insn_profile_plugin.c: per
address range, i.e. per node function of a profiling build; runtime/insn_mnemonic_plugin.c:
per mnemonic, read by cycles.py; built on the host the first time each is needed).

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
PROFILE_PLUGIN_SOURCE = RUNTIME / "insn_profile_plugin.c"
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


def build_plugin(source: Path = PLUGIN_SOURCE) -> Path:
    """Compile a plugin once per source version; returns the .so path."""
    src = source.read_bytes() + (RUNTIME / "qemu_plugin_api.h").read_bytes()
    stem = source.stem.removesuffix("_plugin")
    out = CACHE / f"{stem}-{hashlib.sha256(src).hexdigest()[:12]}.so"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = host_cc() + ["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
                       f"-I{RUNTIME}", str(source), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"building the QEMU plugin {source.name} failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    os.replace(tmp, out)
    return out


def qemu_command(profile: Profile) -> list[str]:
    qemu = shutil.which(profile.qemu)
    if qemu is None:
        raise HarnessError(f"{profile.qemu} is not installed; run: sudo apt-get install -y qemu-user")
    return [qemu, "-cpu", profile.qemu_cpu]


def run_with_plugin(exe: Path, profile: Profile, inputs, output_specs, runs: int, source: Path = PLUGIN_SOURCE,
                    args: str = "", timeout: float = 600, env: dict | None = None) -> str:
    """One run of a program (qemu-user) or board image (system mode) under the plugin built
    from `source`, given out=REPORT and `args` ("key=value,..."); returns the report's text."""
    plugin = build_plugin(source)
    with tempfile.TemporaryDirectory(prefix="edgec-insn-") as tmp:
        report = Path(tmp) / "count.txt"
        spec = f"{plugin},out={report}" + (f",{args}" if args else "")
        if profile.run_mode == "system":  # a QEMU board: the image carries its inputs
            run_system(exe, profile, output_specs, runs=runs, timeout=timeout, qemu_extra=["-plugin", spec])
        else:
            prefix = qemu_command(profile) + ["-plugin", spec]
            run_model(exe, profile, inputs, output_specs, runs=runs, prefix=prefix,
                      env={**(env or {}), "EDGEC_UNTIMED": "1"}, timeout=timeout, fixed_layout=True)
        if not report.is_file():
            raise HarnessError(f"the plugin {source.name} wrote no report under {profile.qemu}")
        return report.read_text()


def count_once(exe: Path, profile: Profile, inputs, output_specs, runs: int, timeout: float = 600,
               env: dict | None = None) -> int:
    text = run_with_plugin(exe, profile, inputs, output_specs, runs, timeout=timeout, env=env)
    key, _, value = text.partition(":")
    if key.strip() != "insns":
        raise HarnessError(f"unexpected plugin report: {text!r}")
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


@dataclass
class RangeCounts:
    """Instructions per inference in each address range (in the order given) and outside
    all of them; with the totals of the two runs they come from."""

    per_range: list[int]
    other: int
    total_n: int
    total_1: int
    runs: int

    @property
    def per_inference(self) -> int:
        return sum(self.per_range) + self.other


def profile_once(exe: Path, profile: Profile, inputs, output_specs, runs: int, ranges: list[tuple[int, int]],
                 timeout: float = 600) -> tuple[int, int, list[int]]:
    """One run under the range-counting plugin: (total, outside every range, per range)."""
    plugin = build_plugin(PROFILE_PLUGIN_SOURCE)
    with tempfile.TemporaryDirectory(prefix="edgec-prof-") as tmp:
        table, report = Path(tmp) / "ranges.txt", Path(tmp) / "profile.txt"
        table.write_text("".join(f"{a:x} {b:x}\n" for a, b in ranges))
        prefix = qemu_command(profile) + ["-plugin", f"{plugin},ranges={table},out={report}"]
        run_model(exe, profile, inputs, output_specs, runs=runs, prefix=prefix, env={"EDGEC_UNTIMED": "1"},
                  timeout=timeout, fixed_layout=True)
        if not report.is_file():
            raise HarnessError(f"the profiling plugin wrote no report under {profile.qemu}")
        fields = {}
        for line in report.read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = int(value)
    try:
        return fields["insns"], fields["other"], [fields[str(i)] for i in range(len(ranges))]
    except KeyError as e:
        raise HarnessError(f"the profiling plugin's report lacks {e}") from None


def count_ranges(exe: Path, profile: Profile, inputs, output_specs, ranges: list[tuple[int, int]],
                 runs: int = 3) -> RangeCounts:
    """Per-range instructions of one inference: (N runs - 1 run) / (N - 1), as count_instructions."""
    if runs < 2:
        raise ValueError("need at least 2 runs to cancel start-up")
    t1, o1, r1 = profile_once(exe, profile, inputs, output_specs, 1, ranges)
    tn, on, rn = profile_once(exe, profile, inputs, output_specs, runs, ranges)
    per = []
    for i, (a, b) in enumerate(zip(r1, rn)):
        if (b - a) % (runs - 1) or b < a:
            raise HarnessError(f"range {i}'s count does not scale with runs: 1 run {a}, {runs} runs {b}")
        per.append((b - a) // (runs - 1))
    if (on - o1) % (runs - 1) or on < o1:
        raise HarnessError(f"instructions outside the ranges do not scale with runs: 1 run {o1}, {runs} runs {on}")
    return RangeCounts(per, (on - o1) // (runs - 1), tn, t1, runs)
