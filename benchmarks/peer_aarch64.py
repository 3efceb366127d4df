"""Ours vs onnxruntime on cortex-a76: guest instructions per inference, both counted the
same way (the project's QEMU TCG plugin, runtime/insn_count_plugin.c, under
`qemu-aarch64 -cpu cortex-a76`; (count(N runs) - count(1 run)) / (N - 1), so start-up and
I/O cancel).

    python benchmarks/peer_aarch64.py [MODEL.onnx ...] [--runs N] [--repeat K] [--json PATH]

Printed per model: our cortex-a76 build's instructions per inference (toolchain.bench: built,
checked against onnxruntime x86 and counted exactly as `invoke bench --target cortex-a76`
does), onnxruntime's aarch64 build's instructions per inference (benchmarks/peer/ort_driver.c,
onnxruntime's C API: one intra-op and one inter-op thread, sequential execution,
ORT_ENABLE_ALL graph optimisation, outputs allocated by onnxruntime on every run), their ratio
(ours / onnxruntime: below 1 means fewer instructions than onnxruntime) and how far
onnxruntime aarch64's outputs are from onnxruntime x86's on the same inputs (a sanity check
of the peer run). Inputs: seeded standard-normal float32 of the declared shapes
(toolchain.bench.seeded_inputs, the same inputs our count uses). Default models:
models/kws_dscnn.onnx and tests/models/*.onnx.

onnxruntime's count is not exactly repeatable (ours is): a process's count varies by a
few thousand instructions from one run to the next, now and then by some ten thousand more
(background work: a telemetry thread that wakes on a clock, time stamps), always upwards.
So each of the 1-run and N-run counts is taken K times and the least of each is used; the
spread printed is (max - min) of the N-run counts divided by N - 1, a bound on the noise
per inference.

Set-up (nothing in tests/ needs it; it is a benchmark, run by hand):

1. onnxruntime's aarch64 wheel (the C API library is inside it), e.g.
       pip download onnxruntime==1.32.0 --only-binary=:all: --no-deps \\
           --platform manylinux_2_28_aarch64 --python-version 3.11 -d /tmp/ortarm
   and pass it as --wheel (it is unpacked to build/peer/ort/; or give --ort-lib, a folder
   holding libonnxruntime.so.1).
2. The header onnxruntime_c_api.h (with onnxruntime_ep_c_api.h and onnxruntime_error_code.h
   beside it) from onnxruntime's repository, include/onnxruntime/core/session/ at the tag of
   the wheel (v1.32.0) or older: the OrtApi table only grows, and the driver asks for the
   header's ORT_API_VERSION. Pass the folder as --include (default /tmp/ortarm/include).
3. An aarch64 glibc/libstdc++ for `qemu-aarch64 -L SYSROOT` (libonnxruntime.so is dynamic):
       dpkg --add-architecture arm64 && apt-get update
       cd /tmp && apt-get download libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64
       for d in /tmp/*_arm64.deb; do dpkg -x "$d" /tmp/arm64-sysroot; done
   (--sysroot, default /tmp/arm64-sysroot). This script then adds to the sysroot a
   /proc/cpuinfo and /sys/devices/system/cpu/ of one Cortex-A76 core: qemu-user looks for
   guest paths under -L first, and without them onnxruntime's CPU detection (cpuinfo) reads
   the x86 host's /proc/cpuinfo and crashes with a null dereference in session creation.
4. qemu-aarch64 (apt-get install qemu-user) and the project's venv (zig cc, onnxruntime x86).

The driver is compiled with zig cc for aarch64-linux-gnu.2.28 (the wheel's glibc baseline),
-mcpu=cortex_a76, into build/peer/. onnxruntime's own kernels choose their code paths at run
time from the CPU features qemu reports for -cpu cortex-a76 (NEON, dot product, fp16).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.bench import bench, error_report, seeded_inputs  # noqa: E402
from toolchain.harness.oracle import onnxruntime_session  # noqa: E402
from toolchain.harness.plugin import build_plugin  # noqa: E402
from toolchain.harness.runner import run_program  # noqa: E402
from toolchain.targets import zig  # noqa: E402

TARGET = "cortex-a76"
DRIVER = ROOT / "benchmarks" / "peer" / "ort_driver.c"
WORK = ROOT / "build" / "peer"
DEFAULT_MODELS = [ROOT / "models" / "kws_dscnn.onnx", *sorted((ROOT / "tests" / "models").glob("*.onnx"))]

# One Cortex-A76 core (MIDR 0x414fd0b1: Arm, r4p1, part 0xd0b), as Linux shows it.
CPUINFO = ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
           "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
           "CPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n")
SYS_CPU = {"possible": "0", "present": "0", "online": "0", "kernel_max": "0",
           "cpu0/topology/physical_package_id": "0", "cpu0/topology/cluster_cpus_list": "0",
           "cpu0/topology/core_siblings_list": "0", "cpu0/topology/thread_siblings_list": "0",
           "cpu0/regs/identification/midr_el1": "0x00000000414fd0b1"}


class SetupError(RuntimeError):
    pass


def prepare_sysroot(sysroot: Path):
    """Check the aarch64 runtime is there and give it a one-core Cortex-A76 /proc and /sys."""
    for lib in ("lib/ld-linux-aarch64.so.1", "lib/aarch64-linux-gnu/libc.so.6",
                "usr/lib/aarch64-linux-gnu/libstdc++.so.6", "lib/aarch64-linux-gnu/libgcc_s.so.1"):
        if not (sysroot / lib).exists():
            raise SetupError(f"{sysroot / lib} is missing: set up the aarch64 sysroot (see this script's docstring)")
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text(CPUINFO)
    base = sysroot / "sys" / "devices" / "system" / "cpu"
    for name, value in SYS_CPU.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(value + "\n")


def ort_library(wheel: Path | None, ort_lib: Path | None) -> Path:
    """The folder holding libonnxruntime.so.1 (and libonnxruntime.so for the linker)."""
    if ort_lib is None:
        if wheel is None:
            raise SetupError("give --wheel (onnxruntime's aarch64 wheel) or --ort-lib")
        ort_lib = WORK / "ort" / wheel.stem
        if not ort_lib.is_dir():
            with zipfile.ZipFile(wheel) as z:
                names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.")]
                if not names:
                    raise SetupError(f"{wheel} holds no onnxruntime/capi/libonnxruntime.so.*")
                tmp = ort_lib.with_suffix(".tmp")
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / Path(names[0]).name).write_bytes(z.read(names[0]))
                tmp.rename(ort_lib)
    ort_lib = Path(ort_lib)
    real = sorted(ort_lib.glob("libonnxruntime.so.1.*"))
    if not real and not (ort_lib / "libonnxruntime.so.1").exists():
        raise SetupError(f"no libonnxruntime.so.1* in {ort_lib}")
    for link in ("libonnxruntime.so.1", "libonnxruntime.so"):
        if not (ort_lib / link).exists():
            (ort_lib / link).symlink_to(real[0].name if real else "libonnxruntime.so.1")
    return ort_lib


def build_driver(include: Path, ort_lib: Path) -> Path:
    if not (include / "onnxruntime_c_api.h").is_file():
        raise SetupError(f"{include}/onnxruntime_c_api.h is missing (see this script's docstring)")
    exe = WORK / "ort_driver"
    if exe.is_file() and exe.stat().st_mtime > DRIVER.stat().st_mtime:
        return exe
    WORK.mkdir(parents=True, exist_ok=True)
    cmd = zig("cc", "-target", "aarch64-linux-gnu.2.28", "-mcpu=cortex_a76", "-O2", "-Wall", "-Wextra",
              f"-I{include}", str(DRIVER), f"-L{ort_lib}", "-lonnxruntime", "-o", str(exe))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"building the driver failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    return exe


@dataclass
class Peer:
    per_inference: float  # (min of the N-run counts - min of the 1-run counts) / (N - 1)
    spread: float  # (max - min of the N-run counts) / (N - 1)
    counts_1: list
    counts_n: list
    runs: int
    max_abs_vs_x86: float
    agrees_with_x86: bool


class OrtArm:
    def __init__(self, sysroot: Path, ort_lib: Path, exe: Path):
        self.sysroot, self.ort_lib, self.exe = sysroot, ort_lib, exe
        self.plugin = build_plugin()

    def run(self, model: Path, runs: int, in_bin: Path, out_bin: Path, count: Path | None, home: Path):
        cmd = ["qemu-aarch64", "-L", str(self.sysroot), "-cpu", TARGET, "-E", f"LD_LIBRARY_PATH={self.ort_lib}",
               "-E", f"HOME={home}"]  # onnxruntime keeps a small state file under $HOME/.cache
        if count is not None:
            cmd += ["-plugin", f"{self.plugin},out={count}"]
        run_program(cmd + [str(self.exe), str(model), str(runs), str(in_bin), str(out_bin)],
                    timeout=1800, fixed_layout=True)
        if count is not None:
            key, _, value = count.read_text().partition(":")
            if key.strip() != "insns":
                raise RuntimeError(f"unexpected plugin report: {count.read_text()!r}")
            return int(value)
        return None

    def measure(self, model_path: Path, runs: int, repeat: int) -> Peer:
        model = onnx.load(str(model_path))
        feeds = seeded_inputs(model)
        session = onnxruntime_session(model)
        names = [i.name for i in session.get_inputs()]
        want = session.run(None, feeds)
        with tempfile.TemporaryDirectory(prefix="edgec-peer-") as tmp:
            tmp = Path(tmp)
            in_bin, out_bin, report = tmp / "in.bin", tmp / "out.bin", tmp / "count.txt"
            in_bin.write_bytes(b"".join(np.ascontiguousarray(feeds[n]).tobytes() for n in names))
            (tmp / "home").mkdir()
            self.run(model_path, 1, in_bin, out_bin, None, tmp / "home")  # first-use state files, unmeasured
            raw = out_bin.read_bytes()
            got, pos = [], 0
            for w in want:
                w = np.asarray(w)
                got.append(np.frombuffer(raw[pos:pos + w.nbytes], dtype=w.dtype).reshape(w.shape))
                pos += w.nbytes
            if pos != len(raw):
                raise RuntimeError(f"onnxruntime aarch64 wrote {len(raw)} output bytes, x86 has {pos}")
            reports = [error_report(g, w) for g, w in zip(got, want)]
            c1, cn = [], []
            for _ in range(repeat):
                c1.append(self.run(model_path, 1, in_bin, out_bin, report, tmp / "home"))
                cn.append(self.run(model_path, runs, in_bin, out_bin, report, tmp / "home"))
        per = (min(cn) - min(c1)) / (runs - 1)
        return Peer(per, (max(cn) - min(cn)) / (runs - 1), c1, cn, runs,
                    max(r.max_abs for r in reports), all(r.ok for r in reports))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="ONNX files (default: kws_dscnn and tests/models/*)")
    ap.add_argument("--sysroot", type=Path, default=Path("/tmp/arm64-sysroot"))
    ap.add_argument("--wheel", type=Path, help="onnxruntime's manylinux aarch64 wheel")
    ap.add_argument("--ort-lib", type=Path, help="a folder holding the aarch64 libonnxruntime.so.1")
    ap.add_argument("--include", type=Path, default=Path("/tmp/ortarm/include"),
                    help="the folder of onnxruntime_c_api.h")
    ap.add_argument("--runs", type=int, default=21, help="N: inferences in the long run (default 21)")
    ap.add_argument("--repeat", type=int, default=3, help="K: counts of each kind for onnxruntime (default 3)")
    ap.add_argument("--no-ours", action="store_true", help="only onnxruntime's figure")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.runs < 2 or args.repeat < 1:
        ap.error("need --runs >= 2 and --repeat >= 1")
    if args.wheel is None and args.ort_lib is None:
        default = Path("/tmp/ortarm/onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl")
        args.wheel = default if default.is_file() else None
    try:
        prepare_sysroot(args.sysroot)
        lib = ort_library(args.wheel, args.ort_lib)
        peer = OrtArm(args.sysroot, lib, build_driver(args.include, lib))
    except SetupError as e:
        print(f"set-up: {e}", file=sys.stderr)
        return 2

    rows, status = [], 0
    head = (f"{'model':26} {'ours insns/inf':>15} {'onnxruntime insns/inf':>22} {'spread':>9} "
            f"{'ours/ORT':>8}  {'ORT arm vs x86':>15}")
    with tempfile.TemporaryDirectory(prefix="edgec-peer-ours-") as tmp:
        for model in args.models or DEFAULT_MODELS:
            print(f"  {model.stem} ...", file=sys.stderr, flush=True)
            row = {"model": model.stem}
            if not args.no_ours:
                ours = bench(model, TARGET, Path(tmp), runs=2, count=True, compare=True)
                row.update(ours=ours.insns_per_inference, ours_ok=ours.ok, ours_error=ours.error)
                status |= not ours.ok
            try:
                p = peer.measure(model, args.runs, args.repeat)
                row.update(ort=p.per_inference, ort_noise=p.spread, ort_counts_1=p.counts_1,
                           ort_counts_n=p.counts_n, runs=p.runs, ort_max_abs_vs_x86=p.max_abs_vs_x86,
                           ort_agrees_with_x86=p.agrees_with_x86)
                status |= not p.agrees_with_x86
            except Exception as e:  # noqa: BLE001  (one failing model must not stop the table)
                row["ort_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                status = 1
            rows.append(row)
    lines = [head, "-" * len(head)]
    for r in rows:
        ours = f"{r['ours']:,d}" if r.get("ours") else "-"
        ort = f"{r['ort']:,.0f}" if "ort" in r else "-"
        noise = f"{r['ort_noise']:,.0f}" if "ort" in r else ""
        ratio = f"{r['ours'] / r['ort']:.2f}" if r.get("ours") and r.get("ort") else "-"
        check = (f"{'ok' if r['ort_agrees_with_x86'] else 'DIFFERS'} {r['ort_max_abs_vs_x86']:.1e}"
                 if "ort" in r else "-")
        lines.append(f"{r['model']:26} {ours:>15} {ort:>22} {noise:>9} {ratio:>8}  {check:>15}")
        for key in ("ours_error", "ort_error"):
            if r.get(key):
                lines.append(f"    {key.split('_')[0]}: {r[key]}")
    print("\n".join(lines))
    print(f"qemu-aarch64 -cpu {TARGET}; onnxruntime single-threaded, ORT_ENABLE_ALL; "
          f"(count({args.runs} runs) - count(1 run)) / {args.runs - 1}; "
          f"onnxruntime's from the least of {args.repeat} counts each")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
