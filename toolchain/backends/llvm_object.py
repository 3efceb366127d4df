"""LLVM IR text -> a relocatable object for a profile (llvmlite, O3, the profile's
triple/cpu/features), and what the compiled code says about itself: each function's
frame size, the call graph, run-time-sized allocas."""
from __future__ import annotations

import os
import re
import tempfile

import llvmlite.binding as llvm
from llvmlite import ir

from ..errors import InternalError
from ..targets import Profile


def module_text(module: ir.Module) -> str:
    """IR text with every function marked "no-builtins": without it LLVM's loop-idiom pass
    turns copy and fill loops into calls to memcpy/memset, which firmware may not have.
    And "warn-stack-size"="0": the backend then reports every function's frame size, from
    which toolchain.inspect.stack works out the worst-case stack of the entry point. And
    noredzone (as kernels and firmware are built): x86-64's red zone lets leaf functions
    use 128 bytes below the stack pointer that no frame size shows, and that interrupt
    handlers on a bare-metal stack would overwrite."""
    text = str(module)
    return re.sub(r"^(define [^\n]*?)\s*\n\{", r'\1 noredzone "no-builtins" "warn-stack-size"="0"\n{', text,
                  flags=re.M)


_ready = False


def _init():
    global _ready
    if not _ready:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _ready = True


def target_machine(profile: Profile):
    _init()
    target = llvm.Target.from_triple(profile.triple)
    return target.create_target_machine(cpu=profile.cpu, features=profile.features, opt=3,
                                        reloc="pic", codemodel="small", abiname=profile.abi)


def compile_ir(text: str, profile: Profile) -> tuple[bytes, str, dict]:
    """Returns (object bytes, optimized IR text, {function: stack frame bytes}); the frame
    sizes are the backend's own reports for functions marked "warn-stack-size"="0"."""
    tm = target_machine(profile)
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise InternalError(f"generated LLVM IR is invalid: {e}") from None
    mod.triple = profile.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    obj, diagnostics = _capturing_stderr(lambda: tm.emit_object(mod))
    return with_elf_flags(obj, profile.elf_add_flags), str(mod), parse_frame_reports(diagnostics)


def with_elf_flags(obj: bytes, flags: int) -> bytes:
    """e_flags | flags. ARM's EF_ARM_ABI_FLOAT_HARD is set by the clang driver from
    -mfloat-abi=hard, which llvmlite's target machine cannot be given; the code follows
    the hard-float ABI by the eabihf triple (Tag_ABI_VFP_args = VFP registers in its
    .ARM.attributes, which the self-containment check reads back)."""
    if not flags:
        return obj
    offset = 0x24 if obj[4] == 1 else 0x30  # ELFCLASS32 / ELFCLASS64
    order = "little" if obj[5] == 1 else "big"
    value = int.from_bytes(obj[offset:offset + 4], order) | flags
    return obj[:offset] + value.to_bytes(4, order) + obj[offset + 4:]


def _capturing_stderr(fn):
    """Run fn with file descriptor 2 redirected: LLVM's default diagnostic handler writes
    there from C++, out of Python's reach. Returns (fn(), what was written)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read().decode(errors="replace")


FRAME_REPORT = re.compile(r"stack frame size \((\d+)\) exceeds limit \(\d+\) in (?:function )?'([^']+)'")


def parse_frame_reports(text: str) -> dict[str, int]:
    """LLVM's (or clang's -Wframe-larger-than=0) diagnostics -> {function: frame bytes}."""
    return {fn: int(n) for n, fn in FRAME_REPORT.findall(text)}


def dynamic_allocas(llvm_ir: str) -> list[str]:
    """Functions with an alloca whose element count is not a constant (a frame size the
    code generator cannot know), from LLVM IR text."""
    found, current = [], None
    for line in llvm_ir.splitlines():
        m = re.match(r"define [^@]*@\"?([\w.$]+)\"?\(", line)
        if m:
            current = m.group(1)
        elif current and re.search(r"= alloca [^,]+, i\d+ %", line) and current not in found:
            found.append(current)
    return found


def call_graph(llvm_ir: str) -> dict[str, set]:
    """{function: callees} from LLVM IR text (direct calls; intrinsics excluded). Calls
    come from the optimized IR, which code generation does not add to or take from."""
    graph, current = {}, None
    for line in llvm_ir.splitlines():
        m = re.match(r"define [^@]*@\"?([\w.$]+)\"?\(", line)
        if m:
            current = graph.setdefault(m.group(1), set())
        elif line.startswith("}"):
            current = None
        elif current is not None:
            for callee in re.findall(r"\bcall [^@]*@\"?([\w.$]+)\"?\(", line):
                if not callee.startswith("llvm."):
                    current.add(callee)
    return graph
