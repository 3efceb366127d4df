"""The compile cache: a build's artifacts keyed by everything that determines their bytes.

Why: compiling a model takes seconds, and the same model is built again and again (the
JIT on every process start, `invoke build` after an unrelated edit, CI). The compiler is
deterministic, so the bytes `build` writes are a function of

    model content, bound input shapes/dtypes, target profile, options (name, emit, dims,
    budgets), compiler version and sources, llvmlite and LLVM versions

and nothing else. The key is a sha256 over exactly those (as JSON); paths and times are
left out on purpose, so the same model copied elsewhere, or built tomorrow, hits.

Two levels: an in-process dict (what the JIT hits on its warm path) and entries on disk in
$EDGEC_CACHE_DIR (default $XDG_CACHE_HOME/edgec or ~/.cache/edgec); EDGEC_CACHE=0 disables
both. An entry is one file holding every artifact `build` wrote plus its metadata and a
sha256 of the whole, written to a temporary and renamed into place: readers see a whole
entry or none, two processes racing on one key each rename a complete (identical) entry, a
corrupt or truncated entry fails its checksum and is discarded with a warning, never used.
The directory is bounded (EDGEC_CACHE_MAX_BYTES, default 512 MiB): least recently used
entries (mtime, touched on every hit) are evicted after each store.

`python -m toolchain.cache --stats | --clear`. EDGEC_LOG=compiles prints each compilation's
key, what differs from earlier variants of the same model, and time per stage.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from .frontend.onnx_import import utf8_names

MAGIC = b"EDGEC-CACHE v1\n"
FORMAT_DIR = "v1"
DEFAULT_MAX_BYTES = 512 << 20
MEMORY_ENTRIES = 64

_memory: OrderedDict[str, Entry] = OrderedDict()
# bytes this process believes a cache directory holds (its last full scan plus its own writes
# since): a put scans the directory (one stat per entry) only when that estimate would pass the
# bound, or every SCAN_EVERY puts (other processes write too), not every time
_estimate: dict[Path, tuple[int, int]] = {}
SCAN_EVERY = 64
events: deque = deque(maxlen=256)  # one dict per compile or hit in this process (explain() reads these)
compile_count = 0  # compilations actually run in this process (misses and uncached builds)


class CorruptEntry(Exception):
    pass


@dataclass
class Entry:
    """One cached build: metadata (key fields, artifact names and kinds) and the bytes."""
    key: str
    meta: dict
    files: dict  # artifact file name -> bytes, in the order build wrote them
    source: str = "memory"  # where this lookup found it: memory | disk | compiled


# ---------------------------------------------------------------- configuration

def enabled() -> bool:
    return os.environ.get("EDGEC_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("EDGEC_CACHE_DIR"):
        return Path(os.environ["EDGEC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgec"


def max_bytes() -> int:
    try:
        return int(os.environ.get("EDGEC_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


def log_compiles() -> bool:
    return "compiles" in os.environ.get("EDGEC_LOG", "").replace(" ", "").split(",")


def log(line: str):
    print(f"edgec: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the key

_source_digest: str | None = None


def compiler_source_digest() -> str:
    """sha256 of the compiler's own Python sources. The version string alone does not change
    on every commit, and a stale hit after editing a lowering would be a silent wrong build."""
    global _source_digest
    if _source_digest is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
        _source_digest = h.hexdigest()
    return _source_digest


def _llvm_versions() -> tuple[str, str]:
    import llvmlite
    import llvmlite.binding as llvm
    return llvmlite.__version__, ".".join(map(str, llvm.llvm_version_info))


def model_digest(data: bytes, proto=None, base_dir: Path | None = None) -> str:
    """sha256 of the model's bytes, plus those of any external-data files it names (their
    names relative to the model, never absolute paths)."""
    h = hashlib.sha256(data)
    if proto is not None and base_dir is not None:
        from onnx import TensorProto
        locations = sorted({e.value for t in proto.graph.initializer
                            if t.data_location == TensorProto.EXTERNAL
                            for e in t.external_data if e.key == "location"})
        for loc in locations:
            h.update(b"\0external:" + loc.encode() + b"\0")
            h.update((base_dir / loc).read_bytes())
    return h.hexdigest()


def bound_inputs(proto, dims: dict, bound=()) -> list[dict]:
    """The graph inputs as the compiler will see them: dim_params replaced by dims, the ones
    bound to values (--bind) left out."""
    from onnx import helper
    inits = {t.name for t in proto.graph.initializer} | set(bound)
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except Exception:  # noqa: BLE001  (an unsupported type: the compiler reports it)
            dtype = f"onnx:{tt.elem_type}"
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, d.dim_param or "?")
                 for d in tt.shape.dim]
        out.append({"name": vi.name, "dtype": dtype, "shape": shape})
    return out


def profile_digest(profile) -> str:
    """The profile's TOML file bytes plus the loaded profile itself (so a profile built in
    code, not read from a file, still keys by what it says)."""
    from .targets import TARGETS_DIR
    h = hashlib.sha256(repr(profile).encode())
    candidates = [TARGETS_DIR / f"{profile.name}.toml", *sorted(TARGETS_DIR.glob("*.toml"))]
    for path in candidates:
        if path.is_file():
            text = path.read_bytes()
            if f'name = "{profile.name}"'.encode() in text:
                h.update(text)
                break
    return h.hexdigest()


def key_fields(model_sha256: str, inputs: list[dict], profile, name: str, emit: str = "object",
               dims: dict | None = None, budgets: dict | None = None, model_file: str = "",
               weights: str = "internal", bind: dict | None = None, weights_section: str | None = None,
               parallel: int | None = None) -> dict:
    """bind: binding.key_of(the bound values) (dtype, shape and sha256 of each).
    weights_section: a --weights-section other than the default (None). parallel: --parallel N."""
    llvmlite_v, llvm_v = _llvm_versions()
    from .version import __version__
    return {
        "model_sha256": model_sha256,
        # the file's base name (not its directory): the manifest and header name it
        "model_file": model_file,
        "inputs": inputs,
        "target": profile.name,
        "profile_sha256": profile_digest(profile),
        "options": {"name": name, "emit": emit, "dims": dict(sorted((dims or {}).items())),
                    "budgets": {k: v for k, v in sorted((budgets or {}).items()) if v is not None},
                    **({"weights": weights} if weights != "internal" else {}),
                    **({"bind": bind} if bind else {}),
                    **({"weights_section": weights_section} if weights_section else {}),
                    **({"parallel": parallel} if parallel else {})},
        "compiler": __version__,
        "compiler_source_sha256": compiler_source_digest(),
        "llvmlite": llvmlite_v,
        "llvm": llvm_v,
    }


def make_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe_differences(fields: dict, cached: dict) -> list[str]:
    """What makes a key differ from a cached variant's, one phrase per field."""
    out = []
    mine = {i["name"]: i for i in fields["inputs"]}
    theirs = {i["name"]: i for i in cached.get("inputs", [])}
    if list(mine) != list(theirs):
        out.append(f"inputs {list(mine)} != cached {list(theirs)}")
    for n in mine.keys() & theirs.keys():
        a, b = mine[n], theirs[n]
        if a["shape"] != b["shape"]:
            out.append(f"input '{n}' shape ({','.join(map(str, a['shape']))}) != cached "
                       f"({','.join(map(str, b['shape']))})")
        if a["dtype"] != b["dtype"]:
            out.append(f"input '{n}' dtype {a['dtype']} != cached {b['dtype']}")
    for k in ("model_sha256", "target", "profile_sha256", "compiler", "compiler_source_sha256",
              "llvmlite", "llvm"):
        if fields.get(k) != cached.get(k):
            a, b = fields.get(k), cached.get(k)
            if k.endswith("sha256"):
                a, b = str(a)[:12], str(b)[:12]
            out.append(f"{k} {a} != cached {b}")
    for k, v in fields["options"].items():
        if v != cached.get("options", {}).get(k):
            out.append(f"option {k} {v!r} != cached {cached.get('options', {}).get(k)!r}")
    return out


# ---------------------------------------------------------------- entries on disk

def entry_path(key: str, model_sha256: str) -> Path:
    """Named by model hash first so the variants of one model are one glob away (explain)."""
    return cache_dir() / FORMAT_DIR / f"{model_sha256[:16]}-{key}.entry"


def encode(key: str, meta: dict, files: dict) -> bytes:
    meta = {**meta, "key": key,
            "files": [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(),
                       "kind": meta.get("kinds", {}).get(n, "")} for n, b in files.items()]}
    mj = json.dumps(meta, sort_keys=True).encode()
    body = MAGIC + struct.pack(">Q", len(mj)) + mj + b"".join(files.values())
    return body + hashlib.sha256(body).digest()


def decode(blob: bytes) -> tuple[dict, dict]:
    if len(blob) < len(MAGIC) + 8 + 32 or not blob.startswith(MAGIC):
        raise CorruptEntry("truncated or not an edgec cache entry")
    body, digest = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    (n,) = struct.unpack_from(">Q", body, len(MAGIC))
    at = len(MAGIC) + 8
    meta = json.loads(body[at:at + n])
    at += n
    files = {}
    for f in meta["files"]:
        files[f["name"]] = body[at:at + f["size"]]
        at += f["size"]
    if at != len(body):
        raise CorruptEntry("sizes do not add up")
    return meta, files


def _read_meta(path: Path) -> dict | None:
    """Just the metadata (for explain): no checksum, the entry is not used."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 8:
                return None
            (n,) = struct.unpack_from(">Q", head, len(MAGIC))
            return json.loads(f.read(n))
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def get(key: str, model_sha256: str) -> Entry | None:
    """Memory first, then disk. A disk hit is verified (checksum, key) before use, touched
    (LRU) and kept in memory. A bad entry is reported once and removed."""
    if not enabled():
        return None
    if key in _memory:
        _memory.move_to_end(key)
        e = _memory[key]
        return Entry(e.key, e.meta, e.files, "memory")
    path = entry_path(key, model_sha256)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        meta, files = decode(blob)
        if meta.get("key") != key:
            raise CorruptEntry(f"holds key {str(meta.get('key'))[:16]}")
    except (CorruptEntry, ValueError, KeyError, TypeError) as e:
        log(f"warning: cache entry {path} is corrupt ({e}); discarded, recompiling")
        try:
            path.unlink()
        except OSError:
            pass
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    entry = Entry(key, meta, files, "disk")
    _remember(entry)
    return entry


def put(key: str, meta: dict, files: dict) -> Entry:
    entry = Entry(key, meta, dict(files), "compiled")
    if not enabled():
        return entry
    _remember(entry)
    path = entry_path(key, meta["fields"]["model_sha256"])
    try:
        data = encode(key, meta, files)
        _atomic_write(path, data)
        _account(path, len(data))
    except OSError as e:  # a full or read-only disk costs the cache, not the build
        log(f"warning: cannot write cache entry {path}: {e}")
    return entry


def _remember(entry: Entry):
    _memory[entry.key] = Entry(entry.key, entry.meta, entry.files, "memory")
    _memory.move_to_end(entry.key)
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)


def _entries() -> list[tuple[Path, os.stat_result]]:
    d = cache_dir() / FORMAT_DIR
    out = []
    if d.is_dir():
        for p in d.iterdir():
            try:
                out.append((p, p.stat()))
            except OSError:  # removed by another process meanwhile
                pass
    return out


def _account(path: Path, size: int):
    d, limit = cache_dir(), max_bytes()
    known, puts = _estimate.get(d, (None, 0))
    if known is None or known + size > limit or puts >= SCAN_EVERY:
        _estimate[d] = (evict(keep=path, limit=limit), 0)
    else:
        _estimate[d] = (known + size, puts + 1)


def evict(keep: Path | None = None, limit: int | None = None) -> int:
    """Oldest-used first until the entries fit the bound; temporaries a crashed writer left
    (over an hour old) go too. Returns the bytes left. Another process evicting at the same
    time is harmless: a file already gone is skipped, and a reader holding it open keeps its
    bytes."""
    limit = max_bytes() if limit is None else limit
    now = time.time()
    entries = []
    for p, st in _entries():
        if p.name.endswith(".tmp"):
            if now - st.st_mtime > 3600:
                _unlink(p)
        elif p.name.endswith(".entry"):
            entries.append((st.st_mtime, p, st.st_size))
    total = sum(s for _, _, s in entries)
    for _, p, size in sorted(entries):
        if total <= limit:
            break
        if p == keep:
            continue
        if _unlink(p):
            total -= size
    return total


def _unlink(p: Path) -> bool:
    try:
        p.unlink()
        return True
    except OSError:
        return False


def variants(model_sha256: str, exclude: str) -> list[dict]:
    """Key fields of the other cached builds of the same model (memory, then disk, newest first)."""
    seen, out = {exclude}, []
    for e in reversed(_memory.values()):
        if e.meta["fields"]["model_sha256"] == model_sha256 and e.key not in seen:
            seen.add(e.key)
            out.append(e.meta["fields"])
    if enabled():
        d = cache_dir() / FORMAT_DIR
        paths = sorted(d.glob(f"{model_sha256[:16]}-*.entry"), key=_mtime, reverse=True) if d.is_dir() else []
        for p in paths:
            meta = _read_meta(p)
            if meta and meta.get("key") not in seen and meta.get("fields", {}).get("model_sha256") == model_sha256:
                seen.add(meta["key"])
                out.append(meta["fields"])
    return out


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def closest_variant(fields: dict, key: str) -> tuple[str, list[str]] | None:
    """(key of the most similar earlier variant, what differs), or None for a new model."""
    best = None
    for other in variants(fields["model_sha256"], key):
        diffs = describe_differences(fields, other)
        if best is None or len(diffs) < len(best[1]):
            best = (make_key(other), diffs)
    return best


def stats() -> dict:
    entries = [(p, st) for p, st in _entries() if p.name.endswith(".entry")]
    return {"dir": str(cache_dir()), "enabled": enabled(), "entries": len(entries),
            "bytes": sum(st.st_size for _, st in entries), "max_bytes": max_bytes(),
            "memory_entries": len(_memory), "compiles_this_process": compile_count}


def clear() -> int:
    n = 0
    for p, _ in _entries():
        n += _unlink(p)
    _memory.clear()
    _estimate.pop(cache_dir(), None)
    return n


# ---------------------------------------------------------------- the hook in compiler.build

@dataclass
class BuildHook:
    """What compiler.build asks the cache: restore() before compiling, store() after."""
    key: str
    fields: dict
    model_name: str  # the model file's base name (the manifest's "model")
    name: str
    times: dict = field(default_factory=dict)
    started: float = 0.0

    @classmethod
    def open(cls, model_path, profile, name, dims, emit, budgets, weights="internal",
             bind: dict | None = None, weights_section: str | None = None,
             parallel: int | None = None) -> BuildHook | None:
        """None when the model cannot even be read: build then reports that itself."""
        t0 = time.perf_counter()
        try:
            import onnx
            path = Path(model_path)
            data = path.read_bytes()
            proto = onnx.ModelProto.FromString(data)
            utf8_names(proto)  # names as text, as the importer sees them
            digest = model_digest(data, proto, path.parent)
            fields = key_fields(digest, bound_inputs(proto, dims or {}, bind or ()), profile, name, emit, dims,
                                budgets, path.name, weights, bind, weights_section, parallel)
            key = make_key(fields)
        except Exception:  # noqa: BLE001
            return None
        hook = cls(key, fields, path.name, name)
        hook.times["load+key"] = time.perf_counter() - t0
        return hook

    def lookup(self) -> Entry | None:
        t0 = time.perf_counter()
        entry = get(self.key, self.fields["model_sha256"])
        self.times["lookup"] = time.perf_counter() - t0
        return entry

    def restore(self, out: Path):
        """On a hit: the entry's files written to out (all or none); returns ({kind: path},
        manifest). On a miss: None, and the clock starts."""
        entry = self.lookup()
        if entry is None:
            self.started = time.perf_counter()
            return None
        t0 = time.perf_counter()
        paths = write_files(out, entry.files, self.name)
        self.times["write"] = time.perf_counter() - t0
        self.record(entry.source)
        kinds = entry.meta["kinds"]
        manifest = json.loads(entry.files[f"{self.name}.json"])
        return {kinds[n]: p for n, p in paths.items()}, manifest

    def store(self, result):
        """After a compile: every file build wrote, read back, goes into the cache."""
        global compile_count
        compile_count += 1
        self.times["compile+emit"] = time.perf_counter() - self.started
        t0 = time.perf_counter()
        files = {Path(p).name: Path(p).read_bytes() for p in result.paths.values()}
        meta = {"fields": self.fields, "model_name": self.model_name,
                "kinds": {Path(p).name: k for k, p in result.paths.items()}}
        diff = closest_variant(self.fields, self.key)
        put(self.key, meta, files)
        self.times["cache store"] = time.perf_counter() - t0
        self.record("compiled", diff)
        return result

    def record(self, source: str, diff=None):
        ev = {"key": self.key, "source": source, "fields": self.fields, "model_name": self.model_name,
              "times": dict(self.times), "diff": diff}
        events.append(ev)
        if log_compiles():
            for line in describe_event(ev):
                log(line)


def describe_event(ev: dict) -> list[str]:
    f = ev["fields"]
    what = "compiled" if ev["source"] == "compiled" else f"cache hit ({ev['source']})"
    lines = [f"{what}: key {ev['key'][:16]} model {ev['model_name']} (sha256 {f['model_sha256'][:12]}) "
             f"target {f['target']} name {f['options']['name']} inputs "
             + ", ".join(f"{i['name']}:{i['dtype']}({','.join(map(str, i['shape']))})" for i in f["inputs"])]
    if ev["source"] == "compiled":
        diff = ev.get("diff")
        if diff is None:
            lines.append("  no earlier variant of this model in the cache")
        else:
            lines.append(f"  differs from cached {diff[0][:16]}: " + ("; ".join(diff[1]) or "nothing (evicted or disabled)"))
    lines.append("  times: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in ev["times"].items()))
    return lines


def write_files(out: Path, files: dict, stem: str) -> dict:
    """The entry's artifacts as one set, exactly as build writes its own (emit.replace_outputs)."""
    from .emit import owned_files, replace_outputs

    out = Path(out)
    replace_outputs(out, stem, files, owned_files(stem))
    return {n: out / n for n in files}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m toolchain.cache", description="edgec's compile cache")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--stats", action="store_true", help="entries, bytes and the size bound")
    g.add_argument("--clear", action="store_true", help="remove every entry")
    args = ap.parse_args(argv)
    if args.clear:
        print(f"removed {clear()} files from {cache_dir()}")
    else:
        s = stats()
        print(f"cache dir  {s['dir']} ({'enabled' if s['enabled'] else 'disabled by EDGEC_CACHE'})")
        print(f"entries    {s['entries']}")
        print(f"bytes      {s['bytes']} of {s['max_bytes']} "
              f"({100 * s['bytes'] / max(1, s['max_bytes']):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
