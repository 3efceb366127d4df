"""The object backend: graph + memory plan -> one LLVM module (weights as internal
read-only globals, one internal function per node, the exported entry point of the C
contract) -> a relocatable object for the profile (llvmlite, O3, the profile's
triple/cpu/features so NEON, AVX2 and RVV instructions are allowed)."""
from __future__ import annotations

import itertools
import os
import re
import tempfile

import llvmlite.binding as llvm
from llvmlite import ir

from ..contract import node_symbols, run_symbol
from ..errors import InternalError
from ..ir import Graph
from ..kernel.llvm import I8, I32, LLVM_TYPES, Kernel, Tensor
from ..memory import MemoryPlan
from ..ops import registry
from ..targets import Profile, VectorUnit
from .common import Generated, lower_node

WEIGHT_ALIGN = 64


class LLVMBackend:
    """emit "object": <name>.o and lib<name>.a from LLVM."""

    name = "object"
    ships = ("object", "library")  # artifact kinds of the build besides header, manifest and fragments

    def vector_unit(self, profile: Profile) -> VectorUnit:
        return profile.vector_unit

    def generate(self, g: Graph, plan: MemoryPlan, name: str, profile: Profile,
                 separate_nodes: bool = False) -> Generated:
        """separate_nodes: keep every node in its own function (noinline), so its code has
        an address range of its own (the profiling build of toolchain.profile; a shipped
        build never sets it, and its object does not change with the option present)."""
        module = build_module(g, plan, name, profile, separate_nodes)
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)


def build_module(g: Graph, plan: MemoryPlan, name: str, profile: Profile,
                 separate_nodes: bool = False) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = profile.triple
    index = ir.IntType(profile.index_bits)
    weights = {id(v): _weight_global(module, f"{name}_w{i}", v.data) for i, v in enumerate(g.constants())}
    kernels = [_node_function(module, g, plan, sym, node, profile.vector_unit, index)
               for node, sym in zip(g.nodes, node_symbols(name, g.nodes))]
    if separate_nodes:
        for fn in kernels:
            fn.attributes.add("noinline")
    _run_function(module, g, plan, name, weights, kernels, index)
    return module


def _weight_global(module, sym, data):
    raw = bytearray(data.tobytes())
    arr = ir.ArrayType(I8, max(len(raw), 1))
    gv = ir.GlobalVariable(module, arr, name=sym)
    gv.global_constant = True
    gv.linkage = "internal"
    gv.unnamed_addr = True
    gv.align = WEIGHT_ALIGN
    gv.initializer = ir.Constant(arr, raw or bytearray(1))
    return gv


def _ptr_type(v):
    return LLVM_TYPES[v.type.dtype].as_pointer()


def _node_function(module, g, plan, sym, node, vector, index):
    ins = [v for v in node.inputs if v is not None]
    scratch = registry.get(node.op).workspace(node)  # after the outputs (Op.workspace)
    fnty = ir.FunctionType(ir.VoidType(), [_ptr_type(v) for v in ins + node.outputs] +
                           [LLVM_TYPES[t.dtype].as_pointer() for t in scratch])
    fn = ir.Function(module, fnty, name=sym)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    places = [plan.of(v) for v in ins]
    in_place = any(plan.of(o) in places and plan.of(o).kind != "const" for o in node.outputs)
    if not in_place:  # distinct buffers: lets LLVM vectorize without runtime checks
        for arg in fn.args:
            arg.add_attribute("noalias")
    k = Kernel(fn)
    k.vector, k.index = vector, index
    packed = itertools.count()
    k.rodata = lambda data: _weight_global(module, f"{fn.name}_packed{next(packed)}", data)
    types = [v.type for v in ins + node.outputs] + scratch
    tensors = [Tensor(k, arg, t.dtype, t.shape) for arg, t in zip(fn.args, types)]
    lower_node(k, node, tensors)
    k.finish()
    return fn


def _run_function(module, g, plan, name, weights, kernels, index):
    ptr = I8.as_pointer()
    fnty = ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr])
    fn = ir.Function(module, fnty, name=run_symbol(name))
    fn.attributes.add("nounwind")
    inputs, outputs, arena = fn.args
    inputs.name, outputs.name, arena.name = "inputs", "outputs", "arena"
    arena.attributes.align = plan.alignment
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cache = {}

    def pointer(v):
        st = plan.of(v)
        key = (st.kind, st.index) if st.kind != "const" else id(v)
        if key not in cache:
            if st.kind in ("input", "output"):
                table = inputs if st.kind == "input" else outputs
                raw = b.load(b.gep(table, [ir.Constant(index, st.index)], inbounds=True))
            elif st.kind == "arena":
                raw = b.gep(arena, [ir.Constant(index, st.index)], inbounds=True)
            else:
                raw = weights[id(v)]
            cache[key] = raw
        return b.bitcast(cache[key], _ptr_type(v))

    for node, kernel in zip(g.nodes, kernels):
        args = [pointer(v) for v in node.inputs if v is not None] + [pointer(v) for v in node.outputs]
        for st, t in zip(plan.workspace_of(node), registry.get(node.op).workspace(node)):
            raw = b.gep(arena, [ir.Constant(index, st.index)], inbounds=True)
            args.append(b.bitcast(raw, LLVM_TYPES[t.dtype].as_pointer()))
        b.call(kernel, args)
    b.ret(ir.Constant(I32, 0))


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


FRAME_REPORT = re.compile(r"stack frame size \((\d+)\) exceeds limit \(\d+\) in (?:function )?'([^']+)'")


def parse_frame_reports(text: str) -> dict[str, int]:
    """LLVM's (or clang's -Wframe-larger-than=0) diagnostics -> {function: frame bytes}."""
    return {fn: int(n) for n, fn in FRAME_REPORT.findall(text)}


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
