"""Target profiles are data: one TOML file per target in targets/. Code asks the profile
(triple, cpu, features, vector width, how to link and run) and never tests target names."""
from __future__ import annotations

import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CompileError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    triple: str
    cpu: str
    features: str
    abi: str
    vector_bits: int
    vector_registers: int
    arena_align: int
    elf_machine: str
    elf_flags: dict
    zig_target: str
    zig_cpu: str
    qemu: str
    qemu_cpu: str
    native_arch: str
    native_cpu_flags: tuple
    budgets: dict = field(default_factory=dict)
    # bytes a call instruction pushes (x86's return address); 0 where it goes to a register
    return_address_bytes: int = 0
    # an FMA can multiply by one lane of another vector register (see VectorUnit)
    vector_fma_by_lane: bool = False
    # an FMA can take its multiplier from a scalar float register (RVV's vfmacc.vf)
    vector_fma_scalar_operand: bool = False
    # an FMA can read one vector operand from memory (x86's vfmadd231ps ymm, ymm, [mem])
    vector_fma_memory_operand: bool = False
    # registers per vector value (RVV's LMUL): tiles use values this many registers wide
    vector_lmul: int = 1

    @property
    def vector_unit(self):
        from .codegen.kernel import VectorUnit
        return VectorUnit(lanes=max(1, self.vector_bits * self.vector_lmul // 32),
                          registers=self.vector_registers // self.vector_lmul, fma_by_lane=self.vector_fma_by_lane,
                          fma_scalar_operand=self.vector_fma_scalar_operand,
                          fma_memory_operand=self.vector_fma_memory_operand)

    @property
    def vector_bytes(self) -> int:
        return self.vector_bits // 8

    def runs_natively(self) -> bool:
        """True when this host executes the target's instructions itself."""
        if not self.native_arch or platform.machine() != self.native_arch:
            return False
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return False
        return all(f in flags for f in self.native_cpu_flags)


def _load(path: Path) -> Profile:
    d = tomllib.loads(path.read_text())
    try:
        return Profile(
            name=d["name"], description=d["description"], triple=d["triple"], cpu=d["cpu"],
            features=d.get("features", ""), abi=d.get("abi", ""), vector_bits=d["vector_bits"],
            vector_registers=d["vector_registers"], vector_fma_by_lane=d.get("vector_fma_by_lane", False),
            vector_fma_scalar_operand=d.get("vector_fma_scalar_operand", False),
            vector_fma_memory_operand=d.get("vector_fma_memory_operand", False),
            vector_lmul=d.get("vector_lmul", 1),
            arena_align=d["arena_align"],
            elf_machine=d["elf"]["machine"], elf_flags=d["elf"].get("flags", {}),
            zig_target=d["link"]["zig_target"], zig_cpu=d["link"]["zig_cpu"],
            qemu=d["run"]["qemu"], qemu_cpu=d["run"]["qemu_cpu"],
            native_arch=d["run"].get("native_arch", ""),
            native_cpu_flags=tuple(d["run"].get("native_cpu_flags", [])),
            budgets=d.get("budgets", {}),
            return_address_bytes=d["elf"].get("return_address_bytes", 0),
        )
    except KeyError as e:
        raise CompileError(f"target profile {path.name} lacks field {e}") from None


def all_profiles() -> dict[str, Profile]:
    return {p.name: p for p in map(_load, sorted(TARGETS_DIR.glob("*.toml")))}


def get_profile(name: str) -> Profile:
    profiles = all_profiles()
    if name not in profiles:
        raise CompileError(f"unknown target '{name}' (known targets: {', '.join(profiles)})")
    return profiles[name]
