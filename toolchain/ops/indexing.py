"""Indexing ops: Size, ArgMax/ArgMin, Hardmax, Trilu, GatherElements, ScatterElements (and the
older Scatter), CumSum/CumProd, OneHot, EyeLike.

Indices computed at run time never take a kernel outside its buffers: GatherElements reads
the nearest element for an index out of range, ScatterElements skips such an update, OneHot
writes its off value (the spec's rule). The spec calls the first two invalid input.
"""
from __future__ import annotations

import numpy as np

from ..ir import UNSIGNED_DTYPES, TensorType
from ..kernel.llvm import I64, LLVM_TYPES
from .base import Op, const_input, in_type, invalid, norm_axis, register, unsupported

NUMERIC = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
ANY = NUMERIC + ("bool",)
INDEX = ("int32", "int64")


def _check(node, i, allowed, what):
    t = in_type(node, i)
    if t.dtype == "float16" and allowed is ANY:  # moved as bits (data of GatherElements, GatherND)
        return t
    if t.dtype == "float16":
        raise unsupported(node, "float16 is not supported")
    if t.dtype not in allowed:
        raise invalid(node, f"{what} must be {', '.join(allowed)}, got {t.dtype}")
    return t


def _at(k, i):
    """A loop index (an Expr, or a Python int for a dimension of 1) as an Expr of the index type."""
    return k.lift(i)


def _as_i64(k, x, dtype):
    return k.cast(k.lift(x), I64, unsigned=dtype in UNSIGNED_DTYPES + ("bool",))


def _less(k, a, b, dtype):
    return k.unsigned("<", a, b) if dtype in UNSIGNED_DTYPES else a < b


def _scalar_int(node, i, what):
    v = const_input(node, i, what)
    if v is None:
        return None
    v = np.asarray(v)
    if v.size != 1:
        raise invalid(node, f"{what} must be a scalar, got shape {list(v.shape)}")
    return int(v.reshape(-1)[0])


@register("Size")
class Size(Op):
    shape_only = True

    def infer(self, node):
        return [TensorType("int64", ())]

    def reference(self, node, x=None):
        return [np.array(in_type(node).size, np.int64)]

    def lower(self, k, node, ins, outs):
        outs[0].reshape((1,))[0] = k.lift(ins[0].size, like=I64)


def _argbest(k, x, idx, ax, last, better):
    """(value, position as int64) of the first (or last) best element along axis `ax` at idx."""
    n = x.shape[ax]
    at = list(idx)
    at[ax] = 0
    best, pos = k.var(x[tuple(at)]), k.var(k.lift(0, like=I64))
    if n > 1:
        with k.loop(n, start=1) as j:
            at[ax] = j
            v = x[tuple(at)]
            take = better(v, best.value)
            if last:
                take = take | v.eq(best.value)
            best.value = k.select(take, v, best.value)
            pos.value = k.select(take, _as_i64(k, j, "int64"), pos.value)
    return best.value, pos.value


@register("ArgMax", "ArgMin")
class ArgExtreme(Op):
    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", 0)), rank, node)
        node.attrs.setdefault("keepdims", 1)
        node.attrs.setdefault("select_last_index", 0)
        for key in ("keepdims", "select_last_index"):
            if node.attrs[key] not in (0, 1):
                raise invalid(node, f"{key} must be 0 or 1, got {node.attrs[key]}")

    def _kept(self, node, shape):
        ax = node.attrs["axis"]
        kept = shape[:ax] + (1,) + shape[ax + 1:]
        return kept, kept if node.attrs["keepdims"] else shape[:ax] + shape[ax + 1:]

    def infer(self, node):
        t = _check(node, 0, NUMERIC, "the input")
        return [TensorType("int64", self._kept(node, t.shape)[1])]

    def reference(self, node, x):
        ax = node.attrs["axis"]
        fn = np.argmax if node.op == "ArgMax" else np.argmin
        if node.attrs["select_last_index"]:
            r = x.shape[ax] - 1 - fn(np.flip(x, ax), axis=ax)
        else:
            r = fn(x, axis=ax)
        return [np.asarray(r, np.int64).reshape(self._kept(node, x.shape)[1])]

    def lower(self, k, node, ins, outs):
        x = ins[0]
        kept, _ = self._kept(node, x.shape)
        y = outs[0].reshape(kept)
        dtype = x.dtype
        if node.op == "ArgMax":
            def better(v, b): return _less(k, b, v, dtype)
        else:
            def better(v, b): return _less(k, v, b, dtype)
        with k.loops(kept) as idx:
            y[idx] = _argbest(k, x, idx, node.attrs["axis"], node.attrs["select_last_index"], better)[1]


@register("Hardmax")
class Hardmax(Op):
    """1 at the first maximum along the axis, 0 elsewhere. Before opset 13 the input is read
    as a matrix [prod(dims before axis), prod(dims from axis)] (axis defaults to 1)."""

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", -1 if opset >= 13 else 1)), rank, node)
        node.attrs["flatten"] = int(opset < 13)

    def _shape(self, node, shape):
        if not node.attrs["flatten"]:
            return shape, node.attrs["axis"]
        ax = node.attrs["axis"]
        return (int(np.prod(shape[:ax], dtype=np.int64)), int(np.prod(shape[ax:], dtype=np.int64))), 1

    def infer(self, node):
        return [_check(node, 0, ("float32", "float64"), "the input")]

    def reference(self, node, x):
        shape, ax = self._shape(node, x.shape)
        x2 = x.reshape(shape)
        hot = np.expand_dims(np.argmax(x2, axis=ax), ax) == np.arange(shape[ax]).reshape(
            [-1 if d == ax else 1 for d in range(len(shape))])
        return [hot.astype(x.dtype).reshape(x.shape)]

    def lower(self, k, node, ins, outs):
        shape, ax = self._shape(node, ins[0].shape)
        x, y = ins[0].reshape(shape), outs[0].reshape(shape)
        kept = shape[:ax] + (1,) + shape[ax + 1:]
        with k.loops(kept) as idx:
            pos = _argbest(k, x, idx, ax, False, lambda v, b: b < v)[1]
            at = list(idx)
            with k.loop(shape[ax]) as j:
                at[ax] = j
                one = k.lift(1, like=LLVM_TYPES[y.dtype])
                y[tuple(at)] = k.select(pos.eq(_as_i64(k, j, "int64")), one, k.lift(0, like=one))


@register("Trilu")
class Trilu(Op):
    """k (input 1) is the diagonal: a constant becomes the attribute; one given at run time
    stays an input, read once per run (clamped to the matrix's range, so any int64 works)."""

    def canonicalize(self, node, opset):
        kv = node.inputs[1] if len(node.inputs) > 1 else None
        if kv is not None and not kv.is_const:
            node.attrs["k"] = 0
            node.inputs = node.inputs[:2]
        else:
            node.attrs["k"] = _scalar_int(node, 1, "Trilu k") or 0
            node.inputs = node.inputs[:1]
        upper = node.attrs.setdefault("upper", 1)
        if upper not in (0, 1):
            raise invalid(node, f"upper must be 0 or 1, got {upper}")

    def infer(self, node):
        t = _check(node, 0, ANY, "the input")
        if len(t.shape) < 2:
            raise invalid(node, f"needs rank >= 2, got shape {list(t.shape)}")
        if len(node.inputs) > 1:
            kt = in_type(node, 1)
            if kt.dtype != "int64" or kt.size != 1:
                raise invalid(node, f"k (input 1) must be a single int64, got {kt.dtype} of shape {list(kt.shape)}")
        return [t]

    def reference(self, node, x, kv=None):
        f = np.triu if node.attrs["upper"] else np.tril
        return [f(x, node.attrs["k"] if kv is None else int(np.asarray(kv).reshape(-1)[0]))]

    def lower(self, k, node, ins, outs):
        x, y, off = ins[0], outs[0], node.attrs["k"]
        if len(ins) > 1:  # k at run time, clamped to -rows..cols (same result) so it fits the index type
            rows, cols = x.shape[-2], x.shape[-1]
            off = k.cast(k.min(k.max(ins[1].flat()[0], -rows), cols), k.lift(0).v.type)
        with k.loops(x.shape) as idx:
            d = _at(k, idx[-1]) - _at(k, idx[-2])
            keep = d >= off if node.attrs["upper"] else d <= off
            y[idx] = k.select(keep, x[idx], k.lift(0, like=x[idx]))


def _index_at(k, node, indices, o, n):
    """indices[o] as an in-range position along an axis of n (negative counts from the end)."""
    i = k.cast(indices[o], k.lift(0).v.type)  # the index type (signed: int32/int64 indices)
    return k.select(i < 0, i + n, i)


@register("GatherElements")
class GatherElements(Op):
    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", 0)), len(in_type(node).shape), node)

    def infer(self, node):
        data = _check(node, 0, ANY, "data")
        idx = _check(node, 1, INDEX, "indices")
        if len(idx.shape) != len(data.shape):
            raise invalid(node, f"indices rank {len(idx.shape)} != data rank {len(data.shape)}")
        return [TensorType(data.dtype, idx.shape)]

    def reference(self, node, data, idx):
        ax = node.attrs["axis"]
        idx = idx.astype(np.int64)
        idx = np.where(idx < 0, idx + data.shape[ax], idx)
        return [np.take_along_axis(data, np.clip(idx, 0, data.shape[ax] - 1), axis=ax)]

    def lower(self, k, node, ins, outs):
        data, idx, y = ins[0], ins[1], outs[0]
        ax = node.attrs["axis"]
        n = data.shape[ax]
        with k.loops(y.shape) as o:
            i = _index_at(k, node, idx, o, n)
            i = k.min(k.max(i, 0), n - 1)
            y[o] = data[o[:ax] + (i,) + o[ax + 1:]]


_REDUCE = {"none": (None, lambda k, a, b: b), "add": (np.add, lambda k, a, b: a + b),
           "mul": (np.multiply, lambda k, a, b: a * b), "max": (np.maximum, lambda k, a, b: k.max(b, a)),
           "min": (np.minimum, lambda k, a, b: k.min(b, a))}


@register("ScatterElements", "Scatter")
class ScatterElements(Op):
    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", 0)), len(in_type(node).shape), node)
        red = node.attrs.setdefault("reduction", "none")
        if red not in _REDUCE:
            raise invalid(node, f"reduction must be one of {', '.join(_REDUCE)}, got {red!r}")

    def infer(self, node):
        data = _check(node, 0, ANY, "data")
        idx = _check(node, 1, INDEX, "indices")
        upd = in_type(node, 2)
        if upd.shape != idx.shape or upd.dtype != data.dtype:
            raise invalid(node, f"updates {upd.dtype}{list(upd.shape)} must match indices' shape "
                                f"{list(idx.shape)} and data's type {data.dtype}")
        if len(idx.shape) != len(data.shape):
            raise invalid(node, f"indices rank {len(idx.shape)} != data rank {len(data.shape)}")
        if data.dtype in UNSIGNED_DTYPES and node.attrs["reduction"] in ("max", "min"):
            raise unsupported(node, f"max/min reduction of {data.dtype} is not supported")
        return [data]

    def reference(self, node, data, idx, upd):
        ax, fn = node.attrs["axis"], _REDUCE[node.attrs["reduction"]][0]
        out = data.copy()
        n = data.shape[ax]
        for o in np.ndindex(*idx.shape):
            i = int(idx[o]) + (n if idx[o] < 0 else 0)
            if 0 <= i < n:
                at = o[:ax] + (i,) + o[ax + 1:]
                out[at] = upd[o] if fn is None else fn(out[at], upd[o])
        return [out]

    def lower(self, k, node, ins, outs):
        data, idx, upd, y = ins[0], ins[1], ins[2], outs[0]
        ax = node.attrs["axis"]
        n = data.shape[ax]
        combine = _REDUCE[node.attrs["reduction"]][1]
        with k.loops(y.shape) as o:
            y[o] = data[o]
        with k.loops(idx.shape) as o:
            i = _index_at(k, node, idx, o, n)
            with k.if_((i >= 0) & (i < n)):
                at = o[:ax] + (i,) + o[ax + 1:]
                y[at] = combine(k, y[at], upd[o])


@register("CumSum", "CumProd")
class CumSum(Op):
    """Running sums (CumSum) or products (CumProd, opset 26) along a constant axis; exclusive:
    each element leaves itself out (the first gets 0 or 1), reverse: from the end."""

    def canonicalize(self, node, opset):
        ax = _scalar_int(node, 1, f"{node.op} axis")
        if ax is None:
            raise invalid(node, "needs the axis input")
        node.attrs["axis"] = norm_axis(ax, len(in_type(node).shape), node)
        node.inputs = node.inputs[:1]
        for key in ("exclusive", "reverse"):
            v = node.attrs.setdefault(key, 0)
            if v not in (0, 1):
                raise invalid(node, f"{key} must be 0 or 1, got {v}")

    def infer(self, node):
        more = ("uint32", "uint64") if node.op == "CumProd" else ()  # wrapping products: the same bits
        return [_check(node, 0, ("float32", "float64", "int32", "int64") + more, "the input")]

    def reference(self, node, x):
        ax = node.attrs["axis"]
        v = np.flip(x, ax) if node.attrs["reverse"] else x
        prod = node.op == "CumProd"
        s = (np.cumprod if prod else np.cumsum)(v, axis=ax, dtype=x.dtype)
        if node.attrs["exclusive"]:
            first = np.full_like(np.take(s, [0], axis=ax), 1 if prod else 0)
            s = np.concatenate([first, np.take(s, range(x.shape[ax] - 1), axis=ax)], axis=ax)
        return [np.flip(s, ax) if node.attrs["reverse"] else s]

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        ax = node.attrs["axis"]
        n = x.shape[ax]
        kept = x.shape[:ax] + (1,) + x.shape[ax + 1:]
        prod = node.op == "CumProd"
        with k.loops(kept) as idx:
            acc = k.var(k.lift(1 if prod else 0, like=x[idx]))
            with k.loop(n) as j:
                at = list(idx)
                at[ax] = (n - 1) - j if node.attrs["reverse"] else j
                at = tuple(at)
                step = (acc.value * x[at]) if prod else (acc.value + x[at])
                if node.attrs["exclusive"]:
                    y[at] = acc.value
                    acc.value = step
                else:
                    acc.value = step
                    y[at] = acc.value


@register("OneHot")
class OneHot(Op):
    def canonicalize(self, node, opset):
        depth = const_input(node, 1, "OneHot depth")
        if depth is None or np.asarray(depth).size != 1:
            raise invalid(node, "depth must be a scalar")
        node.attrs["depth"] = int(np.asarray(depth).reshape(-1)[0])
        if node.attrs["depth"] < 1:
            raise invalid(node, f"depth must be positive, got {node.attrs['depth']}")
        rank = len(in_type(node).shape)
        ax = int(node.attrs.get("axis", -1))
        if not -rank - 1 <= ax <= rank:
            raise invalid(node, f"axis {ax} out of range for rank {rank} indices")
        node.attrs["axis"] = ax % (rank + 1)
        node.inputs = [node.inputs[0], node.inputs[2]]

    def infer(self, node):
        idx = _check(node, 0, NUMERIC, "indices")
        vals = _check(node, 1, ANY, "values")
        if vals.size != 2:
            raise invalid(node, f"values must hold 2 elements (off, on), got shape {list(vals.shape)}")
        ax = node.attrs["axis"]
        return [TensorType(vals.dtype, idx.shape[:ax] + (node.attrs["depth"],) + idx.shape[ax:])]

    def reference(self, node, idx, vals):
        ax, depth = node.attrs["axis"], node.attrs["depth"]
        i = np.expand_dims(idx.astype(np.int64), ax)
        i = np.where(i < 0, i + depth, i)
        hot = i == np.arange(depth).reshape([-1 if d == ax else 1 for d in range(idx.ndim + 1)])
        v = vals.reshape(-1)
        return [np.where(hot, v[1], v[0]).astype(vals.dtype)]

    def lower(self, k, node, ins, outs):
        idx, vals, y = ins[0], ins[1].flat(), outs[0]
        ax, depth = node.attrs["axis"], node.attrs["depth"]
        off, on = vals[0], vals[1]
        with k.loops(y.shape) as o:
            i = _as_i64(k, idx[o[:ax] + o[ax + 1:]], idx.dtype)
            i = k.select(i < 0, i + depth, i)
            y[o] = k.select(i.eq(_as_i64(k, o[ax], "int64")), on, off)


@register("EyeLike")
class EyeLike(Op):
    """Ones on the k-th diagonal of a matrix shaped like the input: folds to a constant."""

    shape_only = True
    dtype_attrs = ("dtype",)

    def canonicalize(self, node, opset):
        node.attrs.setdefault("k", 0)

    def infer(self, node):
        t = in_type(node)
        if len(t.shape) != 2:
            raise invalid(node, f"needs a 2-D input, got shape {list(t.shape)}")
        return [TensorType(node.attrs.get("dtype") or t.dtype, t.shape)]

    def reference(self, node, x=None):
        t = self.infer(node)[0]
        return [np.eye(*t.shape, k=node.attrs["k"], dtype=t.dtype)]

    def lower(self, k, node, ins, outs):
        y = outs[0]
        with k.loops(y.shape) as (i, j):
            one = k.lift(1, like=LLVM_TYPES[y.dtype])
            y[i, j] = k.select((_at(k, j) - _at(k, i)).eq(node.attrs["k"]), one, k.lift(0, like=one))


def _tuple_index(k, node, indices, at, dims):
    """The position indices[at + (0..m-1)] names in dims (negative counts from the end), and
    whether it lies inside them."""
    pos, inside = [], None
    for t, n in enumerate(dims):
        i = _index_at(k, node, indices, at + (t,), n)
        ok = (i >= 0) & (i < n)
        inside = ok if inside is None else inside & ok
        pos.append(i)
    return tuple(pos), inside


@register("GatherND")
class GatherND(Op):
    """An index tuple out of range reads the nearest element (as GatherElements)."""

    def canonicalize(self, node, opset):
        node.attrs.setdefault("batch_dims", 0)

    def infer(self, node):
        data, idx = _check(node, 0, ANY, "data"), _check(node, 1, ("int64",), "indices")
        b, m = node.attrs["batch_dims"], idx.shape[-1] if idx.shape else 0
        if not idx.shape or not 0 <= b < min(len(idx.shape), len(data.shape)) or not 1 <= m <= len(data.shape) - b:
            raise invalid(node, f"indices {list(idx.shape)} and batch_dims {b} do not fit data {list(data.shape)}")
        if idx.shape[:b] != data.shape[:b]:
            raise invalid(node, f"batch dims of indices {list(idx.shape[:b])} != data's {list(data.shape[:b])}")
        return [TensorType(data.dtype, idx.shape[:-1] + data.shape[b + m:])]

    def reference(self, node, data, idx):
        b, m = node.attrs["batch_dims"], idx.shape[-1]
        out = np.empty(self.infer(node)[0].shape, data.dtype)
        dims = data.shape[b:b + m]
        for o in np.ndindex(*idx.shape[:-1]):
            pos = tuple(int(np.clip(i + d if i < 0 else i, 0, d - 1)) for i, d in zip(idx[o], dims))
            out[o] = data[o[:b] + pos]
        return [out]

    def lower(self, k, node, ins, outs):
        data, idx, y = ins[0], ins[1], outs[0]
        b, m, q = node.attrs["batch_dims"], idx.shape[-1], idx.rank
        dims = data.shape[b:b + m]
        with k.loops(y.shape) as o:
            pos, _ = _tuple_index(k, node, idx, tuple(o[:q - 1]), dims)
            pos = tuple(k.min(k.max(i, 0), n - 1) for i, n in zip(pos, dims))
            y[o] = data[tuple(o[:b]) + pos + tuple(o[q - 1:])]


@register("ScatterND")
class ScatterND(Op):
    """An index tuple out of range is skipped (as ScatterElements)."""

    def canonicalize(self, node, opset):
        red = node.attrs.setdefault("reduction", "none")
        if red not in _REDUCE:
            raise invalid(node, f"reduction must be one of {', '.join(_REDUCE)}, got {red!r}")

    def infer(self, node):
        data, idx, upd = _check(node, 0, ANY, "data"), _check(node, 1, ("int64",), "indices"), in_type(node, 2)
        m = idx.shape[-1] if idx.shape else 0
        if not 1 <= m <= len(data.shape):
            raise invalid(node, f"indices {list(idx.shape)} do not fit data {list(data.shape)}")
        want = idx.shape[:-1] + data.shape[m:]
        if upd.shape != want or upd.dtype != data.dtype:
            raise invalid(node, f"updates {upd.dtype}{list(upd.shape)} must be {data.dtype}{list(want)}")
        if data.dtype in UNSIGNED_DTYPES and node.attrs["reduction"] in ("max", "min"):
            raise unsupported(node, f"max/min reduction of {data.dtype} is not supported")
        return [data]

    def reference(self, node, data, idx, upd):
        fn, m = _REDUCE[node.attrs["reduction"]][0], idx.shape[-1]
        out = data.copy()
        for o in np.ndindex(*idx.shape[:-1]):
            pos = tuple(int(i) + (d if i < 0 else 0) for i, d in zip(idx[o], data.shape))
            if all(0 <= p < d for p, d in zip(pos, data.shape)):
                out[pos] = upd[o] if fn is None else fn(out[pos], upd[o])
        return [out]

    def lower(self, k, node, ins, outs):
        data, idx, upd, y = ins[0], ins[1], ins[2], outs[0]
        m = idx.shape[-1]
        combine = _REDUCE[node.attrs["reduction"]][1]
        with k.loops(y.shape) as o:
            y[o] = data[o]
        with k.loops(idx.shape[:-1]) as o:
            pos, inside = _tuple_index(k, node, idx, tuple(o), data.shape[:m])
            with k.if_(inside):
                with k.loops(data.shape[m:]) as rest:
                    at = pos + tuple(rest)
                    y[at] = combine(k, y[at], upd[tuple(o) + tuple(rest)])
