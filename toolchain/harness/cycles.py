"""Cycle ESTIMATES for the Cortex-M targets: guest instructions per inference counted per
mnemonic on the QEMU board (runtime/insn_mnemonic_plugin.c), each mnemonic put in an
instruction class (CLASS_RULES), and each class charged the cycles per instruction of the
profile's [cycles] table (targets/<target>.toml, from the core's Technical Reference
Manual instruction timings). QEMU does not model a pipeline: these are estimates from a
per-class table, not measurements; they ignore stalls, wait states, dual issue beyond
the table's averages, and which branches are taken.

    counts = count_mnemonics(image, profile, inputs, specs, runs=3)   # {mnemonic: per inference}
    cycles, per_class = estimate_cycles(counts, profile.cycles)

QEMU 7.2's disassembler (capstone 4) predates Armv8.1-M: it shows MVE instructions and
low-overhead loops as ".byte" or as the coprocessor ldc/stc. The plugin counts those under
their encoding ("?91ed001e"); they are decoded here with LLVM's llvm-mc for the profile's
triple, CPU and features. An instruction with a Q-register operand is "MNEMONIC[q]".
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..targets import CYCLE_CLASSES, Profile
from .plugin import RUNTIME, run_with_plugin
from .runner import HarnessError

MNEMONIC_PLUGIN_SOURCE = RUNTIME / "insn_mnemonic_plugin.c"
# mnemonics QEMU 7.2's capstone gives to Armv8.1-M encodings it does not know (MVE vldrw/
# vstrw as ldc/stc, VPR spills as ldcl/stcl): counted by encoding and decoded by llvm-mc.
# None of the cores has a coprocessor of its own, so nothing real is lost.
RAW_PREFIXES = ("ldc", "stc", "mcr", "mrc", "cdp")

_COND = r"(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?"
_SUFFIX = r"(?:\.[nw])?$"
# (class, pattern on the mnemonic), first match wins. A Q-register operand ("[q]") makes
# any instruction mve_vector, before these are tried.
CLASS_RULES: list[tuple[str, str]] = [
    # MVE instructions whose operands need not name a Q register: predication, the
    # tail-predicated loops' element counts, vector loads/stores, across-vector reductions
    ("mve_vector", r"^(vpst|vpt|vctp|vpsel|vpnot|vldr[bhwd]|vstr[bhwd]|vld[24][0-3]|vst[24][0-3]|"
                   r"vaddv|vaddlv|vmladav|vmlsdav|vmlaldav|vmlsldav|vrmlaldavh|vrmlsldavh|vabav|"
                   r"vmaxv|vminv|vmaxav|vminav|vmaxnmv|vminnmv|vmaxnmav|vminnmav|vddup|vdwdup|vidup|viwdup)"),
    ("fp_divsqrt", r"^v(div|sqrt)\."),
    # single-precision multiply-accumulate (vfma fused; vmla/vnmla chained): 3 cycles on the M4
    ("fp_mac", r"^v(fma|fms|fnma|fnms|mla|mls|nmla|nmls)\.f"),
    ("load_multiple", r"^(ldm|pop|vldm|vpop|ldrd)"),
    ("store_multiple", r"^(stm|push|vstm|vpush|strd)"),
    ("load", r"^(ldr|lda|vldr)"),
    ("store", r"^(str|stl|vstr)"),
    ("branch", rf"^((b|bl|blx|bx|bxns|blxns){_COND}|cbn?z|tb[bh]|le|letp|wls|wlstp|bf|bfl|bfx|bflx|bfcsel){_SUFFIX}"),
    ("divide", r"^[su]div"),
    # the DSP extension: 16-bit and dual multiply-accumulates, and the packed (SIMD within a
    # core register) arithmetic the int8 kernels pair them with: sxtb16, sadd16, pkhbt, sel
    ("dsp_mac", r"^(smla[bt][bt]|smlaw[bt]|smlad|smlsd|smlal[bt][bt]|smlald|smlsld|smuad|smusd|smul[bt][bt]|"
                r"smulw[bt]|smm(ul|la|ls)|[su]xtab16|[su]xtb16|[us]?[qh]?(add|sub)(16|8)|[us]?[qh]?(asx|sax)|"
                r"qd?(add|sub)$|sel|pkh(bt|tb)|[su]sat16|usada?8)"),
    ("mul", r"^(mul|mla|mls|[su]mull|[su]mlal|umaal)"),
    ("fp", r"^v"),  # the rest of the FPU: vadd/vsub/vmul/vneg/vabs.f32, vmov, vcmp, vmrs, vcvt
    ("alu", r""),
]
_RULES = [(c, re.compile(p)) for c, p in CLASS_RULES]
assert {c for c, _ in CLASS_RULES} == set(CYCLE_CLASSES), "CLASS_RULES and targets.CYCLE_CLASSES disagree"


def classify(mnemonic: str) -> str:
    """The instruction class of a mnemonic as the plugin counts it ("ldr.w", "smlad",
    "vldrw.u32[q]"): one of targets.CYCLE_CLASSES."""
    if mnemonic.endswith("[q]"):
        return "mve_vector"
    name = mnemonic.lower()
    for cls, rule in _RULES:
        if rule.search(name):
            return cls
    return "alu"


def _parse(text: str) -> tuple[int, dict[str, int]]:
    counts, total = {}, None
    for line in text.splitlines():
        if line.startswith("error:"):
            raise HarnessError(f"the mnemonic plugin: {line}")
        if line.startswith("insns:"):
            total = int(line.split(":")[1])
        elif line.strip():
            name, _, value = line.rpartition(" ")
            counts[name] = int(value)
    if total is None:
        raise HarnessError(f"unexpected mnemonic plugin report: {text[:200]!r}")
    return total, counts


def llvm_mc() -> str | None:
    found = shutil.which("llvm-mc")
    if found:
        return found
    versioned = sorted(Path("/usr/bin").glob("llvm-mc-*"))
    return str(versioned[-1]) if versioned else None


def _one_instruction(encoding: str, profile: Profile) -> str:
    """The encoding's first instruction: QEMU may have fetched past it (Thumb translation
    peeks at the next halfword), so the plugin's bytes can be longer. A Thumb instruction is
    32-bit iff its first halfword's top five bits are 0b11101, 0b11110 or 0b11111."""
    if profile.triple.startswith("thumb") and len(encoding) >= 4:
        first = int(encoding[2:4] + encoding[0:2], 16)
        return encoding[:8] if first >> 11 in (0x1D, 0x1E, 0x1F) else encoding[:4]
    return encoding


def decode_encodings(encodings: list[str], profile: Profile) -> dict[str, str]:
    """{hex encoding: counting key} for the encodings QEMU's disassembler did not name,
    decoded by llvm-mc for the profile's triple, CPU and features."""
    if not encodings:
        return {}
    first = {e: _one_instruction(e, profile) for e in encodings}
    mc = llvm_mc()
    if mc is None:
        raise HarnessError(f"{len(encodings)} instruction encodings QEMU's disassembler cannot name "
                           f"(e.g. {encodings[0]}) need llvm-mc to decode: sudo apt-get install -y llvm")
    cmd = [mc, "--disassemble", "-show-encoding", f"-triple={profile.triple}", f"-mcpu={profile.cpu}"]
    if profile.features:
        cmd.append(f"-mattr={profile.features}")
    text = "".join("[" + " ".join(f"0x{e[i:i + 2]}" for i in range(0, len(e), 2)) + "]\n"
                   for e in sorted(set(first.values())))
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True)
    named = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s*(.*?)\s*@ encoding: \[([0-9a-fx,]+)\]", line)
        if m:
            enc = "".join(b.removeprefix("0x") for b in m.group(3).split(","))
            q = re.search(r"(^|[\s,{\[])q\d+\b", m.group(2))
            named[enc] = m.group(1) + ("[q]" if q else "")
    missing = sorted({first[e] for e in encodings} - set(named))
    if missing:
        raise HarnessError(f"llvm-mc cannot decode {len(missing)} executed encodings for {profile.name} "
                           f"(e.g. {missing[0]}): {proc.stderr.strip()[:300]}")
    return {e: named[first[e]] for e in encodings}


def mnemonic_counts_once(exe: Path, profile: Profile, inputs, output_specs, runs: int,
                         timeout: float = 600) -> tuple[int, dict[str, int]]:
    """One run under the mnemonic plugin: (total, {key: count}), keys as the plugin wrote them."""
    text = run_with_plugin(exe, profile, inputs, output_specs, runs, MNEMONIC_PLUGIN_SOURCE,
                           "raw=" + "/".join(RAW_PREFIXES), timeout=timeout)
    total, counts = _parse(text)
    if sum(counts.values()) != total:
        raise HarnessError(f"the mnemonic plugin's counts sum to {sum(counts.values())}, not its total {total}")
    return total, counts


def count_mnemonics(exe: Path, profile: Profile, inputs, output_specs, runs: int = 3) -> dict[str, int]:
    """{mnemonic: instructions per inference}: (N runs - 1 run) / (N - 1) for each mnemonic,
    as count_instructions does for the total; encodings QEMU could not name decoded by llvm-mc."""
    if runs < 2:
        raise ValueError("need at least 2 runs to cancel start-up")
    t1, c1 = mnemonic_counts_once(exe, profile, inputs, output_specs, 1)
    tn, cn = mnemonic_counts_once(exe, profile, inputs, output_specs, runs)
    if tn <= t1 or (tn - t1) % (runs - 1):
        raise HarnessError(f"instruction counts do not scale with runs: 1 run {t1}, {runs} runs {tn}")
    per = {}
    for key in sorted(set(c1) | set(cn)):
        a, b = c1.get(key, 0), cn.get(key, 0)
        if b < a or (b - a) % (runs - 1):
            raise HarnessError(f"the count of {key} does not scale with runs: 1 run {a}, {runs} runs {b}")
        if b > a:
            per[key] = (b - a) // (runs - 1)
    names = decode_encodings([k[1:] for k in per if k.startswith("?")], profile)
    out: dict[str, int] = {}
    for key, n in per.items():
        name = names[key[1:]] if key.startswith("?") else key
        out[name] = out.get(name, 0) + n
    if sum(out.values()) != (tn - t1) // (runs - 1):
        raise HarnessError("per-mnemonic counts do not add up to the instructions per inference")
    return out


def estimate_cycles(counts: dict[str, int], table: dict[str, float]) -> tuple[float, dict[str, dict]]:
    """(estimated cycles, {class: {"insns", "cycles", "share"}}) of mnemonic counts under a
    profile's [cycles] table (class -> cycles per instruction). share: of the cycles."""
    if not table:
        raise HarnessError("no [cycles] table: this target has no cycle estimate")
    insns: dict[str, int] = {}
    for name, n in counts.items():
        cls = classify(name)
        insns[cls] = insns.get(cls, 0) + n
    absent = sorted(c for c in insns if c not in table)
    if absent:
        raise HarnessError(f"the [cycles] table has no entry for {', '.join(absent)} "
                           f"({', '.join(n for n in counts if classify(n) in absent)[:200]})")
    per = {c: {"insns": n, "cycles": n * float(table[c])} for c, n in sorted(insns.items())}
    total = sum(v["cycles"] for v in per.values())
    for v in per.values():
        v["share"] = v["cycles"] / total if total else 0.0
    return total, per
