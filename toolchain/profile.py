"""Per-node instruction profiles: where one inference's guest instructions go, node by
node of the final graph (after fusion), on the target's instruction set under QEMU.

    invoke profile --target cortex-a76 [--model M] [--json F] [--html F] [--mode functions|lines]
    invoke profile --diff OLD.json,NEW.json          (edgec profile --diff OLD.json NEW.json)

Two profiling builds, the shipped build untouched by both:
- mode "functions": every node in a function of its own that is never inlined
  (compile_graph(separate_nodes=True)); the linked harness's symbol table gives each
  node's address range. The code differs from the shipped build's, which inlines every
  node into the run function: the per-node sum is within a few per cent of the shipped
  count (printed with every profile).
- mode "lines" (default): the shipped build's own code (its .text is checked against the shipped
  object: identical, or the same sizes and, when run, exactly the shipped count) with a line table naming each instruction's node
  (compile_graph(node_lines=True), backends/debuglines.py); the ranges come from the
  linked harness's .debug_line. The per-node sum is the shipped count exactly.
runtime/insn_profile_plugin.c counts executed instructions per range, once with N
inferences and once with 1, so start-up cancels and the figures are exact and
repeatable; instructions outside every node (the run function's own, the harness loop)
are a line of their own. The whole-program plugin (runtime/insn_count_plugin.c, as
`invoke bench` uses it) counts the same executable and the shipped build, for the checks.
"""
from __future__ import annotations

import html
import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

from .bench import LEARNING_RATE, seeded_inputs
from .compiler import ARTIFACTS, DEFAULT_MODEL, build, compile_graph, compile_train_graph, make_manifest
from .contract import node_symbols
from .backends.debuglines import NODE_LINES_FILE
from .errors import InternalError, InvalidModelError, UnsupportedError
from .frontend.onnx_import import import_model, load_model
from .harness.plugin import count_instructions, count_ranges
from .harness.runner import link_harness, link_train_harness
from .ops import registry
from .passes.train import select_trainable
from .targets import get_profile

TOLERANCE = 0.01  # the per-node sum may differ from the shipped build's count by this much
OTHER = "(outside nodes)"


@dataclass
class NodeProfile:
    name: str
    op: str
    sources: list  # the ONNX nodes this compiled node computes (after fusion)
    symbol: str
    macs: int
    insns: int  # per inference
    insns_per_mac: float | None
    share: float  # of the profiled total


@dataclass
class Profile:
    model: str
    target: str
    mode: str  # "functions" (a build with every node in its own function) or "lines" (the shipped code)
    runs: int
    macs: int
    total_insns: int  # per inference, profiling build: nodes + other
    other_insns: int  # outside every node function (run function, harness loop)
    whole_run_insns: int  # per inference, the profiling build, whole-program counter (= total_insns)
    shipped_insns: int | None  # per inference, the shipped build, whole-program counter
    deviation: float | None  # (total - shipped) / shipped
    nodes: list = field(default_factory=list)  # NodeProfile, in graph order
    code: str = ""  # mode lines: how the profiled code compares with the shipped object's
    unit: str = "inference"  # what one count is: an inference, or (profile --train) a training step

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def by_cost(self) -> list[NodeProfile]:
        return sorted(self.nodes, key=lambda n: (-n.insns, n.name))


@dataclass
class Prepared:
    """The linked harnesses and what the report needs from the build."""

    model: Path
    target: str
    mode: str  # "functions" or "lines"
    profile: object  # targets.Profile
    graph: object
    symbols: list  # node function symbol per node
    ranges: list  # [(start, end)] counted by the plugin
    owners: list  # node index of each range
    exe: Path  # profiling build
    shipped_exe: Path | None
    code: str  # mode lines: "identical" or what differs (same sizes, instructions in another order)
    inputs: list
    specs: list
    workdir: object  # a TemporaryDirectory, kept alive with the executables
    train: str | None = None  # the loss of a profiled training step


MODES = ("functions", "lines")


def function_ranges(exe: Path, symbols: list[str]) -> tuple[list, list]:
    """[start, end) of each named function in a linked executable, and the index (in
    `symbols`) each belongs to; a function that is not there (no code) has no range."""
    elf = _elf(exe)
    table = elf.get_section_by_name(".symtab")
    if table is None:
        raise InternalError(f"{exe} has no symbol table: cannot locate the node functions")
    found = {}
    for sym in table.iter_symbols():
        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"]:
            found.setdefault(sym.name, (sym["st_value"], sym["st_value"] + sym["st_size"]))
    owned = [(found[s], i) for i, s in enumerate(symbols) if s in found]
    return [r for r, _ in owned], [i for _, i in owned]


def line_ranges(exe: Path, n_nodes: int) -> tuple[list, list]:
    """Address ranges of the node lines (backends/debuglines.py) in a linked executable's
    .debug_line, merged where adjacent, with the node each belongs to. An instruction at
    line 0 (LLVM's "no single source": merged or moved code) belongs to the node of the
    nearest row before it in its sequence."""
    dwarf = _elf(exe).get_dwarf_info()
    pieces = []
    for cu in dwarf.iter_CUs():
        name = cu.get_top_DIE().attributes.get("DW_AT_name")
        if name is None or name.value.decode(errors="replace") != NODE_LINES_FILE:
            continue
        last = 0
        rows = [e.state for e in dwarf.line_program_for_CU(cu).get_entries() if e.state is not None]
        for row, following in zip(rows, rows[1:]):
            if row.end_sequence:
                last = 0
                continue
            last = row.line or last
            if 1 <= last <= n_nodes and following.address > row.address:
                pieces.append((row.address, following.address, last - 1))
    if not pieces:
        raise InternalError(f"{exe} has no line table for the nodes ({NODE_LINES_FILE})")
    merged = []
    for start, end, owner in sorted(pieces):
        if merged and merged[-1][1] == start and merged[-1][2] == owner:
            merged[-1][1] = end
        else:
            merged.append([start, end, owner])
    return [(a, b) for a, b, _ in merged], [o for _, _, o in merged]


def _elf(path: Path) -> ELFFile:
    return ELFFile(io.BytesIO(Path(path).read_bytes()))


def _text(obj: bytes) -> list:
    return [(s.name, s.data()) for s in ELFFile(io.BytesIO(obj)).iter_sections() if s.name.startswith(".text")]


def prepare(model_path, target: str, name: str = "model", check_shipped: bool = True,
            mode: str = "lines", train: str | None = None) -> Prepared:
    """Compile the profiling build (and the shipped build, for the cross-check), link both.
    mode "functions": every node in a never-inlined function of its own, located by the
    symbol table. mode "lines": the shipped build's own code (checked byte for byte) with
    a line table naming each instruction's node. train (a loss): the training step of a
    `--train LOSS` build instead of an inference (every float initializer trained, SGD, a
    zero target of each output's shape: bench --train's step), its step graph's nodes
    (forward, loss, pullback, updates) by line."""
    if mode not in MODES:
        raise InvalidModelError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if train and mode != "lines":
        raise InvalidModelError("profile --train takes mode lines (the shipped training step's own code)")
    profile = get_profile(target)
    if profile.run_mode != "user":
        raise UnsupportedError(f"target {profile.name} does not run under qemu-user here "
                               f"(run.mode = {profile.run_mode}): no profile")
    model_path = Path(model_path) if model_path else DEFAULT_MODEL
    model = load_model(model_path)
    if train:
        params = select_trainable([t.name for t in model.graph.initializer], None)
        compiled = compile_train_graph(import_model(model, name), params, profile, name, train,
                                       run=import_model(model, name), node_lines=True)
    else:
        compiled = compile_graph(import_model(model, name), profile, name, separate_nodes=mode == "functions",
                                 node_lines=mode == "lines")
    manifest = make_manifest(compiled, profile, name, model_path, {"target": target, "name": name,
                                                                   "profiling": mode, **({"train": train} if train else {})})
    tmp = tempfile.TemporaryDirectory(prefix="edgec-profile-")
    work = Path(tmp.name) / "profiling"
    work.mkdir()
    for kind in ("object", "library", "header", "manifest"):
        file_name, contents = ARTIFACTS[kind]
        (work / file_name(name)).write_bytes(contents(compiled, name, manifest))
    link = (lambda d: link_train_harness(d, name, profile, LEARNING_RATE)) if train else (
        lambda d: link_harness(d, name, profile))
    exe = link(work)
    symbols = node_symbols(f"{name}_train" if train else name, compiled.graph.nodes)
    if mode == "functions":
        ranges, owners = function_ranges(exe, symbols)
    else:
        ranges, owners = line_ranges(exe, len(symbols))
    shipped_exe, code = None, ""
    if check_shipped or mode == "lines":
        shipped = Path(tmp.name) / "shipped"
        res = build(model_path, target, name, shipped, train=train)
        if mode == "lines":
            code = _compare_code(_text(res.paths["object"].read_bytes()), _text(compiled.object))
        shipped_exe = link(shipped)
    feeds = seeded_inputs(model)
    inputs = [feeds[i["name"]] for i in manifest["inputs"]]
    specs = [(o["dtype"], tuple(o["shape"])) for o in manifest["outputs"]]
    if train:  # the step's targets, then its one output: the first and the last loss
        inputs += [np.zeros(t["shape"], t["dtype"]) for t in manifest["train"]["targets"]]
        specs = [("float32", (2,))]
    return Prepared(model_path, profile.name, mode, profile, compiled.graph, symbols, ranges, owners, exe,
                    shipped_exe, code, inputs, specs, tmp, train)


def _compare_code(shipped: list, profiled: list) -> str:
    """The line-table build against the shipped object, section by section: "identical",
    or (same sections and sizes) how many bytes differ. Debug info can make LLVM order a
    few instructions differently (the callee-saved register stores of the prologue on
    cortex-a53); measure() then requires both builds to execute exactly as many
    instructions. Anything more is an error."""
    if shipped == profiled:
        return "identical"
    if [(n, len(d)) for n, d in shipped] != [(n, len(d)) for n, d in profiled]:
        raise InternalError("the line-table build's code differs in size from the shipped build's")
    differ = sum(a != b for (_, x), (_, y) in zip(shipped, profiled) for a, b in zip(x, y))
    return f"same sizes, {differ} of {sum(len(d) for _, d in shipped)} bytes in another order"


def measure(p: Prepared, runs: int = 3) -> Profile:
    """Run the profiling build under the range plugin (and the shipped build under the
    whole-program counter) and attribute one inference's instructions to the nodes."""
    counted = count_ranges(p.exe, p.profile, p.inputs, p.specs, p.ranges, runs=runs)
    per_node = [0] * len(p.graph.nodes)
    for owner, n in zip(p.owners, counted.per_range):
        per_node[owner] += n
    total = counted.per_inference
    nodes = []
    for node, sym, insns in zip(p.graph.nodes, p.symbols, per_node):
        macs = int(registry.get(node.op).macs(node))
        nodes.append(NodeProfile(node.name, node.op, list(node.sources), sym, macs, insns,
                                 insns / macs if macs else None, insns / total if total else 0.0))
    whole = count_instructions(p.exe, p.profile, p.inputs, p.specs, runs=runs).per_inference
    if whole != total:
        raise InternalError(f"the range counts add up to {total:,} instructions, the whole-program counter "
                            f"counts {whole:,} on the same program")
    shipped = deviation = None
    if p.shipped_exe is not None:
        shipped = count_instructions(p.shipped_exe, p.profile, p.inputs, p.specs, runs=runs).per_inference
        deviation = (total - shipped) / shipped if shipped else None
        if p.mode == "lines" and total != shipped:
            raise InternalError(f"the line-table build executes {total:,} instructions, the shipped build "
                                f"{shipped:,}: its code is not the shipped code ({p.code})")
    return Profile(p.model.name, p.target, p.mode, runs, sum(n.macs for n in nodes), total, counted.other,
                   whole, shipped, deviation, nodes, p.code, "training step" if p.train else "inference")


def profile_model(model_path, target: str, runs: int = 3, check_shipped: bool = True,
                  mode: str = "lines", train: str | None = None) -> Profile:
    return measure(prepare(model_path, target, check_shipped=check_shipped, mode=mode, train=train), runs)


# -- reports ------------------------------------------------------------------------------

def _ratio(n: NodeProfile | dict) -> str:
    r = n["insns_per_mac"] if isinstance(n, dict) else n.insns_per_mac
    return f"{r:.2f}" if r is not None else "-"


def _sources(n: NodeProfile) -> str:
    return "+".join(n.sources) if n.sources else "(inserted by the compiler)"


def table(p: Profile, width: int = 40) -> str:
    """The terminal table, most expensive node first."""
    lines = [f"{p.model} on {p.target} ({p.mode}): {p.total_insns:,} instructions per {p.unit}, {p.macs:,} MACs"
             f" ({p.total_insns / p.macs:.2f} insns/MAC)" if p.macs else
             f"{p.model} on {p.target} ({p.mode}): {p.total_insns:,} instructions per {p.unit}", "",
             f"{'node':{width}} {'op':18} {'MACs':>11} {'insns':>12} {'insns/MAC':>9} {'share':>6}  fused ONNX nodes"]
    for n in p.by_cost():
        fused = _sources(n) if n.sources != [n.name] else ""
        lines.append(f"{_clip(n.name, width):{width}} {n.op[:18]:18} {n.macs:11,d} {n.insns:12,d} "
                     f"{_ratio(n):>9} {100 * n.share:5.1f}%  {fused}")
    share = p.other_insns / p.total_insns if p.total_insns else 0.0
    lines.append(f"{OTHER:{width}} {'':18} {'':>11} {p.other_insns:12,d} {'':>9} {100 * share:5.1f}%")
    lines.append(f"{'total':{width}} {'':18} {p.macs:11,d} {p.total_insns:12,d} "
                 f"{(f'{p.total_insns / p.macs:.2f}' if p.macs else '-'):>9} 100.0%")
    lines += ["", f"whole-program count of the profiling build: {p.whole_run_insns:,}"
                  f"{' (= the sum)' if p.whole_run_insns == p.total_insns else ' (DIFFERS from the sum)'}"]
    if p.shipped_insns is not None:
        why = (f"the shipped code ({p.code})" if p.mode == "lines" else
               "calls between nodes, and the shipped build compiles its nodes inlined into one function")
        lines += [f"whole-program count of the shipped build:   {p.shipped_insns:,} (the sum is "
                  f"{100 * p.deviation:+.2f}%; mode {p.mode}: {why})"]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def html_page(p: Profile) -> str:
    """A self-contained page (no scripts, no external files): a bar per node, by cost."""
    rows = p.by_cost()
    top = max([n.insns for n in rows] + [p.other_insns, 1])

    def row(name, op, sources, macs, insns, ratio, share, cls):
        return (f'<tr><td>{html.escape(name)}</td><td>{html.escape(op)}</td><td class="s">{html.escape(sources)}</td>'
                f'<td class="n">{macs}</td><td class="n">{insns:,}</td><td class="n">{ratio}</td>'
                f'<td class="n">{100 * share:.1f}%</td><td class="c"><div class="bar {cls}" '
                f'style="width:{100 * insns / top:.2f}%"></div></td></tr>')

    body = "\n".join(row(n.name, n.op, _sources(n), f"{n.macs:,}", n.insns, _ratio(n), n.share, "node")
                     for n in rows)
    other_share = p.other_insns / p.total_insns if p.total_insns else 0.0
    body += "\n" + row(OTHER, "", "run function, harness", "", p.other_insns, "-", other_share, "other")
    check = ""
    if p.shipped_insns is not None:
        check = (f"<p>Shipped build, whole-program count: {p.shipped_insns:,} instructions per {html.escape(p.unit)} "
                 f"(per-node sum {100 * p.deviation:+.2f}%).</p>")
    per_mac = f" ({p.total_insns / p.macs:.2f} per MAC)" if p.macs else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(p.model)} on {html.escape(p.target)}: instruction profile</title>
<style>body{{font:14px sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}.n{{text-align:right}}
.s{{font-size:12px;color:#555;max-width:28em}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}
.c{{width:35%;min-width:12em}}.bar{{height:12px;min-width:1px}}.node{{background:#48c}}.other{{background:#aaa}}</style>
</head><body>
<h1>{html.escape(p.model)} on {html.escape(p.target)}</h1>
<p>{p.total_insns:,} guest instructions per {html.escape(p.unit)}{per_mac}, {p.macs:,} MACs; {len(p.nodes)} nodes after fusion,
counted under QEMU ({p.runs} runs minus 1); mode {html.escape(p.mode)}.</p>
{check}
<table id="profile"><tr><th>node</th><th>op</th><th>fused ONNX nodes</th><th>MACs</th><th>insns</th>
<th>insns/MAC</th><th>share</th><th>chart</th></tr>
{body}
</table>
</body></html>
"""


# -- diff ---------------------------------------------------------------------------------

PROFILE_KEYS = ("model", "target", "total_insns", "other_insns", "nodes")


def load_json(path) -> dict:
    """A profile written by --json; anything else is a one-line error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidModelError(f"--diff: '{path}' not found") from None
    except IsADirectoryError:
        raise InvalidModelError(f"--diff: '{path}' is a directory") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelError(f"--diff: '{path}' is not JSON: {e}") from None
    if (not isinstance(data, dict) or any(k not in data for k in PROFILE_KEYS)
            or not isinstance(data["nodes"], list)
            or not all(isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("insns"), int)
                       for n in data["nodes"])):
        raise InvalidModelError(f"--diff: '{path}' is not a profile written by `profile --json` "
                                f"(needs {', '.join(PROFILE_KEYS)} and nodes with name and insns)")
    return data


def diff(old: dict, new: dict) -> str:
    """Per node (matched by name), largest change first; then the totals."""
    a = {n["name"]: n for n in old["nodes"]}
    b = {n["name"]: n for n in new["nodes"]}
    names = list(a) + [n for n in b if n not in a]

    def pct(o, n):
        return f"{100 * (n - o) / o:+7.1f}%" if o else "      - "

    changes = sorted(names, key=lambda n: (-abs(b.get(n, {}).get("insns", 0) - a.get(n, {}).get("insns", 0)), n))
    lines = [f"{old['model']} on {old['target']} ({old.get('mode', '?')})  ->  "
             f"{new['model']} on {new['target']} ({new.get('mode', '?')})", "",
             f"{'change':>13} {'':8} {'old':>12} {'new':>12} {'old/MAC':>7} {'new/MAC':>7}  node"]
    for n in changes:
        o, w = a.get(n, {}).get("insns", 0), b.get(n, {}).get("insns", 0)
        status = " (new)" if n not in a else " (gone)" if n not in b else ""
        op = (b.get(n) or a.get(n)).get("op", "")
        lines.append(f"{w - o:+13,d} {pct(o, w)} {o:12,d} {w:12,d} {_ratio(a[n]) if n in a else '':>7} "
                     f"{_ratio(b[n]) if n in b else '':>7}  {n} ({op}){status}")
    o, w = old["other_insns"], new["other_insns"]
    lines.append(f"{w - o:+13,d} {pct(o, w)} {o:12,d} {w:12,d} {'':>7} {'':>7}  {OTHER}")
    o, w = old["total_insns"], new["total_insns"]
    ratio = [f"{d['total_insns'] / d['macs']:.2f}" if d.get("macs") else "-" for d in (old, new)]
    lines.append(f"{w - o:+13,d} {pct(o, w)} {o:12,d} {w:12,d} {ratio[0]:>7} {ratio[1]:>7}  [total]")
    return "\n".join(lines)
