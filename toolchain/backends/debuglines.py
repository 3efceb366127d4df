"""Line-table debug info that names the node each instruction comes from, for the
profiling build of toolchain.profile (mode "lines").

Every instruction of a function gets the location `line = that function's number` in a
file of its own (NODE_LINES_FILE): node i's kernel is line i + 1, any other function
(the run function) the line after the last node. Only line tables are emitted (no
variables, no types), and debug info does not change code generation: the optimized,
inlined machine code is the shipped build's, byte for byte (toolchain.profile checks
this), and the linked program's .debug_line maps each address back to its node."""
from __future__ import annotations

import re

NODE_LINES_FILE = "edgec-node-lines"
_DEFINE = re.compile(r'^define .*?@"?([\w.$]+)"?\(')


def with_node_lines(text: str, lines: dict[str, int], other: int) -> str:
    """LLVM IR text (one instruction per line, as llvmlite prints it) with every
    instruction of function f located at line lines.get(f, other)."""
    meta, out = [], []

    def node(body: str) -> int:
        meta.append(body)
        return len(meta) - 1

    file = node(f'!DIFile(filename: "{NODE_LINES_FILE}", directory: "/")')
    unit = node(f'distinct !DICompileUnit(language: DW_LANG_C99, file: !{{F}}{file}, producer: "edgec", '
                f'isOptimized: true, runtimeVersion: 0, emissionKind: LineTablesOnly)')
    signature = node("!DISubroutineType(types: !{})")
    location = None
    for text_line in text.split("\n"):
        m = _DEFINE.match(text_line)
        if m:
            line = lines.get(m.group(1), other)
            sub = node(f'distinct !DISubprogram(name: "{m.group(1)}", scope: !{{F}}{file}, file: !{{F}}{file}, '
                       f'line: {line}, type: !{{F}}{signature}, scopeLine: {line}, '
                       f'spFlags: DISPFlagDefinition | DISPFlagOptimized, unit: !{{F}}{unit})')
            location = node(f"!DILocation(line: {line}, column: 1, scope: !{{F}}{sub})")
            attach = f" !dbg !{{F}}{sub}"
            text_line = (text_line.rstrip()[:-1].rstrip() + attach + " {" if text_line.rstrip().endswith("{")
                         else text_line.rstrip() + attach)
        elif text_line.startswith("}"):
            location = None
        elif location is not None and text_line.startswith("  ") and text_line.strip():
            text_line += f", !dbg !{{F}}{location}"
        out.append(text_line)
    flags = node('!{i32 2, !"Debug Info Version", i32 3}')
    first = _first_free_id(text)
    out += [f"!{first + i} = {body}" for i, body in enumerate(meta)]
    out += [f"!llvm.dbg.cu = !{{!{first + unit}}}", f"!llvm.module.flags = !{{!{first + flags}}}"]
    result = "\n".join(out)
    return re.sub(r"!\{F\}(\d+)", lambda m: f"!{first + int(m.group(1))}", result)


def _first_free_id(text: str) -> int:
    ids = [int(i) for i in re.findall(r"^!(\d+) =", text, flags=re.M)]
    return max(ids, default=-1) + 1
