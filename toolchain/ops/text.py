"""Text ops: TfIdfVectorizer over integer token ids (string pools are refused: the compiled
code has no string tensors).

The pool of n-grams is an attribute, so it is known at compile time: grouped by n into
constant tables, and the lowering counts each pool n-gram of each row directly: for every
skip distance d (1 for unigrams, 1 .. max_skip_count + 1 for longer n-grams) and every start s
with s + d * (n - 1) inside the row, a hit when all n tokens match. That counts what onnxruntime's
trie walk counts (each start, distance and size once; unigrams on the first pass only), in
O(rows * pool n-grams * distances * row length * n) compares, with no data-dependent memory
access. The output [rows, max(ngram_indexes) + 1] (or [that] for a 1-D input) has a shape fixed
by the attributes. weights[i] is the weight of the pool's i-th n-gram (the spec, and onnxruntime),
applied at that n-gram's output; onnx's ReferenceEvaluator reads it at output i instead, which
differs when ngram_indexes is not the identity."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel.llvm import LLVM_TYPES
from .base import Op, in_type, invalid, register, unsupported

MODES = ("TF", "IDF", "TFIDF")


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


@register("TfIdfVectorizer")
class TfIdfVectorizer(Op):
    def canonicalize(self, node, opset):
        a = node.attrs
        if a.get("pool_strings"):
            raise unsupported(node, "a pool of strings (pool_strings) is not supported: only integer token ids "
                                    "(pool_int64s)")
        mode = _text(a.get("mode", ""))
        if mode not in MODES:
            raise invalid(node, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        lo, hi = int(a.get("min_gram_length", 0)), int(a.get("max_gram_length", 0))
        skip = int(a.get("max_skip_count", 0))
        if not 1 <= lo <= hi or skip < 0:
            raise invalid(node, f"needs 1 <= min_gram_length ({lo}) <= max_gram_length ({hi}) and "
                                f"max_skip_count ({skip}) >= 0")
        pool = [int(v) for v in a.get("pool_int64s", [])]
        counts = [int(v) for v in a.get("ngram_counts", [])]
        indexes = [int(v) for v in a.get("ngram_indexes", [])]
        weights = [float(v) for v in a.get("weights", [])]
        if not pool or not counts or not indexes:
            raise invalid(node, "needs pool_int64s, ngram_counts and ngram_indexes")
        if counts != sorted(counts) or counts[0] != 0 or counts[-1] > len(pool) or min(indexes) < 0:
            raise invalid(node, f"ngram_counts {counts} must rise from 0 within the pool of {len(pool)}, "
                                f"ngram_indexes be >= 0")
        # the pool's n-grams in order: (n, tokens); the i-th is counted at output ngram_indexes[i]
        grams = []
        for i, start in enumerate(counts):
            n = i + 1
            end = counts[i + 1] if i + 1 < len(counts) else len(pool)
            if (end - start) % n:
                raise invalid(node, f"the {n}-grams of the pool ({end - start} ids from {start}) are not a "
                                    f"whole number of {n}-grams")
            grams += [(n, tuple(pool[j:j + n])) for j in range(start, end, n)]
        if len(indexes) != len(grams):
            raise invalid(node, f"{len(grams)} n-grams in the pool for {len(indexes)} ngram_indexes")
        size = max(indexes) + 1
        if weights and len(weights) != len(grams):
            raise invalid(node, f"{len(weights)} weights for {len(grams)} n-grams in the pool")
        if weights:  # the weight of the i-th n-gram of the pool, moved to its output (as onnxruntime)
            by_output = [0.0] * size
            for w, o in zip(weights, indexes):
                by_output[o] = w
            weights = by_output
        groups = {}  # n -> {tokens: output index}; a repeated n-gram counts at its last index
        for (n, toks), o in zip(grams, indexes):
            if lo <= n <= hi:
                groups.setdefault(n, {})[toks] = o
        node.attrs.clear()
        node.attrs.update(mode=mode, skip=skip, size=size, weights=weights,
                          groups={n: sorted(g.items()) for n, g in sorted(groups.items())})

    def _rows(self, node):
        shape = in_type(node).shape
        if len(shape) == 1:
            return 1, shape[0]
        return shape

    def infer(self, node):
        t = in_type(node)
        if t.dtype not in ("int32", "int64"):
            raise unsupported(node, f"{t.dtype} input is not supported (int32, int64 token ids)")
        if len(t.shape) not in (1, 2):
            raise invalid(node, f"needs an input [C] or [N, C], got shape {list(t.shape)}")
        size = node.attrs["size"]
        return [TensorType("float32", (size,) if len(t.shape) == 1 else (t.shape[0], size))]

    def _distances(self, node, n):
        return range(1, 2) if n == 1 else range(1, node.attrs["skip"] + 2)

    def reference(self, node, x):
        a = node.attrs
        rows, cols = self._rows(node)
        xs = x.reshape(rows, cols).astype(np.int64)
        y = np.zeros((rows, a["size"]), np.float64)
        for n, grams in a["groups"].items():
            for toks, o in grams:
                for d in self._distances(node, n):
                    for s in range(cols - d * (n - 1)):
                        y[:, o] += np.all(xs[:, s:s + d * (n - 1) + 1:d] == np.array(toks), axis=1)
        w = np.array(a["weights"]) if a["weights"] else np.ones(a["size"])
        if a["mode"] == "IDF":
            y = (y > 0) * w
        elif a["mode"] == "TFIDF":
            y = y * w
        return [y.astype(np.float32).reshape(self.infer(node)[0].shape)]

    def macs(self, node):
        rows, cols = self._rows(node)
        return rows * cols * sum(len(g) * n * len(self._distances(node, n)) for n, g in node.attrs["groups"].items())

    def lower(self, k, node, ins, outs):
        a = node.attrs
        rows, cols = self._rows(node)
        x, y = ins[0].reshape((rows, cols)), outs[0].reshape((rows, a["size"]))
        f32, i64 = LLVM_TYPES["float32"], LLVM_TYPES["int64"]
        zero = k.lift(0.0, like=f32)
        with k.loops((rows, a["size"])) as idx:
            y[idx] = zero
        for n, grams in a["groups"].items():
            toks = k.constant(np.array([t for t, _ in grams], np.int64).reshape(len(grams), n))
            where = k.constant(np.array([o for _, o in grams], np.int32))
            with k.loops((rows, len(grams))) as (r, g):
                hits = k.var(zero)
                for d in self._distances(node, n):
                    starts = cols - d * (n - 1)
                    if starts <= 0:
                        continue
                    with k.loop(starts) as s:
                        match = None
                        for j in range(n):
                            eq = k.cast(x[(r, k.lift(s) + d * j)], i64).eq(toks[(g, j)])
                            match = eq if match is None else match & eq
                        hits.value = hits.value + k.select(match, k.lift(1.0, like=f32), zero)
                o = k.cast(where[(g,)], k.lift(0).v.type)
                y[(r, o)] = y[(r, o)] + hits.value
        if a["mode"] == "TF" or (a["mode"] == "TFIDF" and not a["weights"]):
            return
        w = k.constant(np.array(a["weights"] or [1.0] * a["size"], np.float32))
        with k.loops((rows, a["size"])) as (r, i):
            v = y[(r, i)]
            y[(r, i)] = v * w[(i,)] if a["mode"] == "TFIDF" else k.select(v > zero, w[(i,)], zero)
