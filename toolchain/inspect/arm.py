"""ARM (AArch32) facts of an ELF object that its header does not carry: the build
attributes in .ARM.attributes (the float ABI the code was compiled for, whether it uses
double precision) and the double-precision floating-point instructions its Thumb code
holds, found by decoding the instruction stream (no disassembler needed).

A single-precision FPU (Cortex-M4's FPv4-SP-D16, Cortex-M33's FPv5-SP-D16) traps on a
double-precision instruction, and a compiler that meets a `double` there calls a soft
library routine (undefined symbol). The scan finds every VFP data-processing instruction
on coprocessor 11 (`vadd.f64`, `vmul.f64`, `vmov.f64`, ...): encoding
`111x 1110 .... .... | .... 1011 ...0 ....` in Thumb-2, and `vcvt` between f32 and f64. Loads, stores and moves of D
registers (`vldr d0`, `vpush {d8}`, `vmov r0, r1, d0`) are not arithmetic and exist on
single-precision FPUs too; they are not reported.
"""
from __future__ import annotations

TAG_CPU_NAME, TAG_FP_ARCH, TAG_ABI_HARDFP_USE, TAG_ABI_VFP_ARGS = 5, 10, 27, 28
STRING_TAGS = {4, 5, 67}  # Tag_CPU_raw_name, Tag_CPU_name, Tag_conformance; above 32 odd tags are strings


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def parse_attributes(data: bytes) -> dict:
    """The file-scope "aeabi" build attributes of a .ARM.attributes section: {tag: value}."""
    if not data or data[0] != 0x41:  # format version 'A'
        return {}
    attrs, pos = {}, 1
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        end = pos + length
        vendor_end = data.index(b"\0", pos + 4)
        vendor = data[pos + 4:vendor_end].decode(errors="replace")
        sub = vendor_end + 1
        while vendor == "aeabi" and sub < end:
            kind, size = data[sub], int.from_bytes(data[sub + 1:sub + 5], "little")
            if kind == 1:  # Tag_File
                p = sub + 5
                while p < sub + size:
                    tag, p = _uleb(data, p)
                    if tag in STRING_TAGS or (tag > 32 and tag % 2):
                        stop = data.index(b"\0", p)
                        attrs[tag], p = data[p:stop].decode(errors="replace"), stop + 1
                    elif tag == 32:  # Tag_compatibility: flag then string
                        _, p = _uleb(data, p)
                        p = data.index(b"\0", p) + 1
                    else:
                        attrs[tag], p = _uleb(data, p)
            sub += max(size, 1)
        pos = max(end, pos + 1)
    return attrs


def is_f64_data_processing(hw1: int, hw2: int) -> bool:
    """A Thumb-2 VFP data-processing instruction on double-precision operands, or the
    conversion between single and double precision (`vcvt.f64.f32` has sz=0: its size bit
    gives the source)."""
    if (hw1 & 0xEFBF) == 0xEEB7 and (hw2 & 0x0ED0) == 0x0AC0:  # VCVT.F64.F32 / VCVT.F32.F64
        return True
    return (hw1 & 0xEF00) == 0xEE00 and (hw2 & 0x0F00) == 0x0B00 and not hw2 & 0x10


def f64_instructions(elf) -> list[tuple[str, int, str]]:
    """(section, offset, encoding hex) of every double-precision VFP arithmetic instruction
    in the Thumb code of an ARM ELF object (pyelftools ELFFile). Literal pools ($d mapping
    symbols) are skipped; instructions are walked from each $t mapping symbol."""
    symtab = elf.get_section_by_name(".symtab")
    maps: dict[int, list[tuple[int, str]]] = {}
    for sym in symtab.iter_symbols() if symtab else []:
        name = sym.name
        if name[:2] in ("$t", "$d", "$a") and (len(name) == 2 or name[2] == "."):
            if isinstance(sym["st_shndx"], int):
                maps.setdefault(sym["st_shndx"], []).append((sym["st_value"], name[1]))
    found = []
    for index, sec in enumerate(elf.iter_sections()):
        if not sec["sh_flags"] & 0x4 or sec["sh_type"] != "SHT_PROGBITS":  # SHF_EXECINSTR
            continue
        code = sec.data()
        marks = sorted(maps.get(index, [(0, "t")]))
        for i, (start, kind) in enumerate(marks):
            end = marks[i + 1][0] if i + 1 < len(marks) else len(code)
            pos = start
            while kind == "t" and pos + 2 <= end:
                hw1 = int.from_bytes(code[pos:pos + 2], "little")
                if hw1 >> 11 in (0b11101, 0b11110, 0b11111) and pos + 4 <= end:
                    hw2 = int.from_bytes(code[pos + 2:pos + 4], "little")
                    if is_f64_data_processing(hw1, hw2):
                        found.append((sec.name, pos, f"{hw1:04x} {hw2:04x}"))
                    pos += 4
                else:
                    pos += 2
    return found
