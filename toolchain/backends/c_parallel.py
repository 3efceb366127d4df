"""The parallel build's entry points on the C path (--parallel N), the C twin of
llvm_parallel.py: <name>_run_parallel hands each split node's pieces (passes/parallel.py) to
the caller's parallel_for as one task function, and <name>_run runs the same pieces in turn."""
from __future__ import annotations

from ..contract import (parallel_typedef, run_parallel_prototype, run_parallel_symbol,
                        run_prototype, run_symbol, task_symbol)
from .c_calls import call_line, view_pointer
from .guards import c_check_guards


def parallel_run_functions(g, plan, name, weights, kernels, split) -> tuple[str, dict]:
    """The task functions, <name>_run_parallel(inputs, outputs, arena, par) (the nodes in
    order, each split node as one call of the caller's par->parallel_for over its pieces, or
    the pieces one after another when par is NULL, has no parallel_for or one worker) and
    <name>_run (that with par NULL), and their call graph. kernels: each node's function
    (None: elided or split); split: {id(node): (pieces, piece functions, node symbol)}."""
    tasks, calls = [], {}
    body = ["    unsigned char *a = (unsigned char *)arena;", "    void *ctx[3];", "    int pooled;",
            "    (void)inputs;", "    (void)outputs;", "    (void)a;"]
    body += c_check_guards(g)
    body += ["    ctx[0] = (void *)inputs;", "    ctx[1] = (void *)outputs;", "    ctx[2] = arena;",
             "    pooled = par != NULL && par->parallel_for != NULL && par->workers > 1;", "    (void)pooled;", "    (void)ctx;"]
    entry = set()
    for node, fn in zip(g.nodes, kernels):
        if id(node) in split:
            pieces, fns, sym = split[id(node)]
            task = task_symbol(sym)
            tasks.append(_task_function(plan, weights, task, node, pieces, fns))
            calls[task] = set(fns)
            calls.update({f: set() for f in fns})
            entry.add(task)
            body += ["    if (pooled) {", f"        par->parallel_for(par->ctx, {len(pieces)}, {task}, (void *)ctx);",
                     "    } else {", "        int i;", f"        for (i = 0; i < {len(pieces)}; i++) {task}((void *)ctx, i);",
                     "    }"]
        elif fn is not None:
            body.append(call_line(node, fn, plan, weights))
            calls[fn] = set()
            entry.add(fn)
    proto = run_parallel_prototype(name)
    lines = [parallel_typedef(name), "", *tasks, f"{proto};", "", f"{proto} {{", *body, "    return 0;", "}", "",
             f"{run_prototype(name)};", "", f"{run_prototype(name)} {{",
             f"    return {run_parallel_symbol(name)}(inputs, outputs, arena, NULL);", "}"]
    calls[run_parallel_symbol(name)] = entry
    calls[run_symbol(name)] = {run_parallel_symbol(name)}
    return "\n".join(lines), calls


def _task_function(plan, weights, sym, node, pieces, fns) -> str:
    """static void <sym>(arg, i): piece i of the node, its operands' addresses read from arg
    (the run function's inputs, outputs and arena) and offset to the piece's blocks."""
    lines = [f"static void {sym}(void *arg, int i) {{", "    void *const *ctx = (void *const *)arg;",
             "    const void *const *inputs = (const void *const *)ctx[0];",
             "    void *const *outputs = (void *const *)ctx[1];", "    unsigned char *a = (unsigned char *)ctx[2];",
             "    (void)inputs;", "    (void)outputs;", "    (void)a;", "    switch (i) {"]
    for j, (piece, fn) in enumerate(zip(pieces, fns)):
        args = []
        for v, part, offset in zip(node.inputs, piece.node.inputs, piece.offsets):
            if v is None:
                continue
            args.append(weights[id(part)][0] if offset is None else
                        view_pointer(plan, weights, v, offset, part, False))
        args.append(view_pointer(plan, weights, node.outputs[0], piece.out_offset, piece.node.outputs[0], True))
        lines += [f"    case {j}:", f"        {fn}({', '.join(args)});", "        break;"]
    lines += ["    default:", "        break;", "    }", "}", ""]
    return "\n".join(lines)

