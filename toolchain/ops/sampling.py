"""Sampling at computed positions: GridSample (opsets 16, 20, 22: nearest, N-linear, N-cubic;
zeros, border or reflection padding; any number of spatial axes) and AffineGrid (the
sampling grid of an affine map). Positions come from run-time data, so the kernel computes
each tap's index and weight; every index it reads is clamped into the input first, so a
NaN or huge position can give any value but never reads outside the tensor."""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from ..kernel.llvm import F32, I32
from .base import Op, const_input, in_type, invalid, register, unsupported

CUBIC_A = -0.75  # GridSample's cubic convolution constant (PyTorch's)
MODES = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear", "cubic": "cubic", "nearest": "nearest"}
PADDING = ("zeros", "border", "reflection")


def _text(v, default):
    v = default if v is None else v
    return v.decode() if isinstance(v, bytes) else v


def _cubic_weights(t, a=CUBIC_A):
    """Keys' cubic convolution weights of the taps at -1, 0, 1, 2 for a fraction t in [0, 1)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _borders(d, align):
    return (0.0, d - 1.0) if align else (-0.5, d - 0.5)


# -- numpy ------------------------------------------------------------------------------------
def _reflect_np(x, lo, hi):
    rng = hi - lo
    if rng == 0:
        return np.where((x < lo) | (x > hi), lo, x)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.floor(dx / rng)
    r = dx - n * rng
    odd = np.mod(n, 2) == 1
    low = np.where(odd, hi - r, lo + r)
    high = np.where(odd, lo + r, hi - r)
    return np.where(below, low, np.where(above, high, x))


def _fetch_index_np(i, d, padding, lo, hi):
    """(index into the axis, valid mask) of integer tap positions i."""
    if padding == "zeros":
        return np.clip(i, 0, d - 1), (i >= 0) & (i < d)
    if padding == "border":
        return np.clip(i, 0, d - 1), np.ones(i.shape, bool)
    return np.clip(np.trunc(_reflect_np(i.astype(np.float64), lo, hi)), 0, d - 1).astype(np.int64), \
        np.ones(i.shape, bool)


def _position_np(g, d, mode, padding, align):
    """Continuous source position along one axis of normalized grid values g."""
    x = (g + 1) / 2 * (d - 1) if align else ((g + 1) * d - 1) / 2
    if mode == "nearest":
        x = np.rint(x)
    lo, hi = _borders(d, align)
    out = (x < lo) | (x > hi)
    if padding == "border":
        x = np.where(out, np.clip(x, 0, d - 1), x)
    elif padding == "reflection":
        x = _reflect_np(x, lo, hi)
    return x


# -- kernel ------------------------------------------------------------------------------------
def _clampf(k, x, lo, hi):
    """x limited to [lo, hi]; NaN becomes lo."""
    v = k.select(x > lo, x, k.lift(float(lo), like=x))
    return k.select(v < hi, v, k.lift(float(hi), like=x))


# Float -> integer without a conversion instruction: adding 1.5 * 2^23 leaves the integer
# nearest to a float of magnitude < 2^22 in the low mantissa bits (the FPU rounds). Vectorized
# float->int conversions (vfcvt.rtz) abort qemu-riscv64 7.2, and every value converted here is
# bounded first.
MAGIC = 12582912.0
MAGIC_BITS = 0x4B400000
LIMIT = 2.0 ** 21  # positions are clamped into +-LIMIT before rounding


def _round_small(k, x):
    with k.precise():
        return (x + MAGIC) - MAGIC


def _floor_small(k, x):
    r = _round_small(k, x)
    return r - k.select(r > x, 1.0, 0.0)


def _int_small(k, f):
    """An integer-valued float (|f| < 2^22) as an index."""
    with k.precise():
        bits = k.bitcast(f + MAGIC, I32)
    return k.cast(bits - MAGIC_BITS, k.index)


def _reflect(k, x, lo, hi):
    """x reflected at lo and hi until it lies between them (a triangle wave of period
    2 (hi - lo); identity inside). Far positions are first brought within +-LIMIT."""
    rng = hi - lo
    if rng == 0:
        return k.lift(float(lo), like=x)
    t = _clampf(k, x - lo, -LIMIT, LIMIT)
    u = t - _floor_small(k, t * (0.5 / rng)) * (2.0 * rng)  # in [0, 2 rng)
    return (lo + rng) - k.call_intrinsic("llvm.fabs", u - rng)


def _reflect_index(k, i, d, align):
    """An integer tap position reflected into 0..d-1 (what _reflect gives for integers), in
    integer arithmetic: the pattern repeats every 2d (2(d-1) with align_corners)."""
    period = 2 * (d - 1) if align else 2 * d
    if period == 0:
        return k.lift(0, like=i)
    j = i % period
    j = k.select(j < 0, j + period, j)
    last = d - 1
    return k.select(j > last, (period - 1 if not align else period) - j, j)


@register("GridSample")
class GridSample(Op):
    own_inputs = 2
    fusable_epilogue = True  # each output element is stored once, with its final value

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        a = node.attrs
        mode = _text(a.get("mode"), "linear" if opset >= 20 else "bilinear")
        names = ("linear", "cubic", "nearest") if opset >= 20 else ("bilinear", "bicubic", "nearest")
        if mode not in names:
            raise invalid(node, f"mode '{mode}' is not one of {', '.join(names)} (opset {opset})")
        a["mode"] = MODES[mode]
        a["padding_mode"] = _text(a.get("padding_mode"), "zeros")
        if a["padding_mode"] not in PADDING:
            raise invalid(node, f"padding_mode '{a['padding_mode']}' is not one of {', '.join(PADDING)}")
        a["align_corners"] = int(a.get("align_corners", 0))
        a["opset"] = opset

    def infer(self, node):
        x, g = in_type(node, 0), in_type(node, 1)
        if x.dtype != "float32" or g.dtype != "float32":
            raise unsupported(node, f"needs float32 input and grid (got {x.dtype}, {g.dtype})")
        r = len(x.shape) - 2
        if r < 1 or len(g.shape) != r + 2:
            raise invalid(node, f"input {x.shape} and grid {g.shape}: want input (N, C, D1..Dr) and grid "
                                f"(N, D1_out..Dr_out, r)")
        if node.attrs["opset"] < 20 and r != 2:
            raise invalid(node, f"GridSample-{node.attrs['opset']} takes 4-D input (got {len(x.shape)}-D)")
        if g.shape[0] != x.shape[0] or g.shape[-1] != r:
            raise invalid(node, f"grid {g.shape} does not fit input {x.shape}: want ({x.shape[0]}, ..., {r})")
        if min(x.shape[2:], default=1) <= 0:
            raise invalid(node, f"empty input {x.shape}")
        if max(x.shape[2:]) > LIMIT / 4:
            raise unsupported(node, f"spatial sizes up to {int(LIMIT / 4)} are supported (input {x.shape})")
        return [TensorType("float32", (x.shape[0], x.shape[1]) + tuple(g.shape[1:-1]))]

    def macs(self, node):
        r = len(in_type(node).shape) - 2
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[node.attrs["mode"]] ** r
        return int(np.prod(node.outputs[0].type.shape)) * taps

    def _taps(self, mode):
        return {"nearest": [0], "linear": [0, 1], "cubic": [-1, 0, 1, 2]}[mode]

    def reference(self, node, x, grid):
        a = node.attrs
        mode, padding, align = a["mode"], a["padding_mode"], a["align_corners"]
        dims = x.shape[2:]
        r = len(dims)
        g = grid.astype(np.float64)
        per_axis = []  # per spatial axis: [(index array, weight array)] over grid positions
        for ax, d in enumerate(dims):
            lo, hi = _borders(d, align)
            pos = _position_np(g[..., r - 1 - ax], d, mode, padding, align)
            if mode == "nearest":
                base, w = np.trunc(pos), [np.ones(pos.shape)]
            else:
                base = np.floor(pos)
                t = pos - base
                w = [1 - t, t] if mode == "linear" else _cubic_weights(t)
            taps = []
            for off, wt in zip(self._taps(mode), w):
                idx, ok = _fetch_index_np(base.astype(np.int64) + off, d, padding, lo, hi)
                taps.append((idx, np.where(ok, wt, 0.0)))
            per_axis.append(taps)
        n_idx = np.arange(x.shape[0]).reshape((-1,) + (1,) * r)
        y = np.zeros((x.shape[1], x.shape[0]) + grid.shape[1:-1])
        xc = np.moveaxis(x.astype(np.float64), 1, -1)  # (N, D1..Dr, C)
        for combo in itertools.product(*per_axis):
            w = np.prod([wt for _, wt in combo], axis=0)
            v = xc[(n_idx,) + tuple(i for i, _ in combo)]  # (N, out..., C)
            y += np.moveaxis(v * w[..., None], -1, 0)
        return [np.moveaxis(y, 0, 1).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        a = node.attrs
        mode, padding, align = a["mode"], a["padding_mode"], a["align_corners"]
        x, grid, y = ins[0], ins[1], outs[0]
        dims = x.shape[2:]
        r = len(dims)
        with k.loops((y.shape[0],) + tuple(y.shape[2:])) as idx:
            n, o = idx[0], tuple(idx[1:])
            per_axis = []
            for ax, d in enumerate(dims):
                lo, hi = _borders(d, align)
                g = grid[(n,) + o + (r - 1 - ax,)]
                with k.precise():  # nearest's ties must fall as in float32 arithmetic
                    pos = (g + 1.0) * (0.5 * (d - 1)) if align else ((g + 1.0) * float(d) - 1.0) * 0.5
                if mode == "nearest":
                    pos = m.round_even(k, pos)
                if padding == "border":
                    outside = (pos < lo) | (pos > hi)
                    pos = k.select(outside, _clampf(k, pos, 0.0, d - 1.0), pos)
                elif padding == "reflection":
                    pos = _reflect(k, pos, lo, hi)
                # far outside every tap reads zero padding anyway; this bounds the integer index
                safe = _clampf(k, pos, -8.0, d + 8.0)
                if mode == "nearest":  # an integer already (ties to even), or far outside
                    base, w = _round_small(k, safe), [None]
                else:
                    base = _floor_small(k, safe)
                    t = pos - base
                    w = [1.0 - t, t] if mode == "linear" else _cubic_weights(t)
                taps = []
                for off, wt in zip(self._taps(mode), w):
                    i = _int_small(k, base) + off
                    ok = None
                    if padding == "zeros":
                        ok = (i >= 0) & (i < d)
                    elif padding == "reflection":
                        i = _reflect_index(k, i, d, align)
                    taps.append((k.min(k.max(i, 0), d - 1), ok, wt))
                per_axis.append(taps)
            combos = []
            for combo in itertools.product(*per_axis):
                ok, w = None, None
                for _, c_ok, c_w in combo:
                    if c_ok is not None:
                        ok = c_ok if ok is None else ok & c_ok
                    if c_w is not None:
                        w = c_w if w is None else w * c_w
                combos.append((tuple(i for i, _, _ in combo), ok, w))
            with k.loop(x.shape[1]) as c:
                total = None
                for at, ok, w in combos:
                    v = x[(n, c) + at]
                    if w is not None:
                        v = v * w
                    if ok is not None:
                        v = k.select(ok, v, k.lift(0.0, like=v))
                    total = v if total is None else total + v
                y[(n, c) + o] = total


@register("AffineGrid")
class AffineGrid(Op):
    own_inputs = 2
    shape_operands = (1,)

    def canonicalize(self, node, opset):
        a = node.attrs
        a["align_corners"] = int(a.get("align_corners", 0))
        size = const_input(node, 1, "size")
        if size is None:
            raise invalid(node, "needs the size input")
        a["size"] = [int(s) for s in np.asarray(size).reshape(-1)]
        node.inputs = node.inputs[:1]

    def infer(self, node):
        t, size = in_type(node), node.attrs["size"]
        if t.dtype != "float32":
            raise unsupported(node, f"needs float32 theta (got {t.dtype})")
        if len(size) not in (4, 5):
            raise invalid(node, f"size {size} must have 4 (N, C, H, W) or 5 (N, C, D, H, W) entries")
        r = len(size) - 2
        if min(size) <= 0:
            raise invalid(node, f"size {size} has an entry <= 0")
        if t.shape != (size[0], r, r + 1):
            raise invalid(node, f"theta {t.shape} does not fit size {size}: want ({size[0]}, {r}, {r + 1})")
        return [TensorType("float32", (size[0],) + tuple(size[2:]) + (r,))]

    def _base(self, i, n, align):
        """Normalized coordinate of index i along an axis of n points."""
        if align:
            return -1.0 if n == 1 else -1.0 + 2.0 * i / (n - 1)
        return (2.0 * i + 1.0) / n - 1.0

    def macs(self, node):
        r = len(node.attrs["size"]) - 2
        return int(np.prod(node.outputs[0].type.shape)) * r

    def reference(self, node, theta):
        size, align = node.attrs["size"], node.attrs["align_corners"]
        spatial = size[2:]
        axes = [self._base(np.arange(d, dtype=np.float64), d, align) for d in spatial]
        mesh = np.meshgrid(*axes, indexing="ij")  # D, H, W order
        homo = np.stack(list(mesh[::-1]) + [np.ones(mesh[0].shape)], axis=-1)  # (..., x y [z] 1)
        out = np.einsum("...i,nji->n...j", homo, theta.astype(np.float64))
        return [out.astype(theta.dtype)]

    def lower(self, k, node, ins, outs):
        theta, y = ins[0], outs[0]
        size, align = node.attrs["size"], node.attrs["align_corners"]
        spatial = size[2:]
        r = len(spatial)
        with k.loops(y.shape[:-1]) as idx:
            n, s = idx[0], idx[1:]
            base = []
            for i, d in zip(s, spatial):
                f = k.cast(k.lift(i), F32)
                if align:
                    base.append(k.lift(-1.0, like=f) if d == 1 else f * (2.0 / (d - 1)) - 1.0)
                else:
                    base.append((f * 2.0 + 1.0) * (1.0 / d) - 1.0)
            homo = base[::-1]  # x (last axis) first
            for j in range(r):
                acc = theta[(n, j, r)]
                for i in range(r):
                    acc = acc + theta[(n, j, i)] * homo[i]
                y[(n,) + tuple(s) + (j,)] = acc


@register("RoiAlign")
class RoiAlign(Op):
    """Each region of interest (x1, y1, x2, y2 in input pixels times spatial_scale) of batch
    item batch_indices[r], cut into output_height x output_width bins, each bin the average
    (or, mode max, the largest of the weighted corner values: onnx's reference and
    onnxruntime) of sampling_ratio^2 bilinear samples. Coordinates come at run time: a
    sample outside [-1, size] counts 0; every index is clamped into the input, a batch index
    too (out of range it is invalid input). sampling_ratio 0 (a grid that depends on each
    region's size) is not supported."""

    def canonicalize(self, node, opset):
        a = node.attrs
        a["mode"] = _text(a.get("mode"), "avg")
        ctm = _text(a.get("coordinate_transformation_mode"), "half_pixel" if opset >= 16 else "output_half_pixel")
        if a["mode"] not in ("avg", "max") or ctm not in ("half_pixel", "output_half_pixel"):
            raise invalid(node, f"mode {a['mode']!r} or coordinate_transformation_mode {ctm!r} is not defined")
        a["half_pixel"] = ctm == "half_pixel"
        a.pop("coordinate_transformation_mode", None)
        for key, default in (("output_height", 1), ("output_width", 1), ("sampling_ratio", 0)):
            a[key] = int(a.get(key, default))
        a["spatial_scale"] = float(a.get("spatial_scale", 1.0))
        if a["output_height"] < 1 or a["output_width"] < 1 or a["sampling_ratio"] < 0:
            raise invalid(node, "output_height and output_width must be positive, sampling_ratio >= 0")
        if a["sampling_ratio"] == 0:
            raise unsupported(node, "sampling_ratio 0 (a sampling grid sized by each region at run time) is "
                                    "not supported; give a positive sampling_ratio")

    def infer(self, node):
        x, rois, bi = (in_type(node, i) for i in range(3))
        if x.dtype != "float32" or rois.dtype != "float32":
            raise unsupported(node, f"needs float32 X and rois, got {x.dtype} and {rois.dtype}")
        if len(x.shape) != 4 or len(rois.shape) != 2 or rois.shape[1] != 4:
            raise invalid(node, f"needs X [N, C, H, W] and rois [R, 4], got {list(x.shape)} and {list(rois.shape)}")
        if bi.dtype not in ("int64", "int32") or bi.shape != rois.shape[:1]:
            raise invalid(node, f"batch_indices must be int64 of shape [{rois.shape[0]}], got {bi.dtype}{list(bi.shape)}")
        return [TensorType("float32", (rois.shape[0], x.shape[1], node.attrs["output_height"],
                                       node.attrs["output_width"]))]

    def reference(self, node, x, rois, bi):
        a = node.attrs
        _, c_, h, w = x.shape
        oh, ow, g = a["output_height"], a["output_width"], a["sampling_ratio"]
        y = np.zeros((rois.shape[0], c_, oh, ow), np.float64)
        off = 0.5 if a["half_pixel"] else 0.0
        for r in range(rois.shape[0]):
            img = x[min(max(int(bi[r]), 0), x.shape[0] - 1)].astype(np.float64)
            sw, sh, ew, eh = (float(v) * a["spatial_scale"] - off for v in rois[r])
            rw, rh = ew - sw, eh - sh
            if not a["half_pixel"]:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            for ph, pw in np.ndindex(oh, ow):
                vals = []
                for iy, ix in np.ndindex(g, g):
                    yy = sh + ph * rh / oh + (iy + 0.5) * rh / oh / g
                    xx = sw + pw * rw / ow + (ix + 0.5) * rw / ow / g
                    if not (-1.0 <= yy <= h and -1.0 <= xx <= w):
                        vals.append(np.zeros(c_))
                        continue
                    yy, xx = max(yy, 0.0), max(xx, 0.0)
                    yl, xl = int(yy), int(xx)
                    yl, yh, yy = (h - 1, h - 1, float(h - 1)) if yl >= h - 1 else (yl, yl + 1, yy)
                    xl, xh, xx = (w - 1, w - 1, float(w - 1)) if xl >= w - 1 else (xl, xl + 1, xx)
                    ly, lx = yy - yl, xx - xl
                    terms = [(1 - ly) * (1 - lx) * img[:, yl, xl], (1 - ly) * lx * img[:, yl, xh],
                             ly * (1 - lx) * img[:, yh, xl], ly * lx * img[:, yh, xh]]
                    vals.append(sum(terms) if a["mode"] == "avg" else np.max(terms, axis=0))
                y[r, :, ph, pw] = np.mean(vals, axis=0) if a["mode"] == "avg" else np.max(vals, axis=0)
        return [y.astype(np.float32)]

    def lower(self, k, node, ins, outs):
        a = node.attrs
        x, rois, bi, y = ins[0], ins[1], ins[2], outs[0]
        n_, c_, h, w = x.shape
        oh, ow, g = a["output_height"], a["output_width"], a["sampling_ratio"]
        idx_t = k.lift(0).v.type
        off = 0.5 if a["half_pixel"] else 0.0

        def fl(v):
            return k.cast(k.lift(v), F32)

        with k.loop(rois.shape[0]) as r:
            b = k.cast(bi[(r,)], idx_t)
            b = k.min(k.max(b, 0), n_ - 1)
            sw, sh, ew, eh = (rois[(r, j)] * a["spatial_scale"] - off for j in range(4))
            rw, rh = ew - sw, eh - sh
            if not a["half_pixel"]:
                rw, rh = k.max(rw, 1.0), k.max(rh, 1.0)
            bh, bw = rh * (1.0 / oh), rw * (1.0 / ow)
            with k.loops((oh, ow, c_)) as (ph, pw, c):
                acc = k.var(0.0 if a["mode"] == "avg" else float("-inf"))
                with k.loops((g, g)) as (iy, ix):
                    yy = sh + fl(ph) * bh + (fl(iy) + 0.5) * bh * (1.0 / g)
                    xx = sw + fl(pw) * bw + (fl(ix) + 0.5) * bw * (1.0 / g)
                    inside = (yy >= -1.0) & (yy <= float(h)) & (xx >= -1.0) & (xx <= float(w))  # false for NaN
                    corners = []
                    for v, d in ((yy, h), (xx, w)):
                        v = k.select(inside, k.max(v, 0.0), 0.0)  # now in [0, d]
                        lo = k.cast(v, idx_t)
                        edge = lo >= d - 1
                        lo = k.select(edge, d - 1, lo)
                        hi = k.select(edge, d - 1, lo + 1)
                        frac = k.select(edge, 0.0, v - fl(lo))
                        corners.append((lo, hi, frac))
                    (yl, yh, ly), (xl, xh, lx) = corners
                    terms = [(1.0 - ly) * (1.0 - lx) * x[b, c, yl, xl], (1.0 - ly) * lx * x[b, c, yl, xh],
                             ly * (1.0 - lx) * x[b, c, yh, xl], ly * lx * x[b, c, yh, xh]]
                    if a["mode"] == "avg":
                        acc.value = acc.value + k.select(inside, terms[0] + terms[1] + terms[2] + terms[3], 0.0)
                    else:
                        best = k.max(k.max(terms[0], terms[1]), k.max(terms[2], terms[3]))
                        acc.value = k.max(acc.value, k.select(inside, best, 0.0))
                y[r, c, ph, pw] = acc.value * (1.0 / (g * g)) if a["mode"] == "avg" else acc.value
