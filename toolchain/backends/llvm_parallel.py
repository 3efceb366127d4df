"""The parallel build's entry points on the object path (--parallel N): <name>_run_parallel
hands each split node's pieces (passes/parallel.py) to the caller's parallel_for as one
task function, and <name>_run runs the same pieces in turn."""
from __future__ import annotations

from llvmlite import ir

from ..contract import run_parallel_symbol, run_symbol, task_symbol
from ..kernel.llvm import I8, I32
from .guards import llvm_check_guards
from .llvm_calls import call_nodes, operand_addresses, ptr_type


# The parallel build's C types (contract.parallel_typedef): a task, the caller's parallel_for,
# and the struct holding it with the worker count and the caller's context.
TASK = ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32])
PARALLEL_FOR = ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, TASK.as_pointer(), I8.as_pointer()])
PARALLEL = ir.LiteralStructType([PARALLEL_FOR.as_pointer(), I32, I8.as_pointer()])


def parallel_run_functions(module, g, plan, name, weights, kernels, split, index):
    """<name>_run_parallel(inputs, outputs, arena, par): the nodes in order, each split node
    as one call of the caller's par->parallel_for over its pieces (a task function choosing
    the piece by its index), or the pieces one after another when par is NULL, has no
    parallel_for or one worker; and <name>_run, that with par NULL. split: {id(node):
    (pieces, piece functions, node symbol)}."""
    ptr = I8.as_pointer()
    fn = ir.Function(module, ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr, PARALLEL.as_pointer()]),
                     name=run_parallel_symbol(name))
    fn.attributes.add("nounwind")
    inputs, outputs, arena, par = fn.args
    inputs.name, outputs.name, arena.name, par.name = "inputs", "outputs", "arena", "par"
    arena.attributes.align = plan.alignment
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    llvm_check_guards(b, g, inputs, index)
    ctx = b.alloca(ir.ArrayType(ptr, 3), name="ctx")
    for k, v in enumerate((inputs, outputs, arena)):
        b.store(b.bitcast(v, ptr), b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, k)], inbounds=True))
    ctx = b.bitcast(ctx, ptr)
    pool_for, pool_ctx, use_pool = _pool(b, par)
    run = []
    for i, node in enumerate(g.nodes):
        if id(node) not in split:
            run.append(i)
            continue
        call_nodes(b, [g.nodes[j] for j in run], [kernels[j] for j in run], plan, weights, index, inputs, outputs,
                    arena, None)
        run = []
        pieces, fns, sym = split[id(node)]
        task = _task_function(module, plan, weights, index, task_symbol(sym), node, pieces, fns)
        with b.if_else(use_pool) as (pooled, alone):
            with pooled:
                b.call(pool_for, [pool_ctx, ir.Constant(I32, len(pieces)), task, ctx])
            with alone:
                for j in range(len(pieces)):
                    b.call(task, [ctx, ir.Constant(I32, j)])
    call_nodes(b, [g.nodes[j] for j in run], [kernels[j] for j in run], plan, weights, index, inputs, outputs,
                arena, None)
    b.ret(ir.Constant(I32, 0))

    whole = ir.Function(module, ir.FunctionType(I32, [ptr.as_pointer(), ptr.as_pointer(), ptr]), name=run_symbol(name))
    whole.attributes.add("nounwind")
    b = ir.IRBuilder(whole.append_basic_block("entry"))
    b.ret(b.call(fn, [*whole.args, ir.Constant(PARALLEL.as_pointer(), None)]))
    return fn


def _pool(b, par):
    """(parallel_for, its context, whether to use it): par is not NULL, its parallel_for is
    set and it has more than one worker."""
    fn = b.function
    start, read, join = b.block, fn.append_basic_block("par.read"), fn.append_basic_block("par.join")
    b.cbranch(b.icmp_unsigned("!=", par, ir.Constant(par.type, None)), read, join)
    b.position_at_end(read)
    field = [b.load(b.gep(par, [ir.Constant(I32, 0), ir.Constant(I32, k)], inbounds=True)) for k in range(3)]
    usable = b.and_(b.icmp_unsigned("!=", field[0], ir.Constant(field[0].type, None)),
                    b.icmp_signed(">", field[1], ir.Constant(I32, 1)))
    b.branch(join)
    b.position_at_end(join)
    phis = []
    for value, none in ((field[0], ir.Constant(field[0].type, None)), (field[2], ir.Constant(field[2].type, None)),
                        (usable, ir.Constant(ir.IntType(1), 0))):
        phi = b.phi(value.type)
        phi.add_incoming(none, start)
        phi.add_incoming(value, read)
        phis.append(phi)
    return phis


def _task_function(module, plan, weights, index, sym, node, pieces, fns):
    """void <sym>(ctx, i): piece i of the node, its operands' addresses read from ctx (the
    run function's inputs, outputs and arena) and offset to the piece's blocks."""
    ptr = I8.as_pointer()
    fn = ir.Function(module, TASK, name=sym)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    ctx, i = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slots = b.bitcast(ctx, ptr.as_pointer())
    table = [b.load(b.gep(slots, [ir.Constant(I32, k)], inbounds=True)) for k in range(3)]
    inputs, outputs, arena = b.bitcast(table[0], ptr.as_pointer()), b.bitcast(table[1], ptr.as_pointer()), table[2]
    raw = operand_addresses(b, plan, weights, index, inputs, outputs, arena, None)
    whole = [v for v in node.inputs if v is not None] + node.outputs
    base = {id(v): b.bitcast(raw(v), ptr) for v in whole}  # here, so that every piece's block sees them
    done = fn.append_basic_block("done")
    switch = b.switch(i, done)
    for j, (piece, kernel) in enumerate(zip(pieces, fns)):
        block = fn.append_basic_block(f"piece{j}")
        switch.add_case(ir.Constant(I32, j), block)
        b.position_at_end(block)
        args = []
        for v, part, offset in zip(node.inputs, piece.node.inputs, piece.offsets):
            if v is None:
                continue
            address = weights[id(part)] if offset is None else b.gep(base[id(v)], [ir.Constant(index, offset)],
                                                                        inbounds=True)
            args.append(b.bitcast(address, ptr_type(part)))
        out = b.gep(base[id(node.outputs[0])], [ir.Constant(index, piece.out_offset)], inbounds=True)
        b.call(kernel, args + [b.bitcast(out, ptr_type(piece.node.outputs[0]))])
        b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn


