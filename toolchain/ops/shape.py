"""Ops that move or reinterpret data: views (Reshape & co.), Transpose, Concat, and the
shape arithmetic (Shape, Gather, ...) that constant folding removes before codegen.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ..ir import TensorType
from ..kernel.llvm import element_align
from .base import COPY, Op, const_input, in_type, invalid, linear_jvp, norm_axis, register



class View(Op):
    """Same bytes, new shape: the planner lets output and input share one buffer."""

    view = True

    def item_wise(self, node):
        return True

    def reference(self, node, x, *rest):
        return [x.reshape(self.infer(node)[0].shape)]

    def vjp(self, b, node, cotangents):
        """The same bytes under the input's shape."""
        return [b.reshape(cotangents[0], node.inputs[0].type.shape)]

    jvp = staticmethod(linear_jvp)

    def lower(self, k, node, ins, outs):
        """Only reached when the buffer cannot be shared (e.g. a graph output): a copy
        (nothing for an empty tensor: a Shape whose start is past its end)."""
        x, y = ins[0].flat(), outs[0].flat()
        if y.size == 0:
            return
        with k.loop(y.size) as i:
            y[i] = x[i]


@register("Reshape")
class Reshape(View):
    shape_operands = (1,)

    def canonicalize(self, node, opset):
        shape = const_input(node, 1, "Reshape shape")
        if shape is None:
            raise invalid(node, "missing shape input")
        src = in_type(node).shape
        allowzero = node.attrs.pop("allowzero", 0)
        dims = [int(d) for d in shape]
        dims = [src[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
        if dims.count(-1) > 1:
            raise invalid(node, f"shape {dims} has more than one -1")
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            total = math.prod(src)
            if known == 0 or total % known:
                raise invalid(node, f"cannot reshape {src} to {list(shape)}")
            dims[dims.index(-1)] = total // known
        node.attrs["shape"] = dims
        node.inputs = node.inputs[:1]

    def infer(self, node):
        t = in_type(node)
        dims = tuple(node.attrs["shape"])
        if math.prod(dims) != t.size:
            raise invalid(node, f"cannot reshape {t.shape} ({t.size} elements) to {list(dims)}")
        return [TensorType(t.dtype, dims)]


@register("Flatten")
class Flatten(View):
    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        axis = int(node.attrs.get("axis", 1))
        if not -rank <= axis <= rank:  # [-r, r]: a negative axis counts from the end, -1 keeps the last dim
            raise invalid(node, f"axis {axis} out of range for rank {rank}")
        node.attrs["axis"] = axis % rank if axis < 0 else axis

    def infer(self, node):
        t = in_type(node)
        ax = node.attrs["axis"]
        return [TensorType(t.dtype, (math.prod(t.shape[:ax]),
                                     math.prod(t.shape[ax:])))]


@register("Squeeze", "Unsqueeze")
class SqueezeLike(View):
    shape_operands = (1,)

    def canonicalize(self, node, opset):
        axes = node.attrs.pop("axes", None)
        if len(node.inputs) > 1:
            axes = const_input(node, 1, f"{node.op} axes")
            node.inputs = node.inputs[:1]
        if axes is not None:  # a 0-d axes tensor is one axis (onnx's own AffineGrid function writes one)
            axes = [int(a) for a in np.ravel(axes)]
        shape = in_type(node).shape
        if node.op == "Squeeze":
            if axes is None:
                axes = [i for i, d in enumerate(shape) if d == 1]
            axes = sorted(norm_axis(int(a), len(shape), node) for a in axes)
            if any(shape[a] != 1 for a in axes):
                raise invalid(node, f"cannot squeeze axes {axes} of shape {shape}")
        else:
            if axes is None:
                raise invalid(node, "missing axes")
            rank = len(shape) + len(axes)
            axes = sorted(norm_axis(int(a), rank, node) for a in axes)
        node.attrs["axes"] = axes

    def infer(self, node):
        t = in_type(node)
        axes = node.attrs["axes"]
        if node.op == "Squeeze":
            dims = [d for i, d in enumerate(t.shape) if i not in axes]
        else:
            dims = list(t.shape)
            for a in axes:
                dims.insert(a, 1)
        return [TensorType(t.dtype, tuple(dims))]


@register("Identity", "Dropout", "OptionalGetElement")
class Identity(View):
    """OptionalGetElement: the importer has tensors only, so its input is a tensor (or an
    optional that holds one): its value."""

    def canonicalize(self, node, opset):
        if not node.inputs or node.inputs[0] is None:
            raise invalid(node, "needs an input (an empty optional has no element to get)")
        if node.op == "Dropout":
            node.attrs.clear()
            node.inputs = node.inputs[:1]  # the mask output is a constant (constant_outputs)

    def infer(self, node):
        return [in_type(node)]

    def constant_outputs(self, node, opset):
        """Dropout's mask from opset 12: all true in inference (output = data * mask; the
        importer refuses a random training mode). Before, the spec leaves its value in
        inference open (onnxruntime writes 0s, the onnx reference evaluator 1s): none, so
        the importer refuses a mask that something reads (an unread one is fine)."""
        if node.op != "Dropout" or len(node.outputs) < 2 or opset < 12:
            return {}
        return {1: np.ones(in_type(node).shape, np.bool_)}


@register("OptionalHasElement")
class OptionalHasElement(Op):
    """Whether the optional input holds a value: the importer has tensors only, so it is
    true when an input is given and false when there is none (no input, or an empty name):
    a constant bool scalar, folded at import."""
    shape_only = True

    def canonicalize(self, node, opset):
        node.attrs["has"] = bool(node.inputs) and node.inputs[0] is not None
        node.inputs = []

    def infer(self, node):
        return [TensorType("bool", ())]

    def reference(self, node, *_):
        return [np.array(node.attrs["has"])]


@register("Transpose")
class Transpose(Op):
    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        node.attrs["perm"] = [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]
        if sorted(node.attrs["perm"]) != list(range(rank)):
            raise invalid(node, f"perm {node.attrs['perm']} is not a permutation of {rank} axes")

    def item_wise(self, node):
        return True

    def infer(self, node):
        t = in_type(node)
        return [TensorType(t.dtype, tuple(t.shape[p] for p in node.attrs["perm"]))]

    def reference(self, node, x):
        return [np.ascontiguousarray(np.transpose(x, node.attrs["perm"]))]

    def vjp(self, b, node, cotangents):
        return [b.op("Transpose", [cotangents[0]], perm=[int(i) for i in np.argsort(node.attrs["perm"])])]

    jvp = staticmethod(linear_jvp)

    def lower(self, k, node, ins, outs):
        groups = _swapped_groups(*_without_unit_axes(ins[0].shape, node.attrs["perm"]))
        if groups is not None and k.explicit_vectors and min(groups[1:]) >= BLOCK:
            _blocked_transpose(k, ins[0], outs[0], *groups)
            return
        x = ins[0].transpose(node.attrs["perm"])
        with k.loops(outs[0].shape) as idx:
            outs[0][idx] = x[idx]


BLOCK = 4  # a Transpose's square blocks: 4 rows loaded as vectors, 4 columns stored


def _without_unit_axes(shape, perm):
    """shape and perm with the axes of size 1 dropped: they move no element, so a weight's
    (O, C, 1, 1) -> (C, O, 1, 1) (a pointwise convolution's input gradient) is the 2-D
    transpose it is."""
    keep = [i for i, d in enumerate(shape) if d != 1]
    return [shape[i] for i in keep], [keep.index(p) for p in perm if shape[p] != 1]


def _swapped_groups(shape, perm):
    """(batch, rows, cols) where perm keeps leading axes and moves a trailing group of axes
    ahead of the group before it ((N, C, H, W) -> (N, H, W, C): 1 x C x HW, a weight
    gradient's channels-last input; (C, P) -> (P, C)), so the Transpose is a batch of 2-D
    ones; None otherwise."""
    lead = next((i for i, p in enumerate(perm) if p != i), None)
    if lead is None:
        return None
    j = perm[lead]
    if list(perm) != [*range(lead), *range(j, len(perm)), *range(lead, j)]:
        return None
    return math.prod(shape[:lead]), math.prod(shape[lead:j]), math.prod(shape[j:])


def _blocked_transpose(k, x, y, batch, rows, cols):
    """y[n, j, i] = x[n, i, j] in BLOCK x BLOCK blocks: BLOCK rows of x loaded as vectors,
    transposed in registers by shuffles (NEON zip/uzp), stored as BLOCK vectors of y; the edge
    rows and columns one element at a time. The plain loop nest reads x with a stride of a
    whole row per element (tens of instructions an element on NEON)."""
    xs, ys = x.reshape((batch, rows, cols)), y.reshape((batch, cols, rows))
    whole_r, whole_c = rows - rows % BLOCK, cols - cols % BLOCK

    def shuffle(a, b_, mask):
        return k.b.shuffle_vector(a, b_, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))

    with k.loop(batch) as n:
        with k.loop(whole_r, step=BLOCK) as i0:
            with k.loop(whole_c, step=BLOCK) as j0:
                r = [k.vload(xs, (n, i0 + t, j0), BLOCK).v for t in range(BLOCK)]
                lo01, hi01 = shuffle(r[0], r[1], [0, 4, 1, 5]), shuffle(r[0], r[1], [2, 6, 3, 7])
                lo23, hi23 = shuffle(r[2], r[3], [0, 4, 1, 5]), shuffle(r[2], r[3], [2, 6, 3, 7])
                cols4 = [shuffle(lo01, lo23, [0, 1, 4, 5]), shuffle(lo01, lo23, [2, 3, 6, 7]),
                         shuffle(hi01, hi23, [0, 1, 4, 5]), shuffle(hi01, hi23, [2, 3, 6, 7])]
                for t, v in enumerate(cols4):
                    ptr = k.b.bitcast(ys.address((n, j0 + t, i0)), v.type.as_pointer())
                    k.b.store(v, ptr).align = element_align(v.type.element)
            with k.loop(cols, start=whole_c) as j:
                for t in range(BLOCK):
                    ys[n, j, i0 + t] = xs[n, i0 + t, j]
        with k.loop(rows, start=whole_r) as i:
            with k.loop(cols) as j:
                ys[n, j, i] = xs[n, i, j]


@register("Concat")
class Concat(Op):
    joins_inputs = True

    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(node.attrs["axis"], len(in_type(node).shape), node)

    def item_wise(self, node):
        return True

    def infer(self, node):
        ax = node.attrs["axis"]
        types = [v.type for v in node.inputs]
        first = types[0]
        for t in types[1:]:
            if t.dtype != first.dtype or len(t.shape) != len(first.shape) or any(
                    a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != ax):
                raise invalid(node, f"cannot concatenate {first} with {t} on axis {ax}")
        shape = list(first.shape)
        shape[ax] = sum(t.shape[ax] for t in types)
        return [TensorType(first.dtype, tuple(shape))]

    def reference(self, node, *xs):
        return [np.concatenate(xs, axis=node.attrs["axis"])]

    def vjp(self, b, node, cotangents):
        ax = node.attrs["axis"]
        sizes = [v.type.shape[ax] for v in node.inputs]
        if len(sizes) == 1:
            return [cotangents[0]]
        return b.op("Split", [cotangents[0]], outputs=len(sizes), axis=ax, split=sizes)

    def jvp(self, b, node, tangents):
        ts = [t if t is not None else b.zeros(v) for v, t in zip(node.inputs, tangents)]
        return [b.op("Concat", ts, axis=node.attrs["axis"])]

    def lower(self, k, node, ins, outs):
        ax, start = node.attrs["axis"], 0
        y = outs[0]
        for x in ins:
            if x.size:
                dst = y.view(x.shape, y.strides, y.offset + start * y.strides[ax])
                with k.loops(x.shape) as idx:
                    dst[idx] = x[idx]
            start += x.shape[ax]


@register("Shape")
class Shape(Op):
    """Always folds: shapes are static."""

    shape_only = True

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        start = node.attrs.pop("start", 0)
        end = node.attrs.pop("end", rank)
        node.attrs["dims"] = list(in_type(node).shape[slice(start, end)])

    def infer(self, node):
        return [TensorType("int64", (len(node.attrs["dims"]),))]

    def reference(self, node, x=None):
        return [np.array(node.attrs["dims"], dtype=np.int64)]

    def lower(self, k, node, ins, outs):
        for i, d in enumerate(node.attrs["dims"]):
            outs[0][i] = k.lift(d, like=k.lift(0))


@register("Gather")
class Gather(Op):
    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(node.attrs.get("axis", 0), len(in_type(node).shape), node)

    def item_wise(self, node):
        return True

    def infer(self, node):
        data, idx = in_type(node, 0), in_type(node, 1)
        ax = node.attrs["axis"]
        if idx.dtype not in ("int32", "int64"):
            raise invalid(node, f"indices must be int32/int64, got {idx.dtype}")
        return [TensorType(data.dtype, data.shape[:ax] + idx.shape + data.shape[ax + 1:])]

    def reference(self, node, data, idx):
        return [np.take(data, idx.astype(np.int64), axis=node.attrs["axis"])]

    def vjp(self, b, node, cotangents):
        """Scatter-add of the cotangent at the indices (repeats add up): the gathered axis
        moved first in zeros of the data's shape, the index dims first in the cotangent,
        one ScatterND with reduction add, the axis moved back."""
        x, idx, ax = in_type(node, 0), node.inputs[1], node.attrs["axis"]
        r, q = len(x.shape), len(idx.type.shape)
        i = b.primal(idx) if idx.type.dtype == "int64" else b.op("Cast", [b.primal(idx)], to="int64")
        i = b.reshape(i, idx.type.shape + (1,))
        g = cotangents[0]
        front = list(range(ax, ax + q)) + list(range(ax)) + list(range(ax + q, r + q - 1))
        if front != sorted(front):
            g = b.op("Transpose", [g], perm=front)
        zeros = b.g.const("zero", np.zeros((x.shape[ax],) + x.shape[:ax] + x.shape[ax + 1:], x.dtype))
        s = b.op("ScatterND", [zeros, i, g], reduction="add")
        return [s if ax == 0 else b.op("Transpose", [s], perm=[*range(1, ax + 1), 0, *range(ax + 1, r)]), None]

    jvp = staticmethod(linear_jvp)

    def lower(self, k, node, ins, outs):
        data, idx, y = ins[0], ins[1], outs[0]
        ax = node.attrs["axis"]
        n = data.shape[ax]
        with k.loops(y.shape) as out_idx:
            pos = out_idx[ax:ax + idx.rank]
            i = k.cast(idx[tuple(pos)], k.lift(0).v.type)
            i = k.select(i < 0, i + n, i)  # negative indices count from the end
            src = out_idx[:ax] + (i,) + out_idx[ax + idx.rank:]
            y[out_idx] = data[src]


@register(COPY, internal=True)
class Copy(Op):
    """Internal (not ONNX): an explicit copy into a graph output buffer."""

    foldable = False

    def item_wise(self, node):
        return True

    def infer(self, node):
        return [in_type(node)]

    def reference(self, node, x):
        return [x.copy()]

    lower = View.lower
