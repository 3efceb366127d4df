"""Resize (opsets 10-19: nearest, N-linear and N-cubic, every coordinate transformation,
antialiasing, keep_aspect_ratio_policy) and the older Upsample. Scales or sizes (and a
tf_crop_and_resize roi) must be constants, so every output shape is static. Nearest and
linear with the plain transformations compute each output index's source coordinate in the
kernel; the other forms (cubic, antialias, tf_crop_and_resize, half_pixel_symmetric) read
per-axis tables of taps (input index, weight) made at compile time from the same shapes."""
from __future__ import annotations

import itertools

import numpy as np

from ..kernel import mathfns as m
from ..kernel.llvm import F32
from ..ir import TensorType
from . import resize_tables as _tables
from .base import Op, const_input, in_type, invalid, register, unsupported

TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
TABLE_TRANSFORMS = ("tf_crop_and_resize", "half_pixel_symmetric")  # always through tap tables
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")



def _text(v, default):
    v = default if v is None else v
    return v.decode() if isinstance(v, bytes) else v


def _source(mode, coord, o, scale, size_in, size_out, lib):
    """Source coordinate of output index `o` along one axis (ONNX's formulas).
    `lib` supplies arithmetic so the same code serves numpy and the kernel."""
    if coord == "asymmetric":
        return o / scale
    if coord == "align_corners":
        return lib.zero(o) if size_out == 1 else o * ((size_in - 1) / (size_out - 1))
    x = (o + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel" and size_out == 1:
        return lib.zero(o)
    return x


class _Np:
    @staticmethod
    def zero(o):
        return np.zeros_like(o)


class _Resize(Op):
    shape_operands = (1, 2, 3)

    fusable_epilogue = True

    def item_wise(self, node):
        # a tf_crop_and_resize roi can move axis 0 while keeping its length
        return 0 not in self._moved_axes(node, in_type(node).shape)

    def _mode(self, node, modes=("nearest", "linear")):
        mode = node.attrs["mode"] = _text(node.attrs.get("mode"), "nearest")
        if mode not in modes:
            raise unsupported(node, f"mode '{mode}' is not supported ({', '.join(modes)})")

    def _settle(self, node, scales, sizes, roi=None):
        x = in_type(node).shape
        a = node.attrs
        a["antialias"] = int(a.get("antialias", 0))
        if a["antialias"] and a["mode"] == "nearest":
            raise invalid(node, "antialias applies to the linear and cubic modes, not nearest")
        policy = _text(a.pop("keep_aspect_ratio_policy", None), "stretch")
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise invalid(node, f"keep_aspect_ratio_policy '{policy}' is not one of stretch, not_larger, not_smaller")
        axes = a.pop("axes", None)
        axes = [int(i) % len(x) for i in axes] if axes is not None else list(range(len(x)))
        full_scales, out = [1.0] * len(x), list(x)
        if roi is not None:
            roi = np.asarray(roi, np.float64).reshape(-1)
            if roi.size != 2 * len(axes):
                raise invalid(node, f"roi has {roi.size} values, want {2 * len(axes)} (start and end per axis)")
            full = [0.0] * len(x) + [1.0] * len(x)
            for j, ax in enumerate(axes):
                full[ax], full[len(x) + ax] = float(roi[j]), float(roi[len(axes) + j])
            a["roi"] = full
        if sizes is not None and np.asarray(sizes).size:
            sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
            if policy != "stretch":  # one scale for every axis named, the output rounded half up
                pick = min if policy == "not_larger" else max
                scale = pick(s / x[ax] for ax, s in zip(axes, sizes))
                sizes = [int(scale * x[ax] + 0.5) for ax in axes]
            for ax, s in zip(axes, sizes):
                out[ax] = s
                full_scales[ax] = s / x[ax] if policy == "stretch" else scale
        elif scales is not None and np.asarray(scales).size:
            for ax, s in zip(axes, np.asarray(scales, np.float64).reshape(-1)):
                full_scales[ax] = float(s)
                out[ax] = int(np.floor(x[ax] * float(s)))
        else:
            raise unsupported(node, "needs constant scales or sizes")
        a["scales"], a["out_shape"] = full_scales, out

    def infer(self, node):
        t = in_type(node)
        if t.dtype != "float32":
            raise unsupported(node, "needs float32 input")
        if min(node.attrs["out_shape"]) <= 0:
            raise invalid(node, f"empty output shape {node.attrs['out_shape']}")
        return [TensorType(t.dtype, tuple(node.attrs["out_shape"]))]

    def _moved_axes(self, node, shape):
        a = node.attrs
        roi = a.get("roi")
        r = len(shape)
        return [i for i, (n, o, s) in enumerate(zip(shape, a["out_shape"], a["scales"]))
                if n != o or s != 1.0 or (roi is not None and (roi[i], roi[r + i]) != (0.0, 1.0))]

    def _tabled(self, node):
        a = node.attrs
        return a["mode"] == "cubic" or a.get("antialias", 0) or a["coord"] in TABLE_TRANSFORMS

    def reference(self, node, x):
        a = node.attrs
        y = x.astype(np.float64)
        if self._tabled(node):
            return [_tables.reference(a, y, self._moved_axes(node, x.shape)).astype(x.dtype)]
        for ax in self._moved_axes(node, x.shape):
            n, out = x.shape[ax], a["out_shape"][ax]
            src = _source(a["mode"], a["coord"], np.arange(out, dtype=np.float64), a["scales"][ax], n, out, _Np)
            if a["mode"] == "nearest":
                idx = np.clip(_round_np(src, a["nearest_mode"]), 0, n - 1).astype(np.int64)
                y = np.take(y, idx, axis=ax)
            else:
                src = np.clip(src, 0, n - 1)
                i0 = np.floor(src).astype(np.int64)
                i1 = np.minimum(i0 + 1, n - 1)
                wt = (src - i0).reshape([-1 if i == ax else 1 for i in range(x.ndim)])
                y = np.take(y, i0, axis=ax) * (1 - wt) + np.take(y, i1, axis=ax) * wt
        return [y.astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        a = node.attrs
        x, y = ins[0], outs[0]
        moved = self._moved_axes(node, x.shape)
        if self._tabled(node):
            return _tables.lower(k, a, x, y, moved)
        lib = _KernelLib(k)
        with k.loops(y.shape) as idx:
            base = list(idx)
            corners = []  # per moved axis: [(index Expr, weight Expr or None)]
            for ax in moved:
                n, out = x.shape[ax], a["out_shape"][ax]
                with k.precise():  # ties in nearest rounding must fall as in float32 math
                    src = _source(a["mode"], a["coord"], lib.float(idx[ax]), a["scales"][ax], n, out, lib)
                if a["mode"] == "nearest":
                    r = _round_kernel(k, src, a["nearest_mode"])
                    corners.append([(k.min(k.max(k.cast(r, k.index), 0), n - 1), None)])
                else:
                    src = k.min(k.max(src, 0.0), float(n - 1))
                    f = m.floor(k, src)
                    i0 = k.cast(f, k.index)
                    i1 = k.min(i0 + 1, n - 1)
                    wt = src - f
                    corners.append([(i0, 1.0 - wt), (i1, wt)])
            total = None
            for combo in itertools.product(*corners):
                at = list(base)
                weight = None
                for ax, (i, wgt) in zip(moved, combo):
                    at[ax] = i
                    if wgt is not None:
                        weight = wgt if weight is None else weight * wgt
                v = x[tuple(at)]
                v = v if weight is None else v * weight
                total = v if total is None else total + v
            y[idx] = total


class _KernelLib:
    def __init__(self, k):
        self.k = k

    def float(self, i):
        return self.k.cast(self.k.lift(i), F32)

    def zero(self, o):
        return self.k.lift(0.0, like=F32)


def _round_np(x, mode):
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    if mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    return np.ceil(x - 0.5)  # round_prefer_floor: halves go down


def _round_kernel(k, x, mode):
    if mode == "floor":
        return m.floor(k, x)
    if mode == "ceil":
        return m.ceil(k, x)
    if mode == "round_prefer_ceil":
        return m.floor(k, x + 0.5)
    return m.ceil(k, x - 0.5)


@register("Resize")
class Resize(_Resize):
    def canonicalize(self, node, opset):
        a = node.attrs
        self._mode(node, ("nearest", "linear", "cubic"))
        a["coord"] = _text(a.pop("coordinate_transformation_mode", None),
                           "asymmetric" if opset < 11 else "half_pixel")
        if a["coord"] not in TRANSFORMS + TABLE_TRANSFORMS:
            raise unsupported(node, f"coordinate_transformation_mode '{a['coord']}' is not supported "
                             f"({', '.join(TRANSFORMS + TABLE_TRANSFORMS)})")
        a["nearest_mode"] = _text(a.get("nearest_mode"), "round_prefer_floor" if opset >= 11 else "floor")
        if a["nearest_mode"] not in NEAREST:
            raise unsupported(node, f"nearest_mode '{a['nearest_mode']}' is not supported")
        a["cubic_coeff_a"] = float(a.get("cubic_coeff_a", -0.75))
        a["exclude_outside"] = int(a.get("exclude_outside", 0))
        a["extrapolation_value"] = float(a.get("extrapolation_value", 0.0))
        roi = None
        if opset < 11:
            scales, sizes = const_input(node, 1, "scales"), None
        else:
            scales, sizes = const_input(node, 2, "scales"), const_input(node, 3, "sizes")
            if a["coord"] == "tf_crop_and_resize":
                roi = const_input(node, 1, "roi")
                if roi is None or not np.asarray(roi).size:
                    raise invalid(node, "tf_crop_and_resize needs the roi input")
        node.inputs = node.inputs[:1]
        self._settle(node, scales, sizes, roi)


@register("Upsample")
class Upsample(_Resize):
    """Opsets 7-9: asymmetric coordinates, nearest rounds down."""

    def canonicalize(self, node, opset):
        a = node.attrs
        self._mode(node)
        a["coord"], a["nearest_mode"] = "asymmetric", "floor"
        scales = a.pop("scales", None)
        if scales is None:
            scales = const_input(node, 1, "scales")
        node.inputs = node.inputs[:1]
        self._settle(node, scales, None)
