"""Reads relocatable objects with pyelftools: sections, symbols and the self-containment
promises (no undefined symbols, nothing exported outside the name prefix, the right
machine for the target)."""
from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.elf.descriptions import describe_reloc_type
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from ..errors import CompileError, InternalError, InvalidModelError
from ..targets import Profile
from .arm import TAG_ABI_VFP_ARGS, f64_instructions, parse_attributes


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
    writable: list = None  # allocated sections with SHF_WRITE
    relocations: list = None  # relocation type names used
    arm_attributes: dict = None  # ARM objects: file-scope build attributes {tag: value}
    f64_instructions: list = None  # ARM objects: double-precision arithmetic [(section, offset, hex)]

    def by_size(self) -> list[dict]:
        """Functions and data objects, largest first (local labels and mapping symbols such
        as $x/$d or .LCPI carry no size of their own and are left out)."""
        return sorted(({"name": s.name, "size": s.size, "section": s.section} for s in self.symbols
                       if s.kind in ("STT_FUNC", "STT_OBJECT")), key=lambda s: (-s["size"], s["name"]))


def read_object(data: bytes) -> ObjectInfo:
    elf = ELFFile(io.BytesIO(data))
    sections, names, writable, relocs = {}, {}, [], set()
    for i, sec in enumerate(elf.iter_sections()):
        names[i] = sec.name
        if sec["sh_flags"] & 0x2:  # SHF_ALLOC: occupies memory on the device
            sections[sec.name] = sections.get(sec.name, 0) + sec["sh_size"]
            if sec["sh_flags"] & 0x1 and sec["sh_size"]:  # SHF_WRITE
                writable.append(sec.name)
        if isinstance(sec, RelocationSection):
            relocs.update(describe_reloc_type(r["r_info_type"], elf) for r in sec.iter_relocations())
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
    arm_attrs = f64 = None
    if elf["e_machine"] == "EM_ARM":
        attrs = elf.get_section_by_name(".ARM.attributes")
        arm_attrs, f64 = parse_attributes(attrs.data() if attrs else b""), f64_instructions(elf)
    return ObjectInfo(elf["e_machine"], elf.elfclass, elf["e_flags"], sections, symbols, undefined, writable,
                      sorted(relocs), arm_attrs, f64)


# Relocations that only a dynamic loader resolves (GOT, PLT slots, copies, TLS): a
# firmware link has none of that machinery.
DYNAMIC_RELOCATIONS = ("GOT", "GLOB_DAT", "JUMP_SLOT", "COPY", "RELATIVE", "TLS", "TPREL", "DTP")


def check_elf_header(info: ObjectInfo, profile: Profile):
    """Machine, class and e_flags as the target profile says (each flag promise is a
    mask/value pair of the profile: RISC-V's float ABI and RVC bits, ARM's EABI version
    and hard-float bit)."""
    if info.machine != profile.elf_machine:
        raise InternalError(f"object machine is {info.machine}, target {profile.name} needs {profile.elf_machine}")
    if info.elfclass != profile.elf_class:
        raise InternalError(f"object is ELF{info.elfclass}, target {profile.name} needs ELF{profile.elf_class}")
    for check in profile.elf_flag_checks:
        if info.flags & check.mask != check.value:
            raise InternalError(f"object e_flags {info.flags:#x} lack {check.meaning} (flags & {check.mask:#x} "
                                f"is {info.flags & check.mask:#x}, target {profile.name} needs {check.value:#x})")
    if info.arm_attributes is not None and info.flags & 0x400:  # EF_ARM_ABI_FLOAT_HARD: the code must agree
        if info.arm_attributes.get(TAG_ABI_VFP_ARGS) != 1:
            raise InternalError(f"object e_flags claim the hard-float ABI but its build attributes say "
                                f"Tag_ABI_VFP_args={info.arm_attributes.get(TAG_ABI_VFP_ARGS, 0)} (1: VFP registers)")
    if not profile.fp64:
        check_single_precision(info, profile)


def check_single_precision(info: ObjectInfo, profile: Profile):
    """No double-precision instruction on a core whose FPU has none (it would trap)."""
    if info.f64_instructions is None:
        raise InternalError(f"cannot check {info.machine} code for double-precision instructions "
                            f"(target {profile.name} has no double-precision FPU)")
    if info.f64_instructions:
        where = ", ".join(f"{sec}+{off:#x} ({enc})" for sec, off, enc in info.f64_instructions[:3])
        raise InternalError(f"object has {len(info.f64_instructions)} double-precision floating-point "
                            f"instruction(s), which target {profile.name}'s single-precision FPU lacks: {where}")


def check_self_contained(info: ObjectInfo, profile: Profile, prefix: str | tuple[str, ...]):
    """The promises of every build; any violation stops the build with a clear message.
    prefix: the build's symbol prefix (a tuple: a library of several models)."""
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    check_elf_header(info, profile)
    if info.undefined:
        raise InternalError(f"object needs external symbols {sorted(info.undefined)}; "
                           f"generated code must not call libc or libm")
    exported = [s.name for s in info.symbols
                if s.binding != "STB_LOCAL" and not s.name.startswith(tuple(p + "_" for p in prefixes))]
    if exported:
        raise InternalError(f"object exports symbols outside the {' / '.join(p + '_' for p in prefixes)} "
                            f"prefix: {sorted(exported)}")
    if info.writable:
        raise InternalError(f"object has writable data sections {info.writable}; weights belong in read-only "
                           f"data and all state in the arena")
    dynamic = [r for r in info.relocations or [] if any(k in r for k in DYNAMIC_RELOCATIONS)]
    if dynamic:
        raise InternalError(f"object has relocations that need a dynamic loader: {dynamic}")


def archive_members(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each object in a GNU/SysV `ar` archive (symbol index skipped)."""
    if not data.startswith(b"!<arch>\n"):
        raise InvalidModelError("not an ar archive (bad magic)")
    pos, members, long_names = 8, [], b""
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name, size = header[:16].decode().strip(), int(header[48:58].decode().strip() or 0)
        body = data[pos + 60:pos + 60 + size]
        if name == "//":
            long_names = body
        elif name not in ("/", "/SYM64/"):
            if name.startswith("/") and name[1:].isdigit():
                start = int(name[1:])
                name = long_names[start:long_names.index(b"\n", start)].decode()
            members.append((name.rstrip("/"), body))
        pos += 60 + size + (size % 2)
    return members


def check_library(data: bytes, profile: Profile, prefix: str | tuple[str, ...]):
    """Every member of lib<name>.a keeps the promises of check_self_contained."""
    members = archive_members(data)
    if not members:
        raise InvalidModelError("library has no object members")
    for name, body in members:
        try:
            check_self_contained(read_object(body), profile, prefix)
        except CompileError as e:
            raise type(e)(f"library member {name}: {e}") from None
        except Exception as e:  # not ELF at all
            raise InvalidModelError(f"library member {name} is not a readable ELF object: {e}") from None
