"""The C contract of a build, in one place: the entry symbols, their prototypes, the
header macro names, and how text from a model is made safe inside generated C. Both backends, the header writer, the stack report and the harness
spell them from here.

    int <name>_run(const void *const *inputs, void *const *outputs, void *arena);

and with a bounded batch (--dim N<=8), also

    int <name>_run_dims(const void *const *inputs, void *const *outputs, void *arena,
                        const int32_t *dims);

A reverse-mode build (--grad reverse) exports instead

    int <name>_primal(const void *const *inputs, void *const *outputs, void *residuals, void *arena);
    int <name>_pullback(const void *residuals, const void *const *output_cotangents,
                        void *const *input_cotangents, void *const *param_cotangents, void *arena);

(--wrt inputs: no parameter cotangents, param_cotangents may be NULL; --wrt params: no
input cotangents, input_cotangents may be NULL; --residuals recompute: the residual buffer
holds the primal's inputs and the pullback recomputes the forward values from them)

and a forward-mode build (--grad forward)

    int <name>_jvp(const void *const *inputs, const void *const *input_tangents,
                   void *const *outputs, void *const *output_tangents, void *arena);

and a parallel build (--parallel N) also

    int <name>_run_parallel(const void *const *inputs, void *const *outputs, void *arena,
                            const <name>_parallel_t *par);

(the caller's parallel_for runs each split node's pieces on its threads; <name>_run runs
them in turn, with the same results bit for bit)

and a training build (--train)

    void <name>_params_init(void *params);
    int <name>_run_params(const void *params, const void *const *inputs, void *const *outputs, void *arena);
    int <name>_train_step(void *params, void *opt_state, const void *const *inputs,
                          const void *const *targets, float learning_rate, float *loss, void *arena);
"""
from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # a C identifier short enough for every linker
RUN_PARAMS = "const void *const *inputs, void *const *outputs, void *arena"
RUN_RETURNS = "int"


def run_symbol(name: str) -> str:
    """The exported inference entry point."""
    return f"{name}_run"


def run_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_symbol(name)}({RUN_PARAMS})"


DIMS_PARAM = "const int32_t *dims"
# <name>_run_dims returns this when a run-time dimension is outside its bounds (nothing written)
ERR_DIM_OUT_OF_RANGE = 1


def run_parallel_symbol(name: str) -> str:
    """The multi-core entry point of a parallel build (--parallel N)."""
    return f"{name}_run_parallel"


def parallel_type(name: str) -> str:
    return f"{name}_parallel_t"


def parallel_typedef(name: str) -> str:
    """The struct a caller fills to lend the library its threads: parallel_for must run
    task(arg, i) for every i in 0..n-1, on any threads, and return when all have finished
    (their writes visible to the caller); workers <= 1 or a NULL parallel_for runs every
    piece on the calling thread."""
    return ("typedef struct {\n"
            "    void (*parallel_for)(void *ctx, int n, void (*task)(void *arg, int i), void *arg);\n"
            "    int workers;\n"
            "    void *ctx;\n"
            f"}} {parallel_type(name)};")


def task_symbol(node_symbol: str) -> str:
    """The function a parallel build hands to parallel_for for one split node (internal;
    the stack report's worker figure is its worst case)."""
    return f"{node_symbol}_task"


def run_parallel_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_parallel_symbol(name)}({RUN_PARAMS}, const {parallel_type(name)} *par)"


def run_ext_symbol(name: str) -> str:
    """The entry point of a build whose weights live outside the object (--weights external)."""
    return f"{name}_run_ext"


def run_ext_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_ext_symbol(name)}(const void *weights, {RUN_PARAMS})"


# <name>_run_ext returns this for a NULL or misaligned weights address, and
# <name>_check_weights for bytes whose FNV-1a 64 is not the build's (nothing is written)
ERR_WEIGHTS = 2


# <name>_run returns this when an input the build specialized (frontend/specialize.py: a
# reduction's axes given as a graph input) holds a value other than those the header lists
ERR_INPUT_VALUE = 4


def check_weights_symbol(name: str) -> str:
    """Checks a copy of the external weights against the build's hash (once, at start-up)."""
    return f"{name}_check_weights"


def check_weights_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {check_weights_symbol(name)}(const void *weights)"


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits: a checksum a firmware computes in a few lines of C (the header gives it)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def run_dims_symbol(name: str) -> str:
    """The entry point taking the run-time value of each bounded dimension."""
    return f"{name}_run_dims"


def run_dims_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_dims_symbol(name)}({RUN_PARAMS}, {DIMS_PARAM})"


def item_symbol(name: str) -> str:
    """The internal function running one item of a bounded batch."""
    return f"{name}_run_item"


PRIMAL_PARAMS = "const void *const *inputs, void *const *outputs, void *residuals, void *arena"
PULLBACK_PARAMS = ("const void *residuals, const void *const *output_cotangents, void *const *input_cotangents, "
                   "void *const *param_cotangents, void *arena")


def primal_symbol(name: str) -> str:
    """Reverse mode: the forward pass that also writes the residuals."""
    return f"{name}_primal"


def pullback_symbol(name: str) -> str:
    """Reverse mode: residuals and output cotangents -> input and parameter cotangents."""
    return f"{name}_pullback"


def primal_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {primal_symbol(name)}({PRIMAL_PARAMS})"


def pullback_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {pullback_symbol(name)}({PULLBACK_PARAMS})"


JVP_PARAMS = ("const void *const *inputs, const void *const *input_tangents, void *const *outputs, "
              "void *const *output_tangents, void *arena")


def jvp_symbol(name: str) -> str:
    """Forward mode: inputs and a tangent per float input -> outputs and a tangent per float output."""
    return f"{name}_jvp"


def jvp_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {jvp_symbol(name)}({JVP_PARAMS})"


TRAIN_STEP_PARAMS = ("void *params, void *opt_state, const void *const *inputs, const void *const *targets, "
                     "float learning_rate, float *loss, void *arena")


# <name>_train_step of a build with optimizer state (--optimizer momentum) returns this for a
# NULL opt_state (nothing is written)
ERR_OPT_STATE = 3


def train_step_symbol(name: str) -> str:
    """A training build: one optimizer step on the parameters in the caller's buffer."""
    return f"{name}_train_step"


def run_params_symbol(name: str) -> str:
    """A training build: inference with the parameters in the caller's buffer."""
    return f"{name}_run_params"


def run_params_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_params_symbol(name)}(const void *params, {RUN_PARAMS})"


def params_init_symbol(name: str) -> str:
    """A training build: copies the model's trained parameter values into the caller's buffer."""
    return f"{name}_params_init"


def train_step_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {train_step_symbol(name)}({TRAIN_STEP_PARAMS})"


def params_init_prototype(name: str) -> str:
    return f"void {params_init_symbol(name)}(void *params)"


def graph_symbol(name: str, part: str) -> str:
    """The internal function running one graph of a derivative build (part: primal, pullback,
    jvp, train, init)."""
    return f"{name}_{part}_graph"


def entry_symbols(name: str, bounded: bool = False, grad: bool | str = False, train: bool = False,
                  external: bool = False, run_params: bool = True, parallel: bool = False) -> list[str]:
    """Every exported function of the contract (the stack report covers each). grad: True or
    "reverse" for a reverse-mode build, "forward" for a forward-mode one."""
    if parallel:
        return [run_symbol(name), run_parallel_symbol(name)]
    if external:
        return [run_ext_symbol(name), check_weights_symbol(name)]
    if train:
        return [train_step_symbol(name), params_init_symbol(name)] + ([run_params_symbol(name)] if run_params else [])
    if grad == "forward":
        return [jvp_symbol(name)]
    if grad:
        return [primal_symbol(name), pullback_symbol(name)]
    return [run_symbol(name), run_dims_symbol(name)] if bounded else [run_symbol(name)]


def weights_section(name: str, section: str | None = None) -> str:
    """The ELF section holding a build's weights (read-only), so a firmware linker script
    can place them (external flash, a chosen bank): `*(.rodata.<name>.weights)`, or the
    name given to --weights-section (checked by weights_section_problem)."""
    return section or f".rodata.{name}.weights"


SECTION_PATTERN = r"[A-Za-z_.][A-Za-z0-9_.$-]{0,63}"  # one linker-script word, quoting never needed
# Names whose ELF type or flags an assembler or linker derives from the name (uninitialized,
# thread-local, writable, code, start-up arrays, notes, debug or linker metadata): read-only
# weights there would be refused by the assembler or end up in RAM or in the wrong place.
RESERVED_SECTIONS = (".bss", ".sbss", ".tbss", ".tdata", ".data", ".sdata", ".text", ".init_array",
                     ".fini_array", ".preinit_array", ".ctors", ".dtors", ".init", ".fini", ".note",
                     ".debug", ".comment", ".eh_frame", ".got", ".plt", ".rel", ".rela", ".dynamic",
                     ".symtab", ".strtab", ".shstrtab", ".stack", ".heap", ".ARM", ".gnu", ".llvm")


def weights_section_problem(section: str) -> str | None:
    """Why `section` cannot hold a build's weights (None: it can). A legal ELF section name
    that a linker script names without quotes (letters, digits, _ . $ -; not starting with a
    digit or -; at most 64 characters) and that no tool treats as anything but read-only data."""
    if not isinstance(section, str) or not section:
        return "is empty"
    if len(section) > 64:
        return f"is {len(section)} characters long (at most 64)"
    if re.fullmatch(SECTION_PATTERN, section) is None:
        bad = sorted({repr(c) for c in section if not (c.isascii() and (c.isalnum() or c in "_.$-"))})
        return (f"has characters a linker script cannot name unquoted ({', '.join(bad)})" if bad
                else "must start with a letter, _ or .")
    for reserved in RESERVED_SECTIONS:
        if section == reserved or section.startswith(reserved + "."):
            return (f"is a {reserved} section, which tools treat as other than read-only data "
                    "(choose a name such as .rodata.<x>, .weights or .extflash)")
    return None


def build_id_symbol(name: str) -> str:
    """An exported constant: the build id as a NUL-terminated string, equal to the header's
    <NAME>_BUILD_ID, so firmware can check at start-up that header and library match."""
    return f"{name}_build_id"


def macro_prefix(name: str) -> str:
    return name.upper()


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def node_symbols(name: str, nodes) -> list[str]:
    """The function symbol of each node, `<name>_<op>_<node>` with non-identifier
    characters as `_`; two nodes whose names differ only there get a numbered suffix, so
    the symbols stay distinct."""
    used, out = set(), []
    for node in nodes:
        base = f"{name}_{symbol(node.op)}_{symbol(node.name)}"
        sym, n = base, 1
        while sym in used:
            sym, n = f"{base}_{n}", n + 1
        used.add(sym)
        out.append(sym)
    return out


def symbol(text: str) -> str:
    """Any text (an op or node name) as the tail of a C/ELF identifier."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def c_comment_text(s) -> str:
    """Text safe inside a C block comment in any C dialect: printable ASCII is kept, except
    that `*/` (closes the comment), `/*` (-Wcomment), `??` (trigraphs: `??/` is a line
    splice) and a trailing backslash are broken up; every other character (newline, other
    controls, non-ASCII, a byte of invalid UTF-8) becomes `\\xNN` / `\\uNNNN`. bytes are
    decoded as UTF-8 first, invalid bytes kept as `\\xNN`."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    out = []
    for ch in str(s):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0x20 <= o < 0x7F and ch != "\\":
            out.append(ch)
        elif ch == "\\":
            out.append("\\x5c")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    text = "".join(out)
    # break the sequences a comment must not contain; repeat until none is left
    while "*/" in text or "/*" in text or "??" in text:
        text = text.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")
    return text
