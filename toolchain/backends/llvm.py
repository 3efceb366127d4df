"""The object backend: graph + memory plan -> one LLVM module (weights as internal
read-only globals, one internal function per node, the exported entry point of the C
contract) -> a relocatable object for the profile (llvmlite, O3, the profile's
triple/cpu/features so NEON, AVX2 and RVV instructions are allowed)."""
from __future__ import annotations

import itertools

from llvmlite import ir

from ..contract import (ERR_DIM_OUT_OF_RANGE, ERR_OPT_STATE, ERR_WEIGHTS, build_id_symbol, check_weights_symbol, fnv1a64, graph_symbol,
                        item_symbol, jvp_symbol, node_symbols, params_init_symbol, primal_symbol, pullback_symbol,
                        run_dims_symbol, run_ext_symbol, run_params_symbol, run_symbol,
                        train_step_symbol, weights_section)
from ..errors import InternalError, UnsupportedError
from ..ir import Graph
from ..kernel.llvm import I8, I32, LLVM_TYPES, Kernel, Tensor
from ..memory import MemoryPlan
from ..ops import registry
from ..targets import Profile, VectorUnit
from .common import Generated, lower_node
from .guards import llvm_check_guards
from .debuglines import with_node_lines
from .llvm_calls import call_nodes, ptr_type
from .llvm_object import call_graph, compile_ir, dynamic_allocas, module_text
from .llvm_parallel import parallel_run_functions

WEIGHT_ALIGN = 64


class LLVMBackend:
    """emit "object": <name>.o and lib<name>.a from LLVM."""

    name = "object"
    ships = ("object", "library")  # artifact kinds of the build besides header, manifest and fragments

    def vector_unit(self, profile: Profile) -> VectorUnit:
        return profile.vector_unit

    def generate(self, g: Graph, plan: MemoryPlan, name: str, profile: Profile,
                 weights: str = "internal", separate_nodes: bool = False, node_lines: bool = False,
                 build_id: str | None = None, weights_section: str | None = None,
                 parallel: dict | None = None) -> Generated:
        """parallel: {id(node): its pieces} of a parallel build (passes/parallel.py; {} when
        nothing is worth splitting): <name>_run_parallel, and <name>_run running the pieces in
        turn. weights "external": no weight bytes in the object; they go to <name>_weights.bin
        (Generated.files) and <name>_run_ext takes their address. weights_section: the ELF
        section of every weight and packed-weight global (default .rodata.<name>.weights).
        The profiling builds of toolchain.profile (a shipped build sets neither, and its
        object does not change with the options present): separate_nodes keeps every node
        in its own function (noinline), so its code has an address range of its own;
        node_lines adds line-table debug info naming each instruction's node
        (backends/debuglines.py) to the shipped build's code."""
        blob = WeightBlob() if weights == "external" else None
        module = build_module(g, plan, name, profile, blob, separate_nodes, weights_section, parallel)
        if build_id is not None:
            _build_id_constant(module, name, build_id)
        text = module_text(module)
        if node_lines:
            symbols = node_symbols(name, g.nodes)
            text = with_node_lines(text, {s: i + 1 for i, s in enumerate(symbols)}, len(symbols) + 1)
        obj, optimized, frames = compile_ir(text, profile)
        for fn in dynamic_allocas(optimized):
            raise InternalError(f"function '{fn}' allocates stack of a run-time size: its worst-case stack "
                                "cannot be bounded")
        files = {"weights": blob.data()} if blob is not None else {}
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized, files=files)

    def generate_train(self, tp, init, plans, offsets, name: str, profile: Profile, run=None,
                       weights_section: str | None = None, node_lines: bool = False) -> Generated:
        """A training build: <name>_train_step, <name>_params_init and (with the graph `run`)
        <name>_run_params in one object. node_lines: the step graph's nodes named in a line
        table, as generate's (toolchain.profile --train)."""
        module = build_train_module(tp, init, plans, offsets, name, profile, run, weights_section)
        text = module_text(module)
        if node_lines:
            symbols = node_symbols(f"{name}_train", tp.graph.nodes)
            text = with_node_lines(text, {s: i + 1 for i, s in enumerate(symbols)}, len(symbols) + 1)
        obj, optimized, frames = compile_ir(text, profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)

    def generate_grad(self, prog, plans, offsets, name: str, profile: Profile,
                      weights_section: str | None = None) -> Generated:
        """A reverse-mode build: <name>_primal and <name>_pullback in one object."""
        module = build_grad_module(prog, plans, offsets, name, profile, weights_section)
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)

    def generate_jvp(self, prog, plan, name: str, profile: Profile, weights_section: str | None = None) -> Generated:
        """A forward-mode build: <name>_jvp around the one JVP graph."""
        module = _module(name, profile, weights_section)
        index = ir.IntType(profile.index_bits)
        run = _graph_functions(module, {"jvp": prog.graph}, {"jvp": plan}, name, profile, index)["jvp"]
        ptr = I8.as_pointer()
        pp = ptr.as_pointer()
        fn = ir.Function(module, ir.FunctionType(I32, [pp, pp, pp, pp, ptr]), name=jvp_symbol(name))
        fn.attributes.add("nounwind")
        inputs, tangents, outputs, out_tangents, arena = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))

        def load(arr, k):
            return b.load(b.gep(arr, [ir.Constant(index, k)], inbounds=True))

        # the graph reads the inputs then their tangents, writes the outputs then theirs
        ins = [load(inputs, i) for i in range(prog.n_inputs)] + [load(tangents, k) for k in range(len(prog.wrt_inputs))]
        outs = [load(outputs, j) for j in range(prog.n_outputs)] + [load(out_tangents, k)
                                                                   for k in range(len(prog.tan_outputs))]
        b.ret(b.call(run, [_pointer_table(b, ins, index), _pointer_table(b, outs, index), arena]))
        obj, optimized, frames = compile_ir(module_text(module), profile)
        return Generated(obj, frames, call_graph(optimized), llvm_ir=optimized)


class WeightBlob:
    """Weights kept out of the object (--weights external): each array at a WEIGHT_ALIGN
    offset in one file, in the order code generation asks for them."""

    def __init__(self):
        self.parts: list[tuple[int, bytes]] = []
        self.offsets: dict = {}  # id(constant) -> offset
        self.size = 0

    def offset_of(self, v) -> int:
        """The offset of a constant of the graph, added on first use."""
        if id(v) not in self.offsets:
            self.offsets[id(v)] = self.add(v.data)
        return self.offsets[id(v)]

    def add(self, data) -> int:
        offset = -(-self.size // WEIGHT_ALIGN) * WEIGHT_ALIGN
        raw = data.tobytes()
        self.parts.append((offset, raw))
        self.size = offset + len(raw)
        return offset

    def data(self) -> bytes:
        out = bytearray(max(self.size, 1))
        for offset, raw in self.parts:
            out[offset:offset + len(raw)] = raw
        return bytes(out)


def build_module(g: Graph, plan: MemoryPlan, name: str, profile: Profile, blob: "WeightBlob | None" = None,
                 separate_nodes: bool = False, weights_section: str | None = None,
                 parallel: dict | None = None) -> ir.Module:
    """separate_nodes: the run function calls, for each node, a function of the node's
    symbol that is never inlined and computes the node's pointers from (inputs, outputs,
    arena) exactly as the run function does (arena offsets as constants, the arena's
    alignment, weights as globals), its kernel inlined into it: the kernel's code sees the
    same context as in the shipped build, where every kernel is inlined into the run
    function."""
    if separate_nodes and (blob is not None or g.batch is not None):
        raise UnsupportedError("a profiling build with every node in a function of its own needs internal "
                               "weights and static shapes")
    if parallel is not None and (blob is not None or g.batch is not None or separate_nodes):
        raise UnsupportedError("a parallel build (--parallel) needs internal weights and static shapes")
    module = _module(name, profile, weights_section)
    index = ir.IntType(profile.index_bits)
    if blob is None:
        weights = {id(v): _weight_global(module, f"{name}_w{i}", v.data) for i, v in enumerate(g.constants())}
    else:
        if g.batch is not None:
            raise UnsupportedError("--weights external with a bounded dimension is not supported yet")
        weights = blob  # offsets into it, each added when a kernel first reads it (llvm_calls.call_nodes)
    symbols = node_symbols(name, g.nodes)
    parallel_build, parallel = parallel is not None, parallel or {}
    kernels = [_node_function(module, g, plan, sym + ("_body" if separate_nodes else ""), node,
                              profile.vector_unit, index, blob)
               if id(node) not in plan.elided and id(node) not in parallel else None  # a join: already in place
               for node, sym in zip(g.nodes, symbols)]
    split = {}
    for node, sym in zip(g.nodes, symbols):
        if id(node) in parallel:
            pieces = parallel[id(node)]
            for v in (v for p in pieces for v in p.node.inputs if v is not None and v.is_const):
                if id(v) not in weights:
                    weights[id(v)] = _weight_global(module, f"{name}_w{len(weights)}", v.data)
            fns = [_node_function(module, g, None, f"{sym}_part{j}", p.node, profile.vector_unit, index)
                   for j, p in enumerate(pieces)]
            split[id(node)] = (pieces, fns, sym)
    if separate_nodes:
        kernels = [_node_wrapper(module, plan, sym, node, kernel, weights, index) if kernel is not None else None
                   for node, sym, kernel in zip(g.nodes, symbols, kernels)]
    else:
        _bound_inlining(kernels + [f for _, fns, _ in split.values() for f in fns])
    if parallel_build:
        parallel_run_functions(module, g, plan, name, weights, kernels, split, index)
        return module
    run = _run_function(module, g, plan, name, weights, kernels, index, blob is not None, separate_nodes)
    if g.batch is not None:
        _batch_entries(module, g, name, run, index)
    if blob is not None:
        _check_weights_function(module, name, blob.data(), index)
    return module


# Up to this many kernels are inlined into the function that runs the graph (the shipped
# models' graphs: the optimizer then sees constant offsets and the arena's alignment); a
# larger graph keeps each kernel a function of its own, because LLVM's optimization time
# grows faster than linearly with the size of one function (benchmarks/compile_time_bench.py:
# DenseNet-121, 247 kernels, about 4x faster to compile).
INLINE_KERNEL_LIMIT = 64


def _bound_inlining(kernels):
    live = [k for k in kernels if k is not None]
    if len(live) > INLINE_KERNEL_LIMIT:
        for k in live:
            k.attributes.add("noinline")


def _check_weights_function(module, name: str, data: bytes, index):
    """<name>_check_weights(weights): 0 when the bytes at `weights` hash (FNV-1a 64, as the
    header's macro) to this build's, else ERR_WEIGHTS. A firmware calls it once after
    loading or flashing the blob; <name>_run_ext does not rehash on every inference."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(I32, [I8.as_pointer()]), name=check_weights_symbol(name))
    fn.attributes.add("nounwind")
    (weights,) = fn.args
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_unsigned("==", weights, ir.Constant(I8.as_pointer(), None)), done, loop)
    b.position_at_end(loop)
    i, h = b.phi(index, "i"), b.phi(i64, "h")
    byte = b.load(b.gep(weights, [i]))
    h2 = b.mul(b.xor(h, b.zext(byte, i64)), ir.Constant(i64, 0x100000001B3))
    i2 = b.add(i, ir.Constant(index, 1))
    i.add_incoming(ir.Constant(index, 0), entry), i.add_incoming(i2, loop)
    h.add_incoming(ir.Constant(i64, 0xCBF29CE484222325), entry), h.add_incoming(h2, loop)
    b.cbranch(b.icmp_unsigned("<", i2, ir.Constant(index, len(data))), loop, done)
    b.position_at_end(done)
    final = b.phi(i64, "hash")
    final.add_incoming(ir.Constant(i64, 0), entry), final.add_incoming(h2, loop)
    ok = b.icmp_unsigned("==", final, ir.Constant(i64, fnv1a64(data)))
    b.ret(b.select(ok, ir.Constant(I32, 0), ir.Constant(I32, ERR_WEIGHTS)))


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
                   if id(node) not in plans[part].elided else None  # a join: already in place
                   for node, sym in zip(g.nodes, node_symbols(f"{name}_{part}", g.nodes))]
        _bound_inlining(kernels)
        runs[part] = _run_function(module, g, plans[part], name, weights, kernels, index,
                                   symbol=graph_symbol(name, part), internal=True)
    return runs


def build_grad_module(prog, plans, offsets, name: str, profile: Profile,
                      weights_section: str | None = None) -> ir.Module:
    """Both graphs of a reverse-mode build, and the two exported entries that route the
    residual buffer."""
    module = _module(name, profile, weights_section)
    index = ir.IntType(profile.index_bits)
    runs = _graph_functions(module, {"primal": prog.primal, "pullback": prog.pullback}, plans, name, profile, index)
    _grad_entries(module, prog, runs, offsets, name, index)
    return module


def build_train_module(tp, init, plans, offsets, name: str, profile: Profile, run=None,
                       weights_section: str | None = None) -> ir.Module:
    """A training build: <name>_train_step around the train graph (parameters read and
    updated in the caller's buffer at `offsets`, with momentum each velocity at the same
    offset in opt_state, the learning rate passed by value), <name>_params_init around the
    graph that copies the trained values there, and <name>_run_params around the inference
    graph `run` (the parameters read from the caller's buffer)."""
    module = _module(name, profile, weights_section)
    index = ir.IntType(profile.index_bits)
    graphs = {"train": tp.graph, "init": init, **({"run": run} if run is not None else {})}
    runs = _graph_functions(module, graphs, plans, name, profile, index)
    ptr, f32 = I8.as_pointer(), ir.FloatType()
    pp = ptr.as_pointer()
    momentum = tp.optimizer == "momentum"

    def table(b, entries):
        return _pointer_table(b, entries, index)

    def at(b, buf, off):
        return b.gep(buf, [ir.Constant(index, off)], inbounds=True)

    def loads(b, arr, n):
        return [b.load(b.gep(arr, [ir.Constant(index, i)], inbounds=True)) for i in range(n)]

    fn = ir.Function(module, ir.FunctionType(I32, [ptr, ptr, pp, pp, f32, f32.as_pointer(), ptr]),
                     name=train_step_symbol(name))
    fn.attributes.add("nounwind")
    params, state, inputs, targets, lr, loss, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if momentum:  # the velocities live in opt_state: refuse a NULL one before writing anything
        ok = fn.append_basic_block("state")
        refuse = fn.append_basic_block("no_state")
        b.cbranch(b.icmp_unsigned("==", state, ir.Constant(ptr, None)), refuse, ok)
        b.position_at_end(refuse)
        b.ret(ir.Constant(I32, ERR_OPT_STATE))
        b.position_at_end(ok)
    slot = b.alloca(f32)
    b.store(lr, slot)
    load = loads(b, inputs, tp.n_inputs) + loads(b, targets, tp.n_targets)
    velocities = [at(b, state, off) for off in offsets] if momentum else []
    ins = table(b, load + [at(b, params, off) for off in offsets] + velocities + [b.bitcast(slot, ptr)])
    outs = table(b, [b.bitcast(loss, ptr)] + [ir.Constant(ptr, None)] * (len(offsets) + len(velocities)))
    b.ret(b.call(runs["train"], [ins, outs, arena]))

    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr]), name=params_init_symbol(name))
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    outs = table(b, [at(b, fn.args[0], off) for off in offsets])
    b.call(runs["init"], [table(b, []), outs, ir.Constant(ptr, None)])
    b.ret_void()

    if run is not None:
        fn = ir.Function(module, ir.FunctionType(I32, [ptr, pp, pp, ptr]), name=run_params_symbol(name))
        fn.attributes.add("nounwind")
        params, inputs, outputs, arena = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        n_in = len(run.inputs) - len(offsets)
        ins = table(b, loads(b, inputs, n_in) + [at(b, params, off) for off in offsets])
        outs = table(b, loads(b, outputs, len(run.outputs)))
        b.ret(b.call(runs["run"], [ins, outs, arena]))
    return module


def _pointer_table(b, entries, index):
    """A stack array of i8* holding `entries`, as the run functions take their inputs/outputs."""
    ptr = I8.as_pointer()
    local = b.alloca(ptr, max(len(entries), 1))
    for k, p in enumerate(entries):
        b.store(p, b.gep(local, [ir.Constant(index, k)], inbounds=True))
    return local


def _grad_entries(module, prog, runs, offsets, name, index):
    """<name>_primal hands its graph the outputs then the residuals (at their offsets in
    the residual buffer); <name>_pullback hands its graph the residuals then the output
    cotangents, and takes back the input cotangents then the parameter cotangents."""
    ptr = I8.as_pointer()
    pp = ptr.as_pointer()

    def table(b, entries):
        return _pointer_table(b, entries, index)

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


def _build_id_constant(module, name, build_id: str):
    """const char <name>_build_id[] = "<id>": exported, read-only."""
    raw = bytearray(build_id.encode() + b"\0")
    gv = ir.GlobalVariable(module, ir.ArrayType(I8, len(raw)), name=build_id_symbol(name))
    gv.global_constant = True
    gv.initializer = ir.Constant(ir.ArrayType(I8, len(raw)), raw)


def _module(name: str, profile: Profile, weights_section: str | None = None) -> ir.Module:
    """An empty module for the profile; its weight globals go to weights_section (None: the
    contract's default, .rodata.<name>.weights)."""
    module = ir.Module(name=name)
    module.triple = profile.triple
    module.__dict__["edgec_weights_section"] = weights_section
    return module


def _weight_global(module, sym, data):
    raw = bytearray(data.tobytes())
    arr = ir.ArrayType(I8, max(len(raw), 1))
    gv = ir.GlobalVariable(module, arr, name=sym)
    gv.global_constant = True
    gv.linkage = "internal"
    gv.unnamed_addr = True
    gv.align = WEIGHT_ALIGN
    gv.section = weights_section(module.name, module.__dict__.get("edgec_weights_section"))
    gv.initializer = ir.Constant(arr, raw or bytearray(1))
    return gv


def _packed_global(module, sym, data):
    """Weights packed for a tile, stored once per module for equal bytes (the forward and the
    tangent Gemm of a forward-mode build pack the same weights)."""
    cache = module.__dict__.setdefault("edgec_packed", {})
    key = (str(data.dtype), data.shape, data.tobytes())
    if key not in cache:
        cache[key] = _weight_global(module, sym, data)
    return cache[key]


def _blob_address(b, fn, offset, ty, index):
    """A pointer `offset` bytes into the function's last argument (the external weights),
    computed where the lowering asks for its constant: before the loop nest that reads it."""
    return b.bitcast(b.gep(fn.args[-1], [ir.Constant(index, offset)], inbounds=True), ty)


def _node_function(module, g, plan, sym, node, vector, index, blob=None):
    ins = [v for v in node.inputs if v is not None]
    scratch = registry.get(node.op).workspace(node)  # after the outputs (Op.workspace)
    fnty = ir.FunctionType(ir.VoidType(), [ptr_type(v) for v in ins + node.outputs] +
                           [LLVM_TYPES[t.dtype].as_pointer() for t in scratch] +
                           ([I8.as_pointer()] if blob is not None else []))  # external weights: the blob
    fn = ir.Function(module, fnty, name=sym)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    places = [plan.of(v) for v in ins] if plan is not None else []
    # plan None: a piece of a split node (passes/parallel.py), never in place
    in_place = plan is not None and any(plan.of(o) in places and plan.of(o).kind != "const" for o in node.outputs)
    if not in_place:  # distinct buffers: lets LLVM vectorize without runtime checks
        for arg in fn.args:
            arg.add_attribute("noalias")
    k = Kernel(fn)
    k.vector, k.index = vector, index
    packed = itertools.count()
    if blob is None:
        k.rodata = lambda data, ty: _packed_global(module, f"{fn.name}_packed{next(packed)}", data).bitcast(ty)
    else:
        k.rodata = lambda data, ty: _blob_address(k.b, fn, blob.add(data), ty, index)
    types = [v.type for v in ins + node.outputs] + scratch
    tensors = [Tensor(k, arg, t.dtype, t.shape) for arg, t in zip(fn.args, types)]
    lower_node(k, node, tensors)
    k.finish()
    return fn


def _run_function(module, g, plan, name, weights, kernels, index, external=False, separate_nodes=False,
                  symbol=None, internal=False):
    """<name>_run; with external weights <name>_run_ext, whose first argument is the
    blob (`weights` is then the WeightBlob, giving each constant's offset there). separate_nodes: the
    kernels are the node wrappers (_node_wrapper), called with the run function's arguments.
    symbol/internal: another name and internal linkage (the graphs of a reverse-mode build)."""
    ptr = I8.as_pointer()
    fnty = ir.FunctionType(I32, [ptr] * external + [ptr.as_pointer(), ptr.as_pointer(), ptr])
    sym = symbol or (item_symbol(name) if g.batch else run_ext_symbol(name) if external else run_symbol(name))
    fn = ir.Function(module, fnty, name=sym)
    if g.batch or internal:
        fn.linkage = "internal"
    fn.attributes.add("nounwind")
    blob = fn.args[0] if external else None
    inputs, outputs, arena = fn.args[external:]
    inputs.name, outputs.name, arena.name = "inputs", "outputs", "arena"
    arena.attributes.align = plan.alignment
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if external:  # a NULL or misaligned weights address: ERR_WEIGHTS, nothing written
        misaligned = b.and_(b.ptrtoint(blob, index), ir.Constant(index, WEIGHT_ALIGN - 1))
        bad = b.or_(b.icmp_unsigned("==", blob, ir.Constant(ptr, None)),
                    b.icmp_unsigned("!=", misaligned, ir.Constant(index, 0)))
        with b.if_then(bad, likely=False):
            b.ret(ir.Constant(I32, ERR_WEIGHTS))
    llvm_check_guards(b, g, inputs, index)  # specialized inputs (frontend/specialize.py)
    if separate_nodes:
        for kernel in kernels:
            if kernel is not None:
                b.call(kernel, [inputs, outputs, arena])
    else:
        call_nodes(b, g.nodes, kernels, plan, weights, index, inputs, outputs, arena, blob)
    b.ret(ir.Constant(I32, 0))
    return fn


def _node_wrapper(module, plan, sym, node, kernel, weights, index):
    """The profiling build's function for one node: the run function's arguments, the
    node's pointers computed as the run function computes them, its kernel inlined."""
    ptr = I8.as_pointer()
    fn = ir.Function(module, ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr]), name=sym)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    kernel.attributes.add("alwaysinline")
    inputs, outputs, arena = fn.args
    inputs.name, outputs.name, arena.name = "inputs", "outputs", "arena"
    arena.attributes.align = plan.alignment
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    call_nodes(b, [node], [kernel], plan, weights, index, inputs, outputs, arena, None)
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
