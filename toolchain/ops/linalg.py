"""Linear algebra beyond MatMul/Gemm: Einsum (the equation parsed at compile time into a
loop nest: one loop per output label, an accumulation loop per summed label) and Det (LU
with partial pivoting in a scratch copy of each matrix, the column loop unrolled at
compile time so every inner loop has static bounds). A float32 Einsum of two operands that is
a batched matrix product in some layout ('bhqd,bhkd->bhqk') runs MatMul's register tiles on
strided views of the operands."""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from ..kernel.llvm import LLVM_TYPES
from ..kernel.tiled_matmul import tiled_matmul
from ..schedules import matmul_schedule
from .base import Op, in_type, invalid, register, unsupported

EINSUM_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def _equation(node):
    eq = node.attrs.get("equation")
    if eq is None:
        raise invalid(node, "needs an equation")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    return eq.replace(" ", "")


def _tokens(node, term, rank=None):
    """The labels of one term: letters, and '...' as one token."""
    if term.count("...") > 1:
        raise invalid(node, f"term '{term}' has more than one ellipsis")
    out, rest = [], term
    while rest:
        if rest.startswith("..."):
            out.append("...")
            rest = rest[3:]
        elif rest[0].isascii() and rest[0].isalpha():
            out.append(rest[0])
            rest = rest[1:]
        else:
            raise invalid(node, f"bad character {rest[0]!r} in equation term '{term}'")
    return out


def parse_einsum(node, shapes):
    """(labels of each input, labels of the output, size of each label). Ellipsis dims become
    labels '.0', '.1', ... aligned from the right across the inputs (numpy broadcasting)."""
    eq = _equation(node)
    lhs, arrow, rhs = eq.partition("->")
    terms = [_tokens(node, t) for t in lhs.split(",")]
    if len(terms) != len(shapes):
        raise invalid(node, f"equation '{eq}' has {len(terms)} input terms for {len(shapes)} inputs")
    ells = []
    for t, shape in zip(terms, shapes):
        named = len(t) - ("..." in t)
        if ("..." in t and named > len(shape)) or ("..." not in t and named != len(shape)):
            raise invalid(node, f"term '{''.join(t)}' does not fit an input of rank {len(shape)}")
        ells.append(len(shape) - named if "..." in t else 0)
    width = max(ells, default=0)
    if len({e for t, e in zip(terms, ells) if "..." in t}) > 1:
        raise invalid(node, f"the ellipsis stands for different numbers of dimensions in '{eq}' "
                            f"({', '.join(str(e) for t, e in zip(terms, ells) if '...' in t)})")
    labels = []
    for t, e in zip(terms, ells):
        expanded = []
        for tok in t:
            expanded += [f".{width - e + i}" for i in range(e)] if tok == "..." else [tok]
        labels.append(expanded)
    ell_labels = [f".{i}" for i in range(width)]
    if arrow:
        out_tok = _tokens(node, rhs)
        out = []
        for tok in out_tok:
            out += ell_labels if tok == "..." else [tok]
        if len(set(out)) != len(out):
            raise invalid(node, f"output term '{rhs}' repeats a label")
        seen = {lab for ls in labels for lab in ls}
        for lab in out:
            if lab not in seen:
                raise invalid(node, f"output label '{lab}' is not in any input term")
    else:
        counts = {}
        for ls in labels:
            for lab in ls:
                if not lab.startswith("."):
                    counts[lab] = counts.get(lab, 0) + 1
        out = ell_labels + sorted(lab for lab, c in counts.items() if c == 1)
    sizes = {}
    for ls, shape in zip(labels, shapes):
        for lab, d in zip(ls, shape):
            have = sizes.get(lab)
            if have is None or have == 1 and lab.startswith("."):
                sizes[lab] = d
            elif d != have and not (d == 1 and lab.startswith(".")):
                raise invalid(node, f"label '{lab}' has sizes {have} and {d}")
    return labels, out, sizes


@register("Einsum")
class Einsum(Op):
    def canonicalize(self, node, opset):
        node.attrs["equation"] = _equation(node)
        labels, out, sizes = parse_einsum(node, [v.type.shape for v in node.inputs])
        node.attrs.update(terms=labels, out=out, sizes=sizes)

    def infer(self, node):
        dtypes = {v.type.dtype for v in node.inputs}
        if len(dtypes) != 1:
            raise invalid(node, f"inputs differ in element type: {', '.join(sorted(dtypes))}")
        dt = dtypes.pop()
        if dt not in EINSUM_DTYPES:
            raise unsupported(node, f"{dt} is not supported")
        return [TensorType(dt, tuple(node.attrs["sizes"][lab] for lab in node.attrs["out"]))]

    def reference(self, node, *xs):
        r = np.einsum(node.attrs["equation"], *xs)
        return [np.asarray(r).astype(xs[0].dtype)]

    def macs(self, node):
        return math.prod(node.attrs["sizes"].values()) * max(len(node.inputs) - 1, 1)

    def _matmul(self, node):
        """(batch labels, m label or None, n label or None, k label) when the equation is a
        batched matrix product of two float32 operands, else None."""
        a = node.attrs
        if len(node.inputs) != 2 or any(v.type.dtype != "float32" for v in node.inputs):
            return None
        (ta, tb), out = a["terms"], a["out"]
        if len(set(ta)) != len(ta) or len(set(tb)) != len(tb):
            return None  # a diagonal
        sa, sb, so = set(ta), set(tb), set(out)
        if any(lab not in so and not (lab in sa and lab in sb) for lab in sa | sb):
            return None  # a label summed within one operand
        batch = [lab for lab in out if lab in sa and lab in sb]
        ms = [lab for lab in out if lab in sa and lab not in sb]
        ns = [lab for lab in out if lab in sb and lab not in sa]
        ks = [lab for lab in ta if lab in sb and lab not in so]
        if len(ms) > 1 or len(ns) > 1 or len(ks) != 1:
            return None
        shape_a, shape_b = (v.type.shape for v in node.inputs)
        if shape_a[ta.index(ks[0])] != shape_b[tb.index(ks[0])]:
            return None  # a broadcast reduction axis
        return batch, (ms or [None])[0], (ns or [None])[0], ks[0]

    def schedule(self, node, vec):
        plan = self._matmul(node)
        if plan is None:
            return None
        _, ml, nl, kl = plan
        sizes, ta = node.attrs["sizes"], node.attrs["terms"][0]
        return matmul_schedule(vec, sizes.get(ml, 1), sizes.get(nl, 1), sizes[kl],
                               a_contiguous=ta.index(kl) == len(ta) - 1)

    def _lower_matmul(self, k, node, ins, outs, plan):
        """Views (batch..., m, k), (batch..., k, n), (batch..., m, n) of the operands and the
        output (a label an operand lacks: a dimension of 1), then MatMul's loop."""
        batch, ml, nl, kl = plan
        sizes, (ta, tb), out = node.attrs["sizes"], node.attrs["terms"], node.attrs["out"]

        def view(x, labels, order):
            shape, strides = [], []
            for lab in order:
                if lab is None or lab not in labels:
                    shape.append(1)
                    strides.append(1)
                    continue
                d = labels.index(lab)
                shape.append(sizes[lab])
                strides.append(0 if x.shape[d] == 1 else x.strides[d])  # broadcast: stride 0
            return x.view(shape, strides)

        a = view(ins[0], ta, batch + [ml, kl])
        b = view(ins[1], tb, batch + [kl, nl])
        y = view(outs[0], out, batch + [ml, nl])
        m, n, kd = y.shape[-2], y.shape[-1], a.shape[-1]
        with k.loops(y.shape[:-2]) as bi:
            tiled_matmul(k, node.schedule, m, n, kd, lambda i, kk: (a, (*bi, i, kk)), lambda kk, j: (b, (*bi, kk, j)),
                         lambda i, j, w: k.zeros(w, y.dtype), lambda i, j, v: y.store_vector((*bi, i, j), v))

    def lower(self, k, node, ins, outs):
        plan = self._matmul(node) if node.schedule is not None else None
        if plan is not None:
            return self._lower_matmul(k, node, ins, outs, plan)
        a = node.attrs
        terms, out, sizes, y = a["terms"], a["out"], a["sizes"], outs[0]
        summed = list(dict.fromkeys(lab for ls in terms for lab in ls if lab not in out))

        def product(at):
            p = None
            for x, ls in zip(ins, terms):
                v = x[tuple(0 if d == 1 else at[lab] for lab, d in zip(ls, x.shape))]
                p = v if p is None else p * v
            return p

        with k.loops([sizes[lab] for lab in out]) as oidx:
            at = dict(zip(out, oidx))
            if not summed:
                y[oidx] = product(at)
            else:
                acc = k.var(k.lift(0, like=LLVM_TYPES[y.dtype]))
                with k.loops([sizes[lab] for lab in summed]) as ridx:
                    at.update(zip(summed, ridx))
                    acc.value = acc.value + product(at)
                y[oidx] = acc.value


@register("Det")
class Det(Op):
    def infer(self, node):
        t = in_type(node)
        if t.dtype not in ("float32", "float64"):
            raise unsupported(node, f"needs float32 or float64 input, got {t.dtype}")
        if len(t.shape) < 2 or t.shape[-1] != t.shape[-2]:
            raise invalid(node, f"needs square matrices [*, M, M], got shape {list(t.shape)}")
        return [TensorType(t.dtype, t.shape[:-2])]

    def workspace(self, node):
        t = in_type(node)
        return [TensorType(t.dtype, t.shape[-2:])]

    def reference(self, node, x):
        return [np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)]

    def macs(self, node):
        t = in_type(node)
        n = t.shape[-1]
        return math.prod(t.shape[:-2]) * (n * n * n // 3 + n)

    def lower(self, k, node, ins, outs):
        t = in_type(node)
        n, batch = t.shape[-1], math.prod(t.shape[:-2])
        x, y, w = ins[0].reshape((batch, n, n)), outs[0].reshape((batch,)), outs[1]
        ty = LLVM_TYPES[t.dtype]
        if n == 0:
            with k.loop(batch) as b:
                y[b] = k.lift(1.0, like=ty)
            return
        with k.loop(batch) as b:
            with k.loops((n, n)) as (i, j):
                w[i, j] = x[b, i, j]
            det = k.var(k.lift(1.0, like=ty))
            for j in range(n):  # unrolled: the loops below start at j + 1
                if j < n - 1:
                    best, p = k.var(k.abs(w[j, j])), k.var(k.lift(j))
                    with k.loop(n, start=j + 1) as i:
                        v = k.abs(w[i, j])
                        take = best.value < v
                        best.value = k.select(take, v, best.value)
                        p.value = k.select(take, k.lift(i), p.value)
                    pv = p.value
                    with k.loop(n, start=j) as c:  # swap rows j and pv (a no-op when equal)
                        top, other = w[j, c], w[pv, c]
                        w[pv, c] = top
                        w[j, c] = other
                    det.value = k.select(pv.ne(j), -det.value, det.value)
                piv = w[j, j]
                det.value = det.value * piv
                if j < n - 1:
                    with k.loop(n, start=j + 1) as i:
                        f = k.select(piv.eq(0.0), k.lift(0.0, like=ty), w[i, j] / piv)
                        with k.loop(n, start=j + 1) as c:
                            w[i, c] = w[i, c] - f * w[j, c]
            y[b] = det.value
