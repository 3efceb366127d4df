"""Target profiles are data: one TOML file per target in targets/. Code asks the profile
(triple, cpu, features, vector unit, ELF facts, how to link and run) and never tests
target names.

The loader is derived from the Profile's fields: each field says where it lives in the
TOML file (`toml="section.key"`), so a new profile key is one field here.
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidModelError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"
RUN_MODES = ("user", "system", "none")  # qemu-user (or natively), a QEMU board, not runnable here
INT8_DOTS = ("partial-reduce", "pairs16", "widen16", "reduce", "dsp")  # VectorUnit.int8_dot
LANE_DOTS = ("sdot", "pmaddwd")  # VectorUnit.int8_dot_by_lane
# instruction classes of a profile's [cycles] table (cycles per instruction, an ESTIMATE from
# the core's documented timings); toolchain/harness/cycles.py puts each mnemonic in one
CYCLE_CLASSES = ("alu", "load", "store", "load_multiple", "store_multiple", "branch", "mul", "dsp_mac",
                 "divide", "fp", "fp_mac", "fp_divsqrt", "mve_vector")


@dataclass(frozen=True)
class VectorUnit:
    """What a lowering needs to know of the target's SIMD unit, from its profile: float32
    lanes per register (1: scalar code), how many registers there are (register tiles
    are sized to fit), and whether an FMA can take one lane of another register as its
    multiplier (NEON's `fmla v.4s, v.4s, v.s[i]`): then a vector load feeds several
    FMAs, where other ISAs broadcast a scalar load (x86 `vbroadcastss`, RVV `vfmacc.vf`).
    `fma_scalar_operand`: that multiplier can stay in a scalar float register (RVV), so
    broadcast values cost no vector register. `fma_memory_operand`: an FMA can read a
    vector from memory (x86), so a load used once costs no instruction of its own.
    `nan_min_max`: min and max that propagate NaN are one instruction each (AArch64's fmin/
    fmax, LLVM's llvm.minimum/maximum); elsewhere they are a compare and a select.
    `int8_dot`: how 16 int8 products are summed into int32 (kernel/int8_dot.py):
    "partial-reduce" (LLVM's partial reduction: AArch64 `sdot` with the dot-product feature,
    `smull`/`saddw` without), "pairs16" (x86 `vpmaddwd` on sign-extended 16-bit pairs),
    "widen16" (16-bit products widened into a 16-lane int32 accumulator: RVV `vwmul`/`vwadd`),
    "reduce" (a multiply-accumulate across the vector into a scalar: MVE `vmlava`), "dsp"
    (Armv7E-M's `sxtb16` and dual multiply-accumulate `smlad`, on cores without vectors).
    `int8_tile`: (output pixels, output channels) of an integer convolution's register tile.
    `int8_high_mul`: the LLVM intrinsic (a prefix, mangled <4 x i32>) that is gemmlowp's
    SaturatingRoundingDoublingHighMul of four int32 lanes in one instruction (AArch64 `sqrdmulh`:
    (2ab + 2^31) >> 32, the same rounding), or "" (then int64 products); `int8_rounding_shift`:
    a rounding shift by a negative amount per lane (AArch64 `srshl`), or "".
    `int8_dot_by_lane`: how 4-byte dot products of 4 pixels' groups with one channel's
    weights are made (kernel/lane_int8.py): "sdot" (AArch64 `sdot v.4s, v.16b, v.4b[i]`,
    the weights a lane of a register of 4 channels'), "pmaddwd" (AVX2: `vpmovsxbw`, the
    weights broadcast by `vpbroadcastq`, `vpmaddwd`), or "": with a form, an integer
    convolution keeps its pixels in the lanes. `int8_mac_by_scalar`: int16 lanes times an
    int16 scalar accumulate into int32 lanes in one instruction (RVV `vwmacc.vx`): a
    convolution then keeps its pixels in the lanes, each weight a scalar (kernel/scalar_int8.py).
    `masked_tails`: a load or store of the first n < lanes lanes is one predicated
    instruction (MVE's `vctp`/`vpst` with `vldrw`/`vstrw`; LLVM's masked load and store),
    so a tile edge of n columns is one vector step, not halves, quarters and a scalar.
    `name` says whose unit it is (a profile, or a backend's own such as portable C)."""

    lanes: int = 4
    registers: int = 16
    fma_by_lane: bool = False
    fma_scalar_operand: bool = False
    fma_memory_operand: bool = False
    nan_min_max: bool = False
    int8_dot: str = "widen16"
    int8_tile: tuple = (2, 2)
    int8_high_mul: str = ""
    int8_rounding_shift: str = ""
    int8_dot_by_lane: str = ""
    int8_mac_by_scalar: bool = False
    masked_tails: bool = False
    name: str = "generic"


@dataclass(frozen=True)
class ElfFlagCheck:
    """One promise about e_flags: (flags & mask) == value, and what that means."""

    mask: int
    value: int
    meaning: str


def _at(key, default=dataclasses.MISSING, **kw):
    """A profile field read from `key` ("section.name") of the TOML file."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"toml": key}, **kw)
    return field(default=default, metadata={"toml": key}, **kw)


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str = _at("name")
    description: str = _at("description")
    triple: str = _at("triple")
    cpu: str = _at("cpu")
    vector_bits: int = _at("vector_bits")
    vector_registers: int = _at("vector_registers")
    arena_align: int = _at("arena_align")
    features: str = _at("features", "")
    abi: str = _at("abi", "")
    # an FMA can multiply by one lane of another vector register (see VectorUnit)
    vector_fma_by_lane: bool = _at("vector_fma_by_lane", False)
    # an FMA can take its multiplier from a scalar float register (RVV's vfmacc.vf)
    vector_fma_scalar_operand: bool = _at("vector_fma_scalar_operand", False)
    # an FMA can read one vector operand from memory (x86's vfmadd231ps ymm, ymm, [mem])
    vector_fma_memory_operand: bool = _at("vector_fma_memory_operand", False)
    # min/max propagating NaN in one instruction each (AArch64 fmin/fmax)
    nan_min_max: bool = _at("nan_min_max", False)
    # how int8 dot products are summed, and the integer convolution's register tile (VectorUnit)
    int8_dot: str = _at("int8_dot", "widen16")
    int8_tile: list = _at("int8_tile", [2, 2])
    int8_high_mul: str = _at("int8_high_mul", "")
    int8_rounding_shift: str = _at("int8_rounding_shift", "")
    int8_dot_by_lane: str = _at("int8_dot_by_lane", "")
    int8_mac_by_scalar: bool = _at("int8_mac_by_scalar", False)
    # a partial vector is one predicated load or store (VectorUnit.masked_tails)
    vector_masked_tails: bool = _at("vector_masked_tails", False)
    # registers per vector value (RVV's LMUL): tiles use values this many registers wide
    vector_lmul: int = _at("vector_lmul", 1)
    # width of index arithmetic in generated code: the pointer width
    index_bits: int = _at("index_bits", 64)
    # the core has double-precision floating point; where not, objects must hold no f64 instruction
    fp64: bool = _at("fp64", True)
    elf_machine: str = _at("elf.machine")
    elf_class: int = _at("elf.class", 64)
    elf_flags: list = _at("elf.flags", [])  # [{mask, value, meaning}]: see elf_flag_checks
    # e_flags bits the object writer leaves to the compiler driver (ARM's hard-float bit)
    elf_add_flags: int = _at("elf.add_flags", 0)
    # bytes a call instruction pushes (x86's return address); 0 where it goes to a register
    return_address_bytes: int = _at("elf.return_address_bytes", 0)
    zig_target: str = _at("link.zig_target")
    zig_cpu: str = _at("link.zig_cpu")
    # extra flags for every zig cc of this target (C path, harness, firmware)
    cflags: list = _at("link.cflags", [])
    run_mode: str = _at("run.mode", "user")
    board: str = _at("run.board", "")  # run.mode = "system": the board in firmware/boards.toml
    qemu: str = _at("run.qemu", "")
    qemu_cpu: str = _at("run.qemu_cpu", "")
    native_arch: str = _at("run.native_arch", "")
    native_cpu_flags: list = _at("run.native_cpu_flags", [])
    budgets: dict = _at("budgets", {})
    # class (CYCLE_CLASSES) -> estimated cycles per instruction: cycle estimates (bench --cycles)
    cycles: dict = _at("cycles", {})

    @property
    def vector_unit(self) -> VectorUnit:
        return VectorUnit(lanes=max(1, self.vector_bits * self.vector_lmul // 32),
                          registers=self.vector_registers // self.vector_lmul, fma_by_lane=self.vector_fma_by_lane,
                          fma_scalar_operand=self.vector_fma_scalar_operand,
                          fma_memory_operand=self.vector_fma_memory_operand, nan_min_max=self.nan_min_max,
                          int8_dot=self.int8_dot, int8_tile=tuple(self.int8_tile),
                          int8_high_mul=self.int8_high_mul, int8_rounding_shift=self.int8_rounding_shift,
                          int8_dot_by_lane=self.int8_dot_by_lane, int8_mac_by_scalar=self.int8_mac_by_scalar,
                          masked_tails=self.vector_masked_tails, name=self.name)

    @property
    def elf_flag_checks(self) -> list[ElfFlagCheck]:
        return [ElfFlagCheck(int(f["mask"]), int(f["value"]), f.get("meaning", f"flags & {f['mask']:#x}"))
                for f in self.elf_flags]

    def zig_cc(self, zig_target: str | None = None) -> list[str]:
        """The hermetic C compiler for this CPU (zig cc), for the profile's own OS target or
        another one (a bare-metal board's)."""
        return zig("cc", "-target", zig_target or self.zig_target, f"-mcpu={self.zig_cpu}", *self.cflags)

    def runs_natively(self) -> bool:
        """True when this host executes the target's instructions itself."""
        if not self.native_arch or platform.machine() != self.native_arch:
            return False
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return False
        return all(f in flags for f in self.native_cpu_flags)


def zig(*args: str) -> list[str]:
    """The command line of the hermetic toolchain (the ziglang package): zig cc, zig ar."""
    return [sys.executable, "-m", "ziglang", *args]


def _lookup(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return dataclasses.MISSING
        d = d[part]
    return d


def load_profile(path: Path) -> Profile:
    try:
        d = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidModelError(f"cannot read target profile {path}: {e}") from None
    values, missing = {}, []
    for f in dataclasses.fields(Profile):
        value = _lookup(d, f.metadata["toml"])
        if value is not dataclasses.MISSING:
            values[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing.append(f.metadata["toml"])
    if missing:
        raise InvalidModelError(f"target profile {Path(path).name} lacks {', '.join(missing)}")
    profile = Profile(**values)
    if profile.run_mode not in RUN_MODES:
        raise InvalidModelError(f"target profile {Path(path).name}: run.mode must be one of {RUN_MODES}")
    if profile.int8_dot_by_lane and profile.int8_dot_by_lane not in LANE_DOTS:
        raise InvalidModelError(f"target profile {Path(path).name}: int8_dot_by_lane must be one of {LANE_DOTS}")
    if profile.int8_dot not in INT8_DOTS:
        raise InvalidModelError(f"target profile {Path(path).name}: int8_dot must be one of {INT8_DOTS}")
    if len(profile.int8_tile) != 2 or not all(isinstance(v, int) and v >= 1 for v in profile.int8_tile):
        raise InvalidModelError(f"target profile {Path(path).name}: int8_tile must be [pixels, channels], "
                                f"two positive integers")
    for cls, value in profile.cycles.items():
        if cls not in CYCLE_CLASSES:
            raise InvalidModelError(f"target profile {Path(path).name}: cycles.{cls} is not an instruction class "
                                    f"(one of {', '.join(CYCLE_CLASSES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidModelError(f"target profile {Path(path).name}: cycles.{cls} must be a positive number "
                                    f"of cycles per instruction, not {value!r}")
    if profile.run_mode == "system" and not profile.board:
        raise InvalidModelError(f"target profile {Path(path).name}: run.mode = \"system\" needs run.board "
                                f"(a board of firmware/boards.toml)")
    return profile


def all_profiles() -> dict[str, Profile]:
    return {p.name: p for p in map(load_profile, sorted(TARGETS_DIR.glob("*.toml")))}


def get_profile(name: str) -> Profile:
    """A profile by name, or by the path of a profile file (a target of the user's own)."""
    if name.endswith(".toml") and Path(name).is_file():
        return load_profile(Path(name))
    profiles = all_profiles()
    if name not in profiles:
        raise InvalidModelError(f"unknown target '{name}' (known targets: {', '.join(profiles)})")
    return profiles[name]


def runnable_targets(mode: str = "user") -> list[str]:
    """Names of the profiles that run in this mode: the test and CI matrix read this."""
    return [p.name for p in all_profiles().values() if p.run_mode == mode]
