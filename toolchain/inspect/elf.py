"""Reads relocatable objects with pyelftools: sections, symbols and the self-containment
promises (no undefined symbols, nothing exported outside the name prefix, the right
machine for the target)."""
from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from ..errors import CompileError
from ..targets import Profile


@dataclass
class Symbol:
    name: str
    size: int
    section: str
    binding: str
    kind: str


@dataclass
class ObjectInfo:
    machine: str
    elfclass: int
    flags: int
    sections: dict  # name -> bytes (allocated sections only)
    symbols: list
    undefined: list

    def section_total(self, *prefixes) -> int:
        return sum(n for s, n in self.sections.items() if s.startswith(prefixes))


def read_object(data: bytes) -> ObjectInfo:
    elf = ELFFile(io.BytesIO(data))
    sections = {}
    names = {}
    for i, sec in enumerate(elf.iter_sections()):
        names[i] = sec.name
        if sec["sh_flags"] & 0x2:  # SHF_ALLOC: occupies memory on the device
            sections[sec.name] = sections.get(sec.name, 0) + sec["sh_size"]
    symbols, undefined = [], []
    symtab = elf.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab else []:
        shndx = sym["st_shndx"]
        kind = sym["st_info"]["type"]
        if kind in ("STT_SECTION", "STT_FILE") or not sym.name:
            continue
        if shndx == "SHN_UNDEF":
            undefined.append(sym.name)
            continue
        sec = names.get(shndx, str(shndx)) if isinstance(shndx, int) else shndx
        symbols.append(Symbol(sym.name, sym["st_size"], sec, sym["st_info"]["bind"], kind))
    return ObjectInfo(elf["e_machine"], elf.elfclass, elf["e_flags"], sections, symbols, undefined)


def check_self_contained(info: ObjectInfo, profile: Profile, prefix: str):
    """The promises of every build; any violation stops the build with a clear message."""
    if info.machine != profile.elf_machine:
        raise CompileError(f"object machine is {info.machine}, target {profile.name} needs {profile.elf_machine}")
    if info.undefined:
        raise CompileError(f"object needs external symbols {sorted(info.undefined)}; "
                           f"generated code must not call libc or libm")
    exported = [s.name for s in info.symbols if s.binding != "STB_LOCAL" and not s.name.startswith(prefix + "_")]
    if exported:
        raise CompileError(f"object exports symbols outside the '{prefix}_' prefix: {sorted(exported)}")
    writable = [n for n in info.sections if n.startswith((".data", ".bss")) and info.sections[n]]
    if writable:
        raise CompileError(f"object has writable data sections {writable}; all state must live in the arena")
