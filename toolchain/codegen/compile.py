"""LLVM module -> relocatable object for a target profile (llvmlite, O3, the profile's
triple/cpu/features so NEON, AVX2 and RVV instructions are allowed)."""
from __future__ import annotations

import os
import tempfile

import llvmlite.binding as llvm

from ..errors import CompileError
from ..inspect.stack import parse_frame_reports
from ..targets import Profile

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
        raise CompileError(f"internal error: generated LLVM IR is invalid: {e}") from None
    mod.triple = profile.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    obj, diagnostics = _capturing_stderr(lambda: tm.emit_object(mod))
    return obj, str(mod), parse_frame_reports(diagnostics)


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
