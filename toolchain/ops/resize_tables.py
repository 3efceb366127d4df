"""Resize through per-axis tap tables: for each output index along a resized axis, the input
indices it reads and their weights, computed at compile time (shapes, scales and roi are
constants) from the ONNX formulas. Used for cubic interpolation, antialiased (widened)
linear and cubic filters, tf_crop_and_resize (an output whose source lies outside the
input takes extrapolation_value) and half_pixel_symmetric; resize.py's Resize decides.

The taps follow the spec's convention: a source coordinate x splits into a base and a
ratio in (0, 1] (an integer x is base x - 1, ratio 1), a filter of n taps reads
base - n/2 + 1 ... base + n/2 with the input padded by its edge values (indices clamped),
and with exclude_outside the taps outside the input get weight 0 and the rest are scaled
back to sum 1."""
from __future__ import annotations

import numpy as np

from ..kernel.llvm import F32


def _coordinates(a, ax, n, out):
    """Source coordinate of each output index along axis ax (float64), and the mask of the
    ones inside the input (all, except for tf_crop_and_resize)."""
    coord, scale = a["coord"], a["scales"][ax]
    o = np.arange(out, dtype=np.float64)
    inside = np.ones(out, bool)
    if coord == "asymmetric":
        x = o / scale
    elif coord == "align_corners":
        x = np.zeros(out) if out == 1 else o * ((n - 1) / (out - 1))
    elif coord == "pytorch_half_pixel":
        x = np.zeros(out) if out == 1 else (o + 0.5) / scale - 0.5
    elif coord == "half_pixel":
        x = (o + 0.5) / scale - 0.5
    elif coord == "half_pixel_symmetric":
        adjustment = out / (scale * n)
        x = n / 2 * (1 - adjustment) + (o + 0.5) / scale - 0.5
    else:  # tf_crop_and_resize, in float32 as the roi is (a tie in nearest rounding falls as there)
        f = np.float32
        roi = a["roi"]
        start, end, last = f(roi[ax]), f(roi[len(a["scales"]) + ax]), f(n - 1)
        if out > 1:
            x = start * last + o.astype(f) * (end - start) * last / f(out - 1)
        else:
            x = np.full(out, f(0.5) * (start + end) * last)
        x = x.astype(np.float64)
        inside = (x >= 0) & (x <= n - 1)
    return x, inside


def _cubic(d, A):
    """Keys' cubic convolution kernel at distances d."""
    d = np.abs(d)
    near = ((A + 2) * d - (A + 3)) * d * d + 1
    far = ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _filter(a, ratio, scale):
    """(offsets from the base, weights), each (out, n), of the taps for these ratios."""
    mode, nearest = a["mode"], a.get("nearest_mode")
    r = ratio[:, None]
    if mode == "nearest":
        whole = ratio == 1.0  # an integer coordinate reads itself
        right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                 "floor": np.zeros(ratio.shape, bool), "ceil": np.ones(ratio.shape, bool)}[nearest] | whole
        return np.array([0, 1]), np.stack([~right, right], axis=1).astype(np.float64)
    s = min(scale, 1.0) if a.get("antialias") else 1.0
    support = 1 if mode == "linear" else 2  # the filter's half-width at scale 1
    first = int(np.floor(-support / s) + 1)
    offsets = np.arange(first, 2 - first)
    d = (offsets[None, :] - r) * s
    w = np.clip(1 - np.abs(d), 0, 1) if mode == "linear" else _cubic(d, a["cubic_coeff_a"])
    if a.get("antialias"):
        w = w / w.sum(axis=1, keepdims=True)
    return offsets, w


def axis_table(a, ax, n, out):
    """(indices (out, taps) into the axis, weights (out, taps), inside mask (out,))."""
    x, inside = _coordinates(a, ax, n, out)
    base = np.floor(x)
    ratio = x - base
    whole = ratio == 0
    ratio = np.where(whole, 1.0, ratio)
    base = np.where(whole, base - 1, base)
    offsets, w = _filter(a, ratio, a["scales"][ax])
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    if a.get("exclude_outside"):
        w = np.where((idx < 0) | (idx >= n), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, n - 1)
    idx[~inside], w[~inside] = 0, 0.0
    return idx, w, inside


def reference(a, y, moved):
    """numpy: each moved axis resized in turn (the filters are separable); an output whose
    source lies outside the input along any axis takes extrapolation_value."""
    outside = np.zeros((1,) * y.ndim, bool)
    for ax in moved:
        idx, w, inside = axis_table(a, ax, y.shape[ax], a["out_shape"][ax])
        shape = [1] * y.ndim
        shape[ax] = -1
        y = sum(np.take(y, idx[:, t], axis=ax) * w[:, t].reshape(shape) for t in range(idx.shape[1]))
        outside = outside | ~inside.reshape(shape)
    return np.where(outside, a["extrapolation_value"], y)


def lower(k, a, x, y, moved):
    """Per output element: the sum over every moved axis's taps (a loop nest of static trip
    counts) of input times the product of the weights."""
    tables = []
    for ax in moved:
        idx, w, inside = axis_table(a, ax, x.shape[ax], a["out_shape"][ax])
        tables.append((ax, k.constant(idx.astype(np.int32)), k.constant(w.astype(np.float32)), idx.shape[1],
                       None if inside.all() else k.constant(inside.astype(np.float32))))
    with k.loops(y.shape) as idx:
        acc = k.var(k.lift(0.0, like=F32))

        def taps(level, at, weight):
            if level == len(tables):
                v = x[tuple(at)]
                acc.value = acc.value + (v if weight is None else v * weight)
                return
            ax, it, wt, n, _ = tables[level]
            with k.loop(n) as t:
                here = list(at)
                here[ax] = k.cast(it[(idx[ax], t)], k.index)
                w = wt[(idx[ax], t)]
                taps(level + 1, here, w if weight is None else weight * w)

        taps(0, list(idx), None)
        value = acc.value
        ok = None
        for ax, _, _, _, inside in tables:
            if inside is not None:
                c = inside[(idx[ax],)] > 0.5
                ok = c if ok is None else ok & c
        if ok is not None:
            value = k.select(ok, value, k.lift(a["extrapolation_value"], like=value))
        y[idx] = value
