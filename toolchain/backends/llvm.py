"""Graph + memory plan -> one LLVM module: weights as internal read-only globals, one
internal function per node, and the exported `<name>_run` entry point of the C contract."""
from __future__ import annotations

import itertools
import re
from functools import partial

from llvmlite import ir

from ..errors import CompileError
from ..ir import Graph
from ..memory import MemoryPlan
from ..ops import own_inputs, registry
from .kernel import I8, I32, I64, LLVM_TYPES, Kernel, Tensor, VectorUnit

WEIGHT_ALIGN = 64


def symbol(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def build_module(g: Graph, plan: MemoryPlan, name: str, triple: str, vector: VectorUnit = VectorUnit()) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = triple
    weights = {id(v): _weight_global(module, f"{name}_w{i}", v.data) for i, v in enumerate(g.constants())}
    kernels = [_node_function(module, g, plan, name, node, vector) for node in g.nodes]
    _run_function(module, g, plan, name, weights, kernels)
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


def _node_function(module, g, plan, name, node, vector):
    ins = [v for v in node.inputs if v is not None]
    fnty = ir.FunctionType(ir.VoidType(), [_ptr_type(v) for v in ins + node.outputs])
    fn = ir.Function(module, fnty, name=f"{name}_{symbol(node.op)}_{symbol(node.name)}")
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    places = [plan.of(v) for v in ins]
    in_place = any(plan.of(o) in places and plan.of(o).kind != "const" for o in node.outputs)
    if not in_place:  # distinct buffers: lets LLVM vectorize without runtime checks
        for arg in fn.args:
            arg.add_attribute("noalias")
    k = Kernel(fn)
    k.vector = vector
    packed = itertools.count()
    k.rodata = lambda data: _weight_global(module, f"{fn.name}_packed{next(packed)}", data)
    tensors = [Tensor(k, arg, v.type.dtype, v.type.shape) for arg, v in zip(fn.args, ins + node.outputs)]
    lower_node(k, node, tensors)
    k.finish()
    return fn


def lower_node(k, node, tensors):
    """Hand the op its operand views (None where an optional input is omitted) and its
    outputs with the fused epilogue attached, and let it write the code; an error names
    the node. `tensors`: the present inputs, then the outputs. Shared by the LLVM and C
    paths, so an op lowers the same way into both. A binary epilogue step reads its
    operand (same shape as the output) at the stored element's offset."""
    n_in = sum(v is not None for v in node.inputs)
    present = iter(tensors[:n_in])
    in_views = [next(present) if v is not None else None for v in node.inputs]
    outs = tensors[n_in:]
    for op_name, attrs in node.attrs.get("epilogue", []):
        op = registry.get(op_name)
        if "operand" in attrs:
            step = partial(_combine, k, op.combine, in_views[attrs["operand"]].flat(), attrs["operand_first"])
        else:
            step = partial(_apply, k, op.scalar, attrs)
        step.vector_safe, step.reads_operand = op.vector_safe, "operand" in attrs
        outs[0].epilogue.append(step)
    try:
        registry.get(node.op).lower(k, node, in_views[:len(own_inputs(node))], outs)
    except CompileError as e:
        if e.node is None:
            raise CompileError(str(e), node=node.name, op=node.op) from None
        raise


def _apply(k, scalar, attrs, v, at):
    return scalar(k, v, attrs)


def _combine(k, combine, operand, operand_first, v, at):
    other = k.vload(operand, (at,), v.v.type.count) if isinstance(v.v.type, ir.VectorType) else operand[at]
    return combine(k, other, v) if operand_first else combine(k, v, other)


def _run_function(module, g, plan, name, weights, kernels):
    ptr = I8.as_pointer()
    fnty = ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr])
    fn = ir.Function(module, fnty, name=f"{name}_run")
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
                raw = b.load(b.gep(table, [ir.Constant(I64, st.index)], inbounds=True))
            elif st.kind == "arena":
                raw = b.gep(arena, [ir.Constant(I64, st.index)], inbounds=True)
            else:
                raw = weights[id(v)]
            cache[key] = raw
        return b.bitcast(cache[key], _ptr_type(v))

    for node, kernel in zip(g.nodes, kernels):
        args = [pointer(v) for v in node.inputs if v is not None] + [pointer(v) for v in node.outputs]
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
