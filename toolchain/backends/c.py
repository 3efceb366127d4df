"""The C backend: graph + memory plan -> one portable C99 file, the C twin of llvm.py:
weights as aligned `static const` arrays, one static function per node (the op's own
lowering, run on CKernel), and the exported entry point with the contract of `<name>.h`.
The file is then compiled for the profile with the strict flags, and that object gets
the same checks as the object path's.

The file includes only <stdint.h> and <stddef.h> and calls nothing: the few helpers it
needs (bit reinterpretation, saturating float->int, sqrt) are defined inside it, with
one-instruction forms where the compiler offers them and plain C everywhere else.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..contract import (ERR_DIM_OUT_OF_RANGE, ERR_OPT_STATE, RUN_PARAMS, build_id_symbol, c_comment_text,
                        graph_symbol, item_symbol, jvp_prototype, jvp_symbol, node_symbols, params_init_prototype,
                        params_init_symbol, primal_prototype, primal_symbol, pullback_prototype, pullback_symbol,
                        run_dims_prototype, run_dims_symbol, run_params_prototype, run_params_symbol, run_prototype,
                        run_symbol, train_step_prototype, train_step_symbol, weights_section)
from ..errors import InternalError, UnsupportedError
from ..ir import Graph
from ..kernel.c import CKernel, CTensor, c_type, float_literal, int_literal
from ..kernel.llvm import F32, F64, LLVM_TYPES
from ..memory import MemoryPlan
from ..ops import registry
from ..targets import Profile, VectorUnit
from ..version import __version__
from .c_calls import call_line
from .c_parallel import parallel_run_functions
from .common import Generated, lower_node
from .guards import c_check_guards
from .llvm import WEIGHT_ALIGN
from .llvm_object import parse_frame_reports

# C has no vector types: the lowering writes 4-lane tiles as scalars, which the C
# compiler's vectorizer finds again. Schedules for the C path are chosen for this unit.
PORTABLE_C = VectorUnit(lanes=4, registers=16, name="portable-c")


class CBackend:
    """emit "c": <name>.c (portable C99), compiled once for the profile as the check build."""

    name = "c"
    ships = ("source",)  # artifact kinds of the build besides header, manifest and fragments

    def vector_unit(self, profile: Profile) -> VectorUnit:
        return PORTABLE_C

    def generate(self, g: Graph, plan: MemoryPlan, name: str, profile: Profile,
                 weights: str = "internal", build_id: str | None = None,
                 weights_section: str | None = None, parallel: dict | None = None) -> Generated:
        """parallel: {id(node): its pieces} of a parallel build (passes/parallel.py; {} when
        nothing is worth splitting): <name>_run_parallel, and <name>_run running the pieces
        in turn (c_parallel.py)."""
        if weights != "internal":
            raise UnsupportedError("--weights external is not supported with --emit c yet")
        if parallel is not None and g.batch is not None:
            raise UnsupportedError("a parallel build (--parallel) needs static shapes")
        calls: dict = {}
        source = c_source(g, plan, name, profile.name, build_id, weights_section, parallel, calls)
        frames: dict = {}
        obj = compile_c(source, profile, frames=frames)
        if parallel is not None:
            return Generated(obj, frames, calls, c_source=source)
        # the entry calls each node's function, which call nothing (helpers are inline)
        functions = node_symbols(name, g.nodes)
        calls = {fn: set() for fn in functions}
        calls[item_symbol(name) if g.batch else run_symbol(name)] = set(functions)
        if g.batch:
            calls[run_dims_symbol(name)] = {item_symbol(name)}
            calls[run_symbol(name)] = {run_dims_symbol(name)}
        return Generated(obj, frames, calls, c_source=source)

    def generate_grad(self, prog, plans, offsets, name: str, profile: Profile,
                      weights_section: str | None = None) -> Generated:
        """A reverse-mode build: <name>_primal and <name>_pullback in one C file."""
        source, calls = c_grad_source(prog, plans, offsets, name, profile.name, weights_section)
        frames: dict = {}
        obj = compile_c(source, profile, frames=frames)
        return Generated(obj, frames, calls, c_source=source)

    def generate_train(self, tp, init, plans, offsets, name: str, profile: Profile, run=None,
                       weights_section: str | None = None) -> Generated:
        """A training build: <name>_train_step, <name>_params_init and (with the graph `run`)
        <name>_run_params in one C file (no node_lines: profiling builds are object-only)."""
        source, calls = c_train_source(tp, init, plans, offsets, name, profile.name, run, weights_section)
        frames: dict = {}
        obj = compile_c(source, profile, frames=frames)
        return Generated(obj, frames, calls, c_source=source)

    def generate_jvp(self, prog, plan, name: str, profile: Profile, weights_section: str | None = None) -> Generated:
        """A forward-mode build: <name>_jvp in one C file."""
        source, calls = c_jvp_source(prog, plan, name, profile.name, weights_section)
        frames: dict = {}
        obj = compile_c(source, profile, frames=frames)
        return Generated(obj, frames, calls, c_source=source)


PRELUDE = """\
#include <stdint.h>
#include <stddef.h>

#if defined(__GNUC__) || defined(__clang__)
#define EDGEC_ALIGN(n) __attribute__((aligned(n)))
#else
#define EDGEC_ALIGN(n)
#endif

/* Loops that copy or fill must stay loops: compilers otherwise turn them into calls to
   memcpy/memset, which firmware may not have.
   Kernels stay out of line: arena bytes change type from node to node, and a call is a
   boundary no type-based alias analysis reorders memory accesses across. */
#if defined(__clang__)
#define EDGEC_KERNEL static __attribute__((no_builtin, noinline))
#elif defined(__GNUC__)
#define EDGEC_KERNEL static __attribute__((optimize("no-tree-loop-distribute-patterns"), noinline))
#else
#define EDGEC_KERNEL static
#endif
"""

# name -> (helpers it needs, C definition). Only the helpers the code uses are emitted.
HELPERS = {
    "edgec_bits_f32": ((), """\
static inline int32_t edgec_bits_f32(float x) {
    union { float f; int32_t i; } u;
    u.f = x;
    return u.i;
}"""),
    "edgec_f32_bits": ((), """\
static inline float edgec_f32_bits(int32_t i) {
    union { float f; int32_t i; } u;
    u.i = i;
    return u.f;
}"""),
    "edgec_bits_f64": ((), """\
static inline int64_t edgec_bits_f64(double x) {
    union { double f; int64_t i; } u;
    u.f = x;
    return u.i;
}"""),
    "edgec_f64_bits": ((), """\
static inline double edgec_f64_bits(int64_t i) {
    union { double f; int64_t i; } u;
    u.i = i;
    return u.f;
}"""),
    # float -> int: C leaves out-of-range values (and NaN) undefined; these saturate
    # (NaN gives the low bound), where LLVM's conversion gives a poison value that the
    # ops select away. Clamping first keeps the conversion itself unconditional, so
    # vectorizers emit min/max and a plain conversion, not a masked conversion (which
    # qemu 7.2's RISC-V vector emulation cannot translate).
    "edgec_f2i32": ((), """\
static inline int32_t edgec_f2i32(float x) {
    float c = x >= -0x1p31f ? x : -0x1p31f;
    return (int32_t)(c < 0x1.fffffep30f ? c : 0x1.fffffep30f);
}"""),
    "edgec_f2i64": ((), """\
static inline int64_t edgec_f2i64(float x) {
    float c = x >= -0x1p63f ? x : -0x1p63f;
    return (int64_t)(c < 0x1.fffffep62f ? c : 0x1.fffffep62f);
}"""),
    "edgec_f2u32": ((), """\
static inline int32_t edgec_f2u32(float x) {
    float c = x > 0.0f ? x : 0.0f;
    return (int32_t)(uint32_t)(c < 0x1.fffffep31f ? c : 0x1.fffffep31f);
}"""),
    "edgec_f2u64": ((), """\
static inline int64_t edgec_f2u64(float x) {
    float c = x > 0.0f ? x : 0.0f;
    return (int64_t)(uint64_t)(c < 0x1.fffffep63f ? c : 0x1.fffffep63f);
}"""),
    "edgec_d2i32": ((), """\
static inline int32_t edgec_d2i32(double x) {
    double c = x >= -0x1p31 ? x : -0x1p31;
    return (int32_t)(c < 0x1.fffffffcp30 ? c : 0x1.fffffffcp30);
}"""),
    "edgec_d2i64": ((), """\
static inline int64_t edgec_d2i64(double x) {
    double c = x >= -0x1p63 ? x : -0x1p63;
    return (int64_t)(c < 0x1.fffffffffffffp62 ? c : 0x1.fffffffffffffp62);
}"""),
    "edgec_d2u32": ((), """\
static inline int32_t edgec_d2u32(double x) {
    double c = x > 0.0 ? x : 0.0;
    return (int32_t)(uint32_t)(c < 0x1.fffffffep31 ? c : 0x1.fffffffep31);
}"""),
    "edgec_d2u64": ((), """\
static inline int64_t edgec_d2u64(double x) {
    double c = x > 0.0 ? x : 0.0;
    return (int64_t)(uint64_t)(c < 0x1.fffffffffffffp63 ? c : 0x1.fffffffffffffp63);
}"""),
    # Correctly rounded sqrt. The hardware instruction where the compiler can name it
    # (clang's builtin vectorizes; GCC's __builtin_sqrtf may call libm's sqrtf for errno),
    # else fdlibm's bit-by-bit integer square root. -DEDGEC_PORTABLE forces plain C.
    "edgec_sqrtf": ((), """\
#if !defined(EDGEC_PORTABLE) && defined(__clang__) && defined(__has_builtin)
#if __has_builtin(__builtin_elementwise_sqrt)
#define EDGEC_SQRTF_BUILTIN 1
#endif
#endif
#if defined(EDGEC_SQRTF_BUILTIN)
static inline float edgec_sqrtf(float x) { return __builtin_elementwise_sqrt(x); }
#elif !defined(EDGEC_PORTABLE) && defined(__GNUC__) && defined(__x86_64__)
static inline float edgec_sqrtf(float x) { float r; __asm__("sqrtss %1, %0" : "=x"(r) : "x"(x)); return r; }
#elif !defined(EDGEC_PORTABLE) && defined(__GNUC__) && defined(__aarch64__)
static inline float edgec_sqrtf(float x) { float r; __asm__("fsqrt %s0, %s1" : "=w"(r) : "w"(x)); return r; }
#elif !defined(EDGEC_PORTABLE) && defined(__GNUC__) && defined(__riscv_flen) && __riscv_flen >= 32
static inline float edgec_sqrtf(float x) { float r; __asm__("fsqrt.s %0, %1" : "=f"(r) : "f"(x)); return r; }
#else
static inline float edgec_sqrtf(float x) {
    union { float f; int32_t i; } u;
    int32_t ix, m, s, q, r, t, i;
    u.f = x;
    ix = u.i;
    if ((ix & 0x7f800000) == 0x7f800000) return x * x + x; /* inf, NaN; sqrt(-inf) = NaN */
    if ((ix & 0x7fffffff) == 0) return x;                  /* +-0 */
    if (ix < 0) return (x - x) / (x - x);                  /* negative: NaN */
    m = (ix >> 23) & 0xff;
    if (m == 0) {                                          /* subnormal: normalize */
        for (i = 0; (ix & 0x00800000) == 0; i++) ix += ix;
        m -= i - 1;
    }
    m -= 127;
    ix = (ix & 0x007fffff) | 0x00800000;
    if (m & 1) ix += ix;
    m = m < 0 ? -((1 - m) / 2) : m / 2;                    /* floor(m / 2) */
    ix += ix;
    q = s = 0;
    r = 0x01000000;
    while (r != 0) {
        t = s + r;
        if (t <= ix) {
            s = t + r;
            ix -= t;
            q += r;
        }
        ix += ix;
        r /= 2;
    }
    if (ix != 0) q += q & 1;                               /* round to nearest even */
    u.i = (q / 2 + 0x3f000000) + m * 0x800000;
    return u.f;
}
#endif"""),
}


def c_source(g: Graph, plan: MemoryPlan, name: str, target: str, build_id: str | None = None,
             weights_section: str | None = None, parallel: dict | None = None, calls: dict | None = None) -> str:
    """parallel: the pieces of a parallel build's split nodes ({id(node): pieces}); its call
    graph goes into `calls`."""
    weights = {id(v): (f"{name}_w{i}", v) for i, v in enumerate(g.constants())}
    symbols = node_symbols(name, g.nodes)
    cut = parallel or {}
    kernels = [_node_function(g, plan, sym, node) if id(node) not in plan.elided and id(node) not in cut
               else (None, "") for node, sym in zip(g.nodes, symbols)]
    split, pieces = {}, []  # a split node: no whole kernel, a kernel per piece (plan None: never in place)
    for node, sym in zip(g.nodes, symbols):
        if id(node) in cut:
            for v in (v for p in cut[id(node)] for v in p.node.inputs if v is not None and v.is_const):
                weights.setdefault(id(v), (f"{name}_w{len(weights)}", v))  # a piece's constant of its own
            fns = [_node_function(g, None, f"{sym}_part{j}", p.node) for j, p in enumerate(cut[id(node)])]
            pieces += fns
            split[id(node)] = (cut[id(node)], [fn for fn, _ in fns], sym)
    if parallel is not None:
        entries, graph = parallel_run_functions(g, plan, name, weights, [fn for fn, _ in kernels], split)
        calls.update(graph)
        # the arrays a call reads: a split node's whole weights, when every piece has its own, are none
        read = [v for node, (fn, _) in zip(g.nodes, kernels) if fn for v in node.inputs]
        read += [v for pieces_of, _, _ in split.values() for p in pieces_of for v in p.node.inputs]
        used = {id(v) for v in read if v is not None and v.is_const}
        weights = {k: w for k, w in weights.items() if k in used}
    else:
        entries = _run_function(g, plan, name, weights, [fn for fn, _ in kernels])
    body = "\n\n".join([*(_weight_array(sym, v.data) for sym, v in weights.values()),
                        *(code for _, code in kernels + pieces if code),
                        entries,
                        *([_batch_entries(g, name)] if g.batch else []),
                        *([f"extern const char {build_id_symbol(name)}[{len(build_id) + 1}];\n"
                           f"const char {build_id_symbol(name)}[{len(build_id) + 1}] = \"{build_id}\";"]
                          if build_id else [])])
    head = (f"/* {name}.c: generated by edgec {__version__} for target {c_comment_text(target)}. Do not edit.\n"
            f"   Portable C99: includes only <stdint.h> and <stddef.h>, calls no libc or libm.\n"
            f"   Compile in an ISO mode (-std=c99) or with -ffp-contract=off to keep the\n"
            f"   rounding of the LLVM path. */\n")
    return head + PRELUDE + "\n" + _section_macro(name, weights_section) + _helpers(body) + body + "\n"


def _section_macro(name: str, section: str | None = None) -> str:
    """EDGEC_WEIGHTS: the weights' own read-only section (contract.weights_section; a name
    given to --weights-section is a checked linker-script word, safe inside the quotes)."""
    return (f"#if defined(__GNUC__) || defined(__clang__)\n#define EDGEC_WEIGHTS __attribute__((section(\""
            f"{weights_section(name, section)}\")))\n#else\n#define EDGEC_WEIGHTS\n#endif\n\n")


def c_grad_source(prog, plans, offsets, name: str, target: str,
                  weights_section: str | None = None) -> tuple[str, dict]:
    """Both graphs of a reverse-mode build (weights they share stored once), each as a
    static run function, and the two exported entries that route the residual buffer
    (see the LLVM backend's _grad_entries). Returns the source and its call graph."""
    arrays, parts, calls = _graph_functions({"primal": prog.primal, "pullback": prog.pullback}, plans, name)
    n, r = prog.n_outputs, len(offsets)
    n_cot, n_in, n_par = len(prog.cot_outputs), len(prog.wrt_inputs), len(prog.params)
    lines = [f"{primal_prototype(name)};", "", f"{primal_prototype(name)} {{",
             "    unsigned char *r = (unsigned char *)residuals;", f"    void *outs[{max(n + r, 1)}];",
             "    (void)r;", "    (void)outputs;"]
    lines += [f"    outs[{j}] = outputs[{j}];" for j in range(n)]
    lines += [f"    outs[{n + k}] = (void *)(r + {off});" for k, off in enumerate(offsets)]
    lines += [f"    return {graph_symbol(name, 'primal')}(inputs, outs, arena);", "}", "",
              f"{pullback_prototype(name)};", "", f"{pullback_prototype(name)} {{",
              "    const unsigned char *r = (const unsigned char *)residuals;",
              f"    const void *ins[{max(r + n_cot, 1)}];", f"    void *outs[{max(n_in + n_par, 1)}];",
              "    (void)r;", "    (void)output_cotangents;", "    (void)input_cotangents;", "    (void)param_cotangents;"]
    lines += [f"    ins[{k}] = (const void *)(r + {off});" for k, off in enumerate(offsets)]
    lines += [f"    ins[{r + j}] = output_cotangents[{j}];" for j in range(n_cot)]
    lines += [f"    outs[{i}] = input_cotangents[{i}];" for i in range(n_in)]
    lines += [f"    outs[{n_in + p}] = param_cotangents[{p}];" for p in range(n_par)]
    lines += [f"    return {graph_symbol(name, 'pullback')}(ins, outs, arena);", "}"]
    calls[primal_symbol(name)] = {graph_symbol(name, "primal")}
    calls[pullback_symbol(name)] = {graph_symbol(name, "pullback")}
    return _source_file(name, target, "reverse mode (primal and pullback)", arrays, parts, lines,
                        weights_section), calls


def c_train_source(tp, init, plans, offsets, name: str, target: str, run=None,
                   weights_section: str | None = None) -> tuple[str, dict]:
    """A training build's graphs ("train", "init" and with `run` the inference graph), each a
    static run function, and the exported entries that build their pointer tables as the
    LLVM backend's build_train_module does: the step reads the model inputs, the targets, a
    pointer per parameter at its offset in `params`, (momentum) a velocity per parameter at
    the same offset in opt_state, then the learning rate; it writes the loss (the updates go
    over their inputs' bytes). Returns the source and its call graph."""
    graphs = {"train": tp.graph, "init": init, **({"run": run} if run is not None else {})}
    arrays, parts, calls = _graph_functions(graphs, plans, name)
    momentum = tp.optimizer == "momentum"
    n_in, n_tg, n_p = tp.n_inputs, tp.n_targets, len(offsets)
    n_v = n_p if momentum else 0
    n_ins = n_in + n_tg + n_p + n_v + 1
    lines = [f"{train_step_prototype(name)};", "", f"{train_step_prototype(name)} {{",
             "    unsigned char *p = (unsigned char *)params;", "    unsigned char *s = (unsigned char *)opt_state;",
             f"    const void *ins[{n_ins}];", f"    void *outs[{1 + n_p + n_v}];", "    (void)p;", "    (void)s;",
             "    (void)inputs;", "    (void)targets;"]
    if momentum:  # the velocities live in opt_state: refuse a NULL one before writing anything
        lines.append(f"    if (opt_state == NULL) return {ERR_OPT_STATE};")
    lines += [f"    ins[{i}] = inputs[{i}];" for i in range(n_in)]
    lines += [f"    ins[{n_in + t}] = targets[{t}];" for t in range(n_tg)]
    lines += [f"    ins[{n_in + n_tg + k}] = (const void *)(p + {off});" for k, off in enumerate(offsets)]
    if momentum:
        lines += [f"    ins[{n_in + n_tg + n_p + k}] = (const void *)(s + {off});" for k, off in enumerate(offsets)]
    lines += [f"    ins[{n_ins - 1}] = (const void *)&learning_rate;", "    outs[0] = (void *)loss;"]
    lines += [f"    outs[{1 + k}] = NULL;" for k in range(n_p + n_v)]
    lines += [f"    return {graph_symbol(name, 'train')}(ins, outs, arena);", "}", "",
              f"{params_init_prototype(name)};", "", f"{params_init_prototype(name)} {{",
              "    unsigned char *p = (unsigned char *)params;", f"    void *outs[{max(n_p, 1)}];",
              "    const void *ins[1] = {NULL};", "    (void)p;"]
    lines += [f"    outs[{k}] = (void *)(p + {off});" for k, off in enumerate(offsets)]
    lines += [f"    (void){graph_symbol(name, 'init')}(ins, outs, NULL);", "}"]
    calls[train_step_symbol(name)] = {graph_symbol(name, "train")}
    calls[params_init_symbol(name)] = {graph_symbol(name, "init")}
    if run is not None:
        n_run = len(run.inputs) - n_p
        lines += ["", f"{run_params_prototype(name)};", "", f"{run_params_prototype(name)} {{",
                  "    const unsigned char *p = (const unsigned char *)params;",
                  f"    const void *ins[{max(n_run + n_p, 1)}];", f"    void *outs[{max(len(run.outputs), 1)}];",
                  "    (void)p;", "    (void)inputs;", "    (void)outputs;"]
        lines += [f"    ins[{i}] = inputs[{i}];" for i in range(n_run)]
        lines += [f"    ins[{n_run + k}] = (const void *)(p + {off});" for k, off in enumerate(offsets)]
        lines += [f"    outs[{j}] = outputs[{j}];" for j in range(len(run.outputs))]
        lines += [f"    return {graph_symbol(name, 'run')}(ins, outs, arena);", "}"]
        calls[run_params_symbol(name)] = {graph_symbol(name, "run")}
    return _source_file(name, target, f"training build ({tp.optimizer})", arrays, parts, lines,
                        weights_section), calls


def _source_file(name: str, target: str, kind: str, arrays, parts, lines, weights_section) -> str:
    """A derivative or training build's <name>.c: its weights, graph functions and entries."""
    body = "\n\n".join([*arrays, *parts, "\n".join(lines)])
    head = (f"/* {name}.c: generated by edgec {__version__} for target {c_comment_text(target)}, {kind}. Do not "
            f"edit.\n   Portable C99: includes only <stdint.h> and <stddef.h>, calls no libc or libm. */\n")
    return head + PRELUDE + "\n" + _section_macro(name, weights_section) + _helpers(body) + body + "\n"


def _graph_functions(graphs: dict, plans: dict, name: str) -> tuple[list, list, dict]:
    """Each graph as a static run function <name>_<part>_graph with its node functions
    (weights equal in type and bytes stored once for all): (weight arrays, functions, call graph)."""
    weights, by_bytes, arrays, parts, calls = {}, {}, [], [], {}
    for g in graphs.values():
        for v in g.constants():
            key = (v.type, v.data.tobytes())
            if key not in by_bytes:
                by_bytes[key] = f"{name}_w{len(by_bytes)}"
                arrays.append(_weight_array(by_bytes[key], v.data))
            weights[id(v)] = (by_bytes[key], v)
    shared: dict = {}
    for part, g in graphs.items():
        kernels = [_node_function(g, plans[part], sym, node, shared) if id(node) not in plans[part].elided
                   else (None, "")
                   for node, sym in zip(g.nodes, node_symbols(f"{name}_{part}", g.nodes))]
        run = graph_symbol(name, part)
        parts += [code for _, code in kernels if code]
        parts.append(_run_function(g, plans[part], name, weights, [fn for fn, _ in kernels],
                                   proto=f"static int {run}({RUN_PARAMS})"))
        calls.update({fn: set() for fn, _ in kernels if fn})
        calls[run] = {fn for fn, _ in kernels if fn}
    return arrays, parts, calls


def c_jvp_source(prog, plan, name: str, target: str, weights_section: str | None = None) -> tuple[str, dict]:
    """The JVP graph as a static run function and <name>_jvp, which hands it the inputs then
    their tangents and the outputs then theirs. Returns the source and its call graph."""
    arrays, parts, calls = _graph_functions({"jvp": prog.graph}, {"jvp": plan}, name)
    n_in, n_out, n_ti, n_to = prog.n_inputs, prog.n_outputs, len(prog.wrt_inputs), len(prog.tan_outputs)
    lines = [f"{jvp_prototype(name)};", "", f"{jvp_prototype(name)} {{",
             f"    const void *ins[{max(n_in + n_ti, 1)}];", f"    void *outs[{max(n_out + n_to, 1)}];",
             "    (void)inputs;", "    (void)input_tangents;", "    (void)outputs;", "    (void)output_tangents;"]
    lines += [f"    ins[{i}] = inputs[{i}];" for i in range(n_in)]
    lines += [f"    ins[{n_in + k}] = input_tangents[{k}];" for k in range(n_ti)]
    lines += [f"    outs[{j}] = outputs[{j}];" for j in range(n_out)]
    lines += [f"    outs[{n_out + k}] = output_tangents[{k}];" for k in range(n_to)]
    lines += [f"    return {graph_symbol(name, 'jvp')}(ins, outs, arena);", "}"]
    calls[jvp_symbol(name)] = {graph_symbol(name, "jvp")}
    return _source_file(name, target, "forward mode (Jacobian-vector product)", arrays, parts, lines,
                        weights_section), calls


def _helpers(body: str) -> str:
    needed: list[str] = []

    def need(h):
        if h in needed:
            return
        for dep in HELPERS[h][0]:
            need(dep)
        needed.append(h)

    for h in HELPERS:
        if f"{h}(" in body:
            need(h)
    return "".join(HELPERS[h][1] + "\n\n" for h in needed)


# -- weights --------------------------------------------------------------------------------
def _weight_array(sym: str, data: np.ndarray) -> str:
    ty = LLVM_TYPES.get(str(data.dtype))
    if ty is None:
        raise UnsupportedError(f"the C backend cannot store a {data.dtype} constant")
    flat = data.reshape(-1)
    if data.dtype == np.float16:  # a storage type: its bits
        flat = flat.view(np.int16)
    elif str(data.dtype) == "float8_e5m2":
        flat = flat.view(np.int8)
    if ty in (F32, F64) and not np.isfinite(flat).all():
        return _bits_array(sym, flat, ty)
    if ty in (F32, F64):
        items = [float_literal(float(x), ty) for x in flat.tolist()]
    else:
        items = [int_literal(int(x), ty) for x in flat.astype(np.int64).tolist()]
    return _array(f"static const {c_type(ty)} {sym}", items)


def _bits_array(sym: str, flat: np.ndarray, ty) -> str:
    """Non-finite floats have no C99 constant: store the bits in a union and read the floats
    (union type punning is defined in C99 TC3)."""
    ity, ct = ("uint32_t", "float") if ty == F32 else ("uint64_t", "double")
    bits = flat.view(np.uint32 if ty == F32 else np.uint64).tolist()
    items = [f"UINT{ity[4:6]}_C({b})" for b in bits]
    decl = _array(f"static const union {{ {ity} bits[{max(len(items), 1)}]; {ct} v[{max(len(items), 1)}]; }} "
                  f"{sym}_u", items, braces=2)
    return decl + f"\n#define {sym} ({sym}_u.v)"


def _array(decl: str, items: list[str], braces: int = 1) -> str:
    items = items or ["0"]
    rows = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
    inner = ",\n    ".join(rows)
    dims = "" if braces == 2 else f"[{len(items)}]"
    return (f"{decl}{dims} EDGEC_ALIGN({WEIGHT_ALIGN}) EDGEC_WEIGHTS = {'{' * braces}\n    {inner}\n{'}' * braces};")


# -- kernels ----------------------------------------------------------------------------------
def _node_function(g, plan, fn, node, shared: dict | None = None) -> tuple[str, str]:
    """shared: (dtype, shape, bytes) -> symbol of the packed weights already written, which a
    kernel packing the same weights names instead of storing them again."""
    ins = [v for v in node.inputs if v is not None]
    places = [plan.of(v) for v in ins] if plan is not None else []
    # plan None: a piece of a split node (passes/parallel.py), never in place
    in_place = plan is not None and any(plan.of(o) in places and plan.of(o).kind != "const" for o in node.outputs)
    restrict = "" if in_place else " restrict"  # distinct buffers: lets compilers vectorize
    k = CKernel(fn)
    k.vector = PORTABLE_C
    params, tensors = [], []
    scratch = registry.get(node.op).workspace(node)  # after the outputs (Op.workspace)
    for i, t in enumerate([v.type for v in ins + node.outputs] + scratch):
        const = "const " if i < len(ins) else ""
        params.append(f"{const}{c_type(LLVM_TYPES[t.dtype])} *{restrict} p{i}")
        tensors.append(CTensor(k, f"p{i}", t.dtype, t.shape))
    lower_node(k, node, tensors)
    lines = []
    for sym, data in k.packed:
        key = (str(data.dtype), data.shape, data.tobytes())
        if shared is not None and key in shared:
            lines.append(f"#define {sym} {shared[key]}")
            continue
        lines.append(_weight_array(sym, data))
        if shared is not None:
            shared[key] = sym
    lines += [f"/* {node.op} '{c_comment_text(node.name)}' */", f"EDGEC_KERNEL void {fn}({', '.join(params)}) {{"]
    lines += [f"    (void)p{i};" for i in range(len(params))]
    lines += k.render_body()
    lines.append("}")
    return fn, "\n".join(lines)


def _run_function(g, plan, name, weights, kernels, proto=None) -> str:
    if proto is None:
        proto = f"static int {item_symbol(name)}({RUN_PARAMS})" if g.batch else run_prototype(name)
    lines = [f"{proto};", "", f"{proto} {{", "    unsigned char *a = (unsigned char *)arena;",
             "    (void)inputs;", "    (void)outputs;", "    (void)a;"]
    lines += c_check_guards(g)

    for node, fn in zip(g.nodes, kernels):
        if fn is not None:
            lines.append(call_line(node, fn, plan, weights))
    lines += ["    return 0;", "}"]
    return "\n".join(lines)


def _batch_entries(g, name) -> str:
    """<name>_run_dims and <name>_run around the per-item function (see the LLVM backend's
    _batch_entries)."""
    bb, item = g.batch, item_symbol(name)
    lines = [f"{run_dims_prototype(name)};", "", f"{run_dims_prototype(name)} {{",
             f"    const void *in[{len(g.inputs)}];", f"    void *out[{len(g.outputs)}];", "    int32_t i;",
             f"    if (dims[0] < {bb.lo} || dims[0] > {bb.hi}) return {ERR_DIM_OUT_OF_RANGE};",
             "    for (i = 0; i < dims[0]; i++) {"]
    for table, local, vals, carries, cast in (("inputs", "in", g.inputs, bb.inputs, "const unsigned char *"),
                                              ("outputs", "out", g.outputs, bb.outputs, "unsigned char *")):
        for k, (v, c) in enumerate(zip(vals, carries)):
            step = f" + (size_t)i * {v.type.nbytes}u" if c else ""
            lines.append(f"        {local}[{k}] = ({cast}){table}[{k}]{step};")
    lines += [f"        {item}(in, out, arena);", "    }", "    return 0;", "}", "",
              f"{run_prototype(name)};", "", f"{run_prototype(name)} {{", f"    const int32_t bound[1] = {{{bb.hi}}};",
              f"    return {run_dims_symbol(name)}(inputs, outputs, arena, bound);", "}"]
    return "\n".join(lines)


# -- checking ---------------------------------------------------------------------------------
STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def compile_c(source: str, profile, cc: list[str] | None = None, flags=(), opt="-O2",
              frames: dict | None = None) -> bytes:
    """The generated C -> a relocatable object for the profile (zig cc by default), with the
    strict flags the C path promises to pass. Raises InternalError with the compiler's output.
    `frames`, if given, receives {function: stack frame bytes} from clang's frame reports."""
    if cc is None:
        cc = profile.zig_cc()
    with tempfile.TemporaryDirectory(prefix="edgec-c-") as tmp:
        src, obj = Path(tmp) / "model.c", Path(tmp) / "model.o"
        src.write_text(source)
        report = ["-Wframe-larger-than=0", "-Wno-error=frame-larger-than"] if frames is not None else []
        proc = subprocess.run([*cc, *STRICT_FLAGS, opt, *report, *flags, "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True)
        if frames is not None:
            frames.update(parse_frame_reports(proc.stderr))
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise InternalError(f"the generated C does not compile cleanly:\n{tail}")
        return obj.read_bytes()
