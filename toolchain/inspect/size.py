"""What a build costs on the device, read from the artifacts: bytes per section, the
largest symbols, flash and RAM totals, stack per entry point; as a table, as JSON, as a
self-contained HTML bar chart; and a symbol-by-symbol diff of two builds.

flash = text + read-only data + initialized data (what is stored)
RAM   = data + bss + the arena + the worst-case stack of the entry point
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BudgetError, InvalidModelError
from ..targets import get_profile
from .elf import check_library, check_self_contained, read_object


@dataclass
class SizeReport:
    name: str
    target: str
    sections: dict  # name -> bytes (allocated sections)
    symbols: list   # [{"name", "size", "section"}], largest first
    undefined: list
    code_bytes: int
    weight_bytes: int
    arena_bytes: int
    stack_bytes: dict  # entry symbol -> bytes
    flash_bytes: int
    ram_bytes: int
    models: dict = None  # a library of several models: name -> {"arena", "stack", "weights"} bytes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _kind(section: str, flash=()) -> str:
    """text, rodata, data or bss by the section's name; a section in `flash` (a build's
    --weights-section) is read-only data whatever its name says."""
    if section in flash:
        return "rodata"
    if section.startswith(".text"):
        return "text"
    if section.startswith((".data", ".sdata")):
        return "data"
    if section.startswith((".bss", ".sbss", ".tbss")):
        return "bss"
    return "rodata"  # .rodata*, .eh_frame, ... (read-only, allocated)


def totals(sections: dict, flash=()) -> dict:
    """Bytes per kind (_kind); flash: sections known to be read-only data (the weights')."""
    out = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for name, size in sections.items():
        out[_kind(name, flash)] += size
    return out


def size_report(build_dir: Path, name: str) -> SizeReport:
    """From <name>.o (sections, symbols) and <name>.json (arena, stack, weights)."""
    build_dir = Path(build_dir)
    obj, manifest = build_dir / f"{name}.o", build_dir / f"{name}.json"
    for p in (obj, manifest):
        if not p.is_file():
            raise InvalidModelError(f"{p} not found: build first (invoke build --target T --name {name})")
    info = read_object(obj.read_bytes())
    man = json.loads(manifest.read_text())
    profile = get_profile(man["target"]["name"])
    models = man.get("models")  # a library of several models (toolchain/library.py)
    prefix = tuple(models) if models else name
    check_self_contained(info, profile, prefix)
    library = build_dir / f"lib{name}.a"
    if library.is_file():
        check_library(library.read_bytes(), profile, prefix)
    t = totals(info.sections, flash=[m["weights_section"] for m in (models or {"": man}).values()
                                     if m.get("weights_section")])
    stack = man.get("stack_bytes", {})
    arena = man["shared_arena"]["size"] if models else man["arena"]["size"]
    per_model = {n: {"arena": m["arena"]["size"], "stack": max(m["stack_bytes"].values(), default=0),
                     "weights": m["weight_bytes"]} for n, m in models.items()} if models else None
    return SizeReport(
        name=name, target=man["target"]["name"], sections=dict(sorted(info.sections.items())), symbols=info.by_size(),
        undefined=sorted(info.undefined), code_bytes=t["text"],
        weight_bytes=sum(m["weights"] for m in per_model.values()) if models else man["weight_bytes"],
        arena_bytes=arena, stack_bytes=stack, flash_bytes=t["text"] + t["rodata"] + t["data"],
        ram_bytes=t["data"] + t["bss"] + arena + max(stack.values(), default=0), models=per_model)


def table(r: SizeReport, top: int = 10) -> str:
    lines = [f"{r.name} for {r.target}", "", f"{'section':24} {'bytes':>10}"]
    lines += [f"{s:24} {n:10,d}" for s, n in r.sections.items()]
    lines += ["", f"{'flash (text+rodata+data)':24} {r.flash_bytes:10,d}",
              f"  {'code':22} {r.code_bytes:10,d}", f"  {'weights':22} {r.weight_bytes:10,d}",
              f"{'RAM (data+bss+arena+stack)':24} {r.ram_bytes:10,d}", f"  {'arena':22} {r.arena_bytes:10,d}"]
    lines += [f"  {'stack ' + e:22} {n:10,d}" for e, n in r.stack_bytes.items()]
    if r.models:
        lines += ["", f"{'model':16} {'arena':>10} {'stack':>8} {'weights':>10}   (the arena above is shared)"]
        lines += [f"{n:16} {m['arena']:10,d} {m['stack']:8,d} {m['weights']:10,d}" for n, m in r.models.items()]
    lines += ["", "largest symbols:", f"{'symbol':44} {'section':16} {'bytes':>10}"]
    lines += [f"{s['name'][:44]:44} {s['section'][:16]:16} {s['size']:10,d}" for s in r.symbols[:top]]
    lines += ["", f"undefined symbols: {', '.join(r.undefined) if r.undefined else 'none'}"]
    return "\n".join(lines)


def html_chart(r: SizeReport, top: int = 25) -> str:
    """A self-contained page: flash/RAM totals and a bar per largest symbol."""
    biggest = max((s["size"] for s in r.symbols[:top]), default=1) or 1
    rows = "\n".join(
        f'<tr><td>{html.escape(s["name"])}</td><td>{html.escape(s["section"])}</td><td class="n">{s["size"]:,}</td>'
        f'<td><div class="bar {_kind(s["section"])}" style="width:{100 * s["size"] / biggest:.1f}%"></div></td></tr>'
        for s in r.symbols[:top])
    return f"""<!doctype html><meta charset="utf-8"><title>{html.escape(r.name)} size</title>
<style>body{{font:14px sans-serif;margin:2em}}td{{padding:2px 8px}}.n{{text-align:right}}
.bar{{height:12px;min-width:1px}}.text{{background:#4a7}}.rodata{{background:#48c}}.data,.bss{{background:#c84}}
table{{border-collapse:collapse}}td:last-child{{width:50%}}</style>
<h1>{html.escape(r.name)} on {html.escape(r.target)}</h1>
<p>flash {r.flash_bytes:,} bytes (code {r.code_bytes:,}, weights {r.weight_bytes:,}) &middot;
RAM {r.ram_bytes:,} bytes (arena {r.arena_bytes:,}, stack {max(r.stack_bytes.values(), default=0):,})</p>
<table><tr><th>symbol</th><th>section</th><th>bytes</th><th></th></tr>
{rows}
</table>
"""


def diff(old: SizeReport, new: SizeReport) -> str:
    """Symbol by symbol, largest change first, then the totals (as bloaty's diff mode)."""
    a = {s["name"]: s["size"] for s in old.symbols}
    b = {s["name"]: s["size"] for s in new.symbols}
    changes = sorted(((b.get(n, 0) - a.get(n, 0), n) for n in a.keys() | b.keys()
                      if a.get(n, 0) != b.get(n, 0)), key=lambda c: (-abs(c[0]), c[1]))
    lines = [f"{'change':>10}  {'old':>10} {'new':>10}  symbol"]
    for delta, n in changes:
        status = " (new)" if n not in a else " (gone)" if n not in b else ""
        lines.append(f"{delta:+10,d}  {a.get(n, 0):10,d} {b.get(n, 0):10,d}  {n}{status}")
    for what in ("flash_bytes", "ram_bytes", "code_bytes", "weight_bytes", "arena_bytes"):
        o, n = getattr(old, what), getattr(new, what)
        lines.append(f"{n - o:+10,d}  {o:10,d} {n:10,d}  [{what.replace('_bytes', '')}]")
    return "\n".join(lines)


def check_budgets(report: dict, budgets: dict, top: int = 5, origin: dict | None = None):
    """report: {"flash_bytes", "ram_bytes", "symbols", "arena_bytes", "stack_bytes"}; budgets:
    {"flash_bytes": n, "ram_bytes": n} (absent = unlimited); origin: budget key -> where that
    budget comes from (said in the message). Raises naming the budget."""
    for key, what in (("flash_bytes", "flash"), ("ram_bytes", "RAM")):
        limit = budgets.get(key)
        if limit is None or report[key] <= limit:
            continue
        if key == "flash_bytes":
            contrib = [f"{s['name']} {s['size']:,} B" for s in report["symbols"][:top]]
        else:
            contrib = [f"arena {report['arena_bytes']:,} B"] + [f"stack of {e} {n:,} B"
                                                                 for e, n in report["stack_bytes"].items()]
        source = f" ({origin[key]})" if origin and key in origin else ""
        raise BudgetError(f"{what} budget exceeded: {report[key]:,} bytes > {what} budget {limit:,} bytes{source} "
                           f"(by {report[key] - limit:,}); largest contributors: {', '.join(contrib)}")
