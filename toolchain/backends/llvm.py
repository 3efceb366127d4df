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

from ..contract import (ERR_DIM_OUT_OF_RANGE, graph_symbol, item_symbol, node_symbols, params_init_symbol,
                        primal_symbol, pullback_symbol, run_dims_symbol, run_symbol, train_step_symbol)
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

    def generate(self, g: Graph, plan: MemoryPlan, name: str, profile: Profile) -> Generated:
        module = build_module(g, plan, name, profile)
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)


    def generate_train(self, tp, init, plans, offsets, name: str, profile: Profile) -> Generated:
        """A training build: <name>_train_step and <name>_params_init in one object."""
        module = build_train_module(tp, init, plans, offsets, name, profile)
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)

    def generate_grad(self, prog, plans, offsets, name: str, profile: Profile) -> Generated:
        """A reverse-mode build: <name>_primal and <name>_pullback in one object."""
        module = build_grad_module(prog, plans, offsets, name, profile)
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)


def build_module(g: Graph, plan: MemoryPlan, name: str, profile: Profile) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = profile.triple
    index = ir.IntType(profile.index_bits)
    weights = {id(v): _weight_global(module, f"{name}_w{i}", v.data) for i, v in enumerate(g.constants())}
    kernels = [_node_function(module, g, plan, sym, node, profile.vector_unit, index)
               for node, sym in zip(g.nodes, node_symbols(name, g.nodes))]
    run = _run_function(module, g, plan, item_symbol(name) if g.batch else run_symbol(name), weights, kernels,
                        index, internal=g.batch is not None)
    if g.batch is not None:
        _batch_entries(module, g, name, run, index)
    return module


def _graph_functions(module, graphs: dict, plans: dict, name: str, profile: Profile, index) -> dict:
    """Each graph as an internal run function <name>_<part>_graph; constants equal in type
    and bytes are stored once for all of them."""
    weights, by_bytes = {}, {}
    for g in graphs.values():
        for v in g.constants():
            key = (v.type, v.data.tobytes())
            if key not in by_bytes:
                by_bytes[key] = _weight_global(module, f"{name}_w{len(by_bytes)}", v.data)
            weights[id(v)] = by_bytes[key]
    runs = {}
    for part, g in graphs.items():
        kernels = [_node_function(module, g, plans[part], sym, node, profile.vector_unit, index)
                   for node, sym in zip(g.nodes, node_symbols(f"{name}_{part}", g.nodes))]
        runs[part] = _run_function(module, g, plans[part], graph_symbol(name, part), weights, kernels, index, True)
    return runs


def build_grad_module(prog, plans, offsets, name: str, profile: Profile) -> ir.Module:
    """Both graphs of a reverse-mode build, and the two exported entries that route the
    residual buffer."""
    module = ir.Module(name=name)
    module.triple = profile.triple
    index = ir.IntType(profile.index_bits)
    runs = _graph_functions(module, {"primal": prog.primal, "pullback": prog.pullback}, plans, name, profile, index)
    _grad_entries(module, prog, runs, offsets, name, index)
    return module


def build_train_module(tp, init, plans, offsets, name: str, profile: Profile) -> ir.Module:
    """A training build: <name>_train_step around the train graph (parameters read and
    updated in the caller's buffer at `offsets`, the learning rate passed by value) and
    <name>_params_init around the graph that copies the trained values there."""
    module = ir.Module(name=name)
    module.triple = profile.triple
    index = ir.IntType(profile.index_bits)
    runs = _graph_functions(module, {"train": tp.graph, "init": init}, plans, name, profile, index)
    ptr, f32 = I8.as_pointer(), ir.FloatType()
    pp = ptr.as_pointer()

    def table(b, entries):
        local = b.alloca(ptr, max(len(entries), 1))
        for k, p in enumerate(entries):
            b.store(p, b.gep(local, [ir.Constant(index, k)], inbounds=True))
        return local

    def at(b, buf, off):
        return b.gep(buf, [ir.Constant(index, off)], inbounds=True)

    fn = ir.Function(module, ir.FunctionType(I32, [ptr, ptr, pp, pp, f32, f32.as_pointer(), ptr]),
                     name=train_step_symbol(name))
    fn.attributes.add("nounwind")
    params, _, inputs, targets, lr, loss, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = b.alloca(f32)
    b.store(lr, slot)
    load = [b.load(b.gep(inputs, [ir.Constant(index, i)], inbounds=True)) for i in range(tp.n_inputs)]
    load += [b.load(b.gep(targets, [ir.Constant(index, j)], inbounds=True)) for j in range(tp.n_targets)]
    ins = table(b, load + [at(b, params, off) for off in offsets] + [b.bitcast(slot, ptr)])
    outs = table(b, [b.bitcast(loss, ptr)] + [ir.Constant(ptr, None)] * len(offsets))
    b.ret(b.call(runs["train"], [ins, outs, arena]))

    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr]), name=params_init_symbol(name))
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    outs = table(b, [at(b, fn.args[0], off) for off in offsets])
    b.call(runs["init"], [table(b, []), outs, ir.Constant(ptr, None)])
    b.ret_void()
    return module


def _grad_entries(module, prog, runs, offsets, name, index):
    """<name>_primal hands its graph the outputs then the residuals (at their offsets in
    the residual buffer); <name>_pullback hands its graph the residuals then the output
    cotangents, and takes back the input cotangents then the parameter cotangents."""
    ptr = I8.as_pointer()
    pp = ptr.as_pointer()

    def table(b, entries):
        local = b.alloca(ptr, max(len(entries), 1))
        for k, p in enumerate(entries):
            b.store(p, b.gep(local, [ir.Constant(index, k)], inbounds=True))
        return local

    def load(b, arr, k):
        return b.load(b.gep(arr, [ir.Constant(index, k)], inbounds=True))

    def residual(b, buf, k):
        return b.gep(buf, [ir.Constant(index, offsets[k])], inbounds=True)

    n, r = prog.n_outputs, len(offsets)
    fn = ir.Function(module, ir.FunctionType(I32, [pp, pp, ptr, ptr]), name=primal_symbol(name))
    fn.attributes.add("nounwind")
    inputs, outputs, res, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    outs = table(b, [load(b, outputs, j) for j in range(n)] + [residual(b, res, k) for k in range(r)])
    b.ret(b.call(runs["primal"], [inputs, outs, arena]))

    n_cot, n_in = len(prog.cot_outputs), len(prog.wrt_inputs)
    fn = ir.Function(module, ir.FunctionType(I32, [ptr, pp, pp, pp, ptr]), name=pullback_symbol(name))
    fn.attributes.add("nounwind")
    res, ocot, icot, pcot, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ins = table(b, [residual(b, res, k) for k in range(r)] + [load(b, ocot, j) for j in range(n_cot)])
    outs = table(b, [load(b, icot, i) for i in range(n_in)] + [load(b, pcot, p) for p in range(len(prog.params))])
    b.ret(b.call(runs["pullback"], [ins, outs, arena]))


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


def _run_function(module, g, plan, symbol, weights, kernels, index, internal=False):
    ptr = I8.as_pointer()
    fnty = ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr])
    fn = ir.Function(module, fnty, name=symbol)
    if internal:
        fn.linkage = "internal"
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
    return fn


def _batch_entries(module, g, name, item, index):
    """<name>_run_dims: checks the batch size against its bounds, then runs the per-item
    function once per item with the inputs and outputs that carry the batch advanced by
    one item's bytes (the others passed as they are); <name>_run: the same at the bound."""
    ptr = I8.as_pointer()
    fnty = ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr, I32.as_pointer()])
    fn = ir.Function(module, fnty, name=run_dims_symbol(name))
    fn.attributes.add("nounwind")
    inputs, outputs, arena, dims = fn.args
    inputs.name, outputs.name, arena.name, dims.name = "inputs", "outputs", "arena", "dims"
    entry, loop, done, bad = (fn.append_basic_block(n) for n in ("entry", "loop", "done", "bad"))
    b = ir.IRBuilder(entry)
    bb = g.batch
    n = b.load(dims)
    ok = b.and_(b.icmp_signed(">=", n, ir.Constant(I32, bb.lo)), b.icmp_signed("<=", n, ir.Constant(I32, bb.hi)))
    tables = [(b.alloca(ptr, len(vals)), table, vals, carries)
              for table, vals, carries in ((inputs, g.inputs, bb.inputs), (outputs, g.outputs, bb.outputs))]
    b.cbranch(ok, loop, bad)
    b = ir.IRBuilder(loop)
    i = b.phi(index)
    i.add_incoming(ir.Constant(index, 0), entry)
    for local, table, vals, carries in tables:
        for k, (v, c) in enumerate(zip(vals, carries)):
            p = b.load(b.gep(table, [ir.Constant(index, k)], inbounds=True))
            if c:
                p = b.gep(p, [b.mul(i, ir.Constant(index, v.type.nbytes))], inbounds=True)
            b.store(p, b.gep(local, [ir.Constant(index, k)], inbounds=True))
    b.call(item, [tables[0][0], tables[1][0], arena])
    nxt = b.add(i, ir.Constant(index, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, b.sext(n, index) if index.width > 32 else n), loop, done)
    ir.IRBuilder(done).ret(ir.Constant(I32, 0))
    ir.IRBuilder(bad).ret(ir.Constant(I32, ERR_DIM_OUT_OF_RANGE))

    run = ir.Function(module, ir.FunctionType(I32, fnty.args[:3]), name=run_symbol(name))
    run.attributes.add("nounwind")
    b = ir.IRBuilder(run.append_basic_block("entry"))
    bound = b.alloca(I32)
    b.store(ir.Constant(I32, bb.hi), bound)
    b.ret(b.call(fn, [*run.args, bound]))


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
