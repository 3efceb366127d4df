"""Cheaper shapes for Conv's derivative nodes (Conv.vjp), so that the training step
runs them through the scheduled kernels instead of plain loops:

- the input gradient of a stride-1 convolution (pointwise, depthwise, any group and
  dilation) as a Conv of the cotangent with the weights flipped in space and their
  channels swapped per group, the cotangent padded by (k - 1) * d - p on each side; the
  weights are run-time parameters in a training step, and the pointwise and depthwise
  conv schedules read run-time weights; of a stride-2 one (2-D) as one stride-1 Conv per
  phase of the input, the phases interleaved back (with a dilation or in other ranks: the
  stride-1 form over the cotangent spread out with zeros); of a pointwise one over a map
  of a few pixels (one image) as a Gemm reading the weights transposed, no Transpose;
- the weight gradient of a small ungrouped kernel as one Gemm per tap (a pointwise
  convolution's: one Gemm) of the cotangent and the input read channels-last;
- the weight gradient of an ungrouped one-image convolution with fewer input channels than
  lanes (a stem) as one Conv over the input, its channels as the batch, dy as the kernel;
- the weight gradient of a depthwise convolution (channel multiplier 1) as one depthwise
  Conv over the input with the cotangent as its kernel, the batch folded into its channels
  (with a batch of one, no Transpose: the general form swaps batch and channels of both
  operands and of the result), its output row (the kernel's width) widened by zero padding
  to whole vectors of the target (3 columns: 4, one register, not a half and a scalar) and
  cropped back. (Forms that build each tap's product from graph ops, a Slice per tap or
  the taps stacked for one Mul and ReduceSum, MatMul or Einsum, are slower: each Slice,
  Mul and Concat is about an instruction per element, and the stack alone is nine copies.)

Each returns None where it does not apply; the caller then builds the general form."""
from __future__ import annotations

import numpy as np

from ..schedules import MAX_UNROLLED_TAPS, REDUCE_MAX_COLUMNS, REDUCE_MAX_OUTPUTS
from ..schedules.cost import vector_chunks


# input_grad_as_conv: a pointwise conv's dx as a transA Gemm below this many pixels
GEMM_POSITIONS = 16


def input_grad_as_conv(b, g, w, xs, ws, groups, strides, dilations, pads):
    """dx of Conv(x, w) from its cotangent g, as a Conv (stride 1 only). Per group of m
    output and cg input channels: dx[c] = sum_j conv(pad(g[j]), flip(w[j, c]))."""
    rank = len(xs) - 2
    if any(s != 1 for s in strides):
        return None
    k = list(ws[2:])
    span = [(k[i] - 1) * dilations[i] for i in range(rank)]
    new_pads = [span[i] - pads[i] for i in range(rank)] + [span[i] - pads[rank + i] for i in range(rank)]
    if min(new_pads) < 0:  # padding wider than the kernel: no such Conv; the general form
        return None
    positions = int(np.prod(xs[2:]))
    if groups == 1 and xs[0] == 1 and all(v == 1 for v in k) and not any(pads) and positions < GEMM_POSITIONS:
        # pointwise, one image, a small map: W^T dy as a Gemm reading W transposed (transA),
        # no Transpose of the weights (a copy as large as they are, per step; with many
        # channels over few pixels it is most of the work, and the conv's tile, along the
        # pixels, is mostly tails); over larger maps the Conv with the Transpose is cheaper
        o, c = ws[0], ws[1]
        gx = b.op("Gemm", [b.reshape(w, (o, c)), b.reshape(g, (o, positions))], alpha=1.0, beta=1.0,
                  transA=1, transB=0)
        return b.reshape(gx, xs)
    wt = _swapped(b, w, ws, groups)
    flip = [i for i in range(rank) if k[i] > 1]
    if flip:
        shape = wt.type.shape
        wt = b.op("Slice", [wt], begin=[0, 0] + [k[i] - 1 if i in flip else 0 for i in range(rank)],
                  step=[1, 1] + [-1 if i in flip else 1 for i in range(rank)], count=list(shape))
    return b.op("Conv", [g, wt], group=groups, kernel_shape=k, strides=[1] * rank, dilations=list(dilations),
                pads=new_pads)


def _swapped(b, w, ws, groups):
    """(groups * m, cg, k...) -> (groups * cg, m, k...): the weights' channels swapped within
    each group (the input gradient's Conv reads output channels and writes input ones)."""
    rank = len(ws) - 2
    o, cg, k = ws[0], ws[1], list(ws[2:])
    m = o // groups
    if m == 1 and cg == 1:
        return w
    if groups == 1:
        return b.op("Transpose", [w], perm=[1, 0, *range(2, rank + 2)])
    wt = b.reshape(w, (groups, m, cg, *k))
    wt = b.op("Transpose", [wt], perm=[0, 2, 1, *range(3, rank + 3)])
    return b.reshape(wt, (groups * cg, m, *k))


def _phase(k_, s, p, x, y, r):
    """Along one axis, the inputs s * a + r (a < ceil(x / s)) of a Conv of kernel k_, stride s,
    begin pad p: the taps that reach them (every s-th from q), and the stride-1 window over
    the cotangent that gives them: (q, taps, begin pad, end pad) of a Conv with those taps
    reversed. Pads may be negative (the cotangent then cropped)."""
    q = (r + p) % s
    taps = len(range(q, k_, s))
    c = (r + p - q) // s
    a = -(-x // s)
    begin = taps - 1 - c
    return q, taps, begin, a + taps - 1 - begin - y


def subpixel_input_grad(b, g, w, xs, ws, groups, strides, dilations, pads):
    """dx of a 2-D Conv of stride 2 (in either axis) as one stride-1 Conv per phase of the
    input (its even and odd rows and columns), each over the cotangent with the taps that
    reach that phase, the phases interleaved back: every MAC of the ConvTranspose and no
    more, in the scheduled kernels. None for other ranks, strides or dilations."""
    rank = len(xs) - 2
    if rank != 2 or any(s not in (1, 2) for s in strides) or all(s == 1 for s in strides) or any(
            d != 1 for d in dilations):
        return None
    n, o = g.type.shape[:2]
    c_in = xs[1]
    ys = g.type.shape[2:]
    sw = _swapped(b, w, ws, groups)
    tall = [-(-xs[2 + i] // strides[i]) for i in range(rank)]  # each phase's output length
    rows = []
    for ry in range(strides[0]):
        cols = []
        for rx in range(strides[1]):
            ph = [_phase(ws[2 + i], strides[i], pads[i], xs[2 + i], ys[i], (ry, rx)[i]) for i in range(rank)]
            if any(t == 0 for _, t, _, _ in ph):  # no tap reaches these inputs: their gradient is 0
                out = b.g.const("zero", np.zeros((n, c_in, *tall), np.float32))
            else:
                sub = b.op("Slice", [sw], begin=[0, 0] + [q + strides[i] * (t - 1) for i, (q, t, _, _) in enumerate(ph)],
                           step=[1, 1] + [-strides[i] for i in range(rank)],
                           count=list(sw.type.shape[:2]) + [t for _, t, _, _ in ph])
                src = g
                if min(v for _, _, bp, ep in ph for v in (bp, ep)) < 0:  # a negative pad crops the cotangent
                    crop = [(max(-bp, 0), ys[i] - max(-ep, 0)) for i, (_, _, bp, ep) in enumerate(ph)]
                    src = b.op("Slice", [g], begin=[0, 0] + [lo for lo, _ in crop], step=[1] * (2 + rank),
                               count=[n, o] + [hi - lo for lo, hi in crop])
                out = b.op("Conv", [src, sub], group=groups, kernel_shape=[t for _, t, _, _ in ph],
                           strides=[1] * rank, dilations=[1] * rank,
                           pads=[max(bp, 0) for _, _, bp, _ in ph] + [max(ep, 0) for _, _, _, ep in ph])
            cols.append(b.reshape(out, (n, c_in, tall[0], 1, tall[1], 1)))
        rows.append(b.op("Concat", cols, axis=5) if len(cols) > 1 else cols[0])
    woven = b.op("Concat", rows, axis=3) if len(rows) > 1 else rows[0]
    full = [tall[i] * strides[i] for i in range(rank)]
    dx = b.reshape(woven, (n, c_in, *full))
    if full != list(xs[2:]):
        dx = b.op("Slice", [dx], begin=[0] * (2 + rank), step=[1] * (2 + rank), count=list(xs))
    return dx


def strided_input_grad_as_conv(b, g, w, xs, ws, groups, strides, dilations, pads):
    """dx of a Conv of stride 2 (in any spatial axis; 1 in the others) as the stride-1 form
    (input_grad_as_conv) over the cotangent spread out: s - 1 zeros after each element, and
    at the end the input rows no window reaches. A quarter of its MACs multiply a zero, yet
    the scheduled kernels run it several times faster than the plain ConvTranspose loops.
    None for larger strides (the zeros would outweigh the gain) and where the stride-1
    form does not apply."""
    rank = len(xs) - 2
    if all(s == 1 for s in strides) or any(s > 2 for s in strides):
        return None
    n, o, *sp = g.type.shape
    spread = b.reshape(g, (n, o, *[d for y in sp for d in (y, 1)]))
    spread = b.op("Pad", [spread], pads=[0] * (2 + 2 * rank) + [0, 0, *[d for s in strides for d in (0, s - 1)]],
                  mode="constant", value=0.0)
    grown = [y * s for y, s in zip(sp, strides)]
    spread = b.reshape(spread, (n, o, *grown))
    # the stride-1 form's input length: every cotangent row spread, then the rows past the last window
    span = [(sp[i] - 1) * strides[i] + (ws[2 + i] - 1) * dilations[i] + 1 for i in range(rank)]
    want = [(sp[i] - 1) * strides[i] + 1 + xs[2 + i] + pads[i] + pads[rank + i] - span[i] for i in range(rank)]
    if any(w_ < g_ for w_, g_ in zip(want, grown)):
        spread = b.op("Slice", [spread], begin=[0] * (2 + rank), step=[1] * (2 + rank),
                      count=[n, o, *[min(w_, g_) for w_, g_ in zip(want, grown)]])
    if any(w_ > g_ for w_, g_ in zip(want, grown)):
        spread = b.op("Pad", [spread], pads=[0] * (2 + rank) + [0, 0, *[max(w_ - g_, 0) for w_, g_ in zip(want, grown)]],
                      mode="constant", value=0.0)
    return input_grad_as_conv(b, spread, w, xs, ws, groups, [1] * rank, dilations, pads)


def _channel_rows(b, v, channels: int, positions: int):
    """(N, C, spatial...) -> (C, N * spatial): a weight gradient's Gemm operand."""
    if v.type.shape[0] != 1:
        v = b.op("Transpose", [v], perm=[1, 0, *range(2, len(v.type.shape))])
    return b.reshape(v, (channels, positions))


# weight_grad_by_taps: kernels of at most this many taps
TAPS_MAX = 25


def weight_grad_by_taps(b, x, g, xs, ws, ys, strides, dilations, pads, groups):
    """dw of an ungrouped Conv with a small kernel, as one Gemm per tap: dw[:, :, t] = dy (O x P)
    times x_t (P x C), x_t the padded input seen from tap t, P the batch times the output
    positions. A pointwise conv is one Gemm; ResNet's 3x3s over 32x32 maps (whose
    weight-gradient Conv has a 32x32 "kernel" and runs as the plain loop nest), its 3-channel
    stem and its strided 1x1 shortcuts are nine or one. The input is transposed to
    channels-last once, so each x_t is a strided Slice of it (none where the tap sees all of
    it) already in the layout the Gemm's register tile reads (P x C, not C x P transposed)."""
    rank = len(xs) - 2
    taps = int(np.prod(ws[2:]))
    if groups != 1 or taps > TAPS_MAX:
        return None
    n, c, o = xs[0], xs[1], ws[0]
    positions = n * int(np.prod(ys[2:]))

    xp = x
    if any(pads):
        xp = b.op("Pad", [x], pads=[0, 0, *pads[:rank], 0, 0, *pads[rank:]], mode="constant", value=0.0)
    last = b.op("Transpose", [xp], perm=[0, *range(2, rank + 2), 1])  # (N, spatial..., C)
    dy = _channel_rows(b, g, o, positions)
    cols = []
    for tap in np.ndindex(*ws[2:]):
        xt = last
        if any(tap) or list(strides) != [1] * rank or last.type.shape[1:-1] != tuple(ys[2:]):
            xt = b.op("Slice", [last], begin=[0] + [tap[i] * dilations[i] for i in range(rank)] + [0],
                      step=[1, *strides, 1], count=[n, *ys[2:], c])
        gw = b.op("Gemm", [dy, b.reshape(xt, (positions, c))], alpha=1.0, beta=1.0, transA=0, transB=0)
        cols.append(b.reshape(gw, (o, c, 1)))
    return b.reshape(b.op("Concat", cols, axis=2) if len(cols) > 1 else cols[0], ws)


def _widened(kw: int, vector) -> int:
    """The output row length a depthwise weight gradient's Conv computes for kw taps: kw,
    or a few more columns where that takes fewer vectors (3 columns are a half and a scalar
    in 4 lanes, 4 are one register), at most a third more MACs. No vector unit known: a
    4-lane one without masked tails (NEON, SSE)."""
    lanes = vector.lanes if vector is not None else 4
    masked = bool(getattr(vector, "masked_tails", False))
    if lanes <= 1:
        return kw
    steps = len(vector_chunks(kw, lanes, masked))
    for wide in range(kw + 1, kw + kw // 3 + 1):
        if len(vector_chunks(wide, lanes, masked)) < steps:
            return wide
    return kw


def depthwise_weight_grad(b, x, g, xs, ws, ys, strides, dilations, pads, groups, vector=None):
    """dw of a depthwise Conv (groups == input channels == output channels): dw[c, 0, t] = the
    sum over the batch and output positions of dy[n, c, p] * x_t[n, c, p]. One depthwise Conv
    over the padded input with dy as its kernel (strides and dilations trade places), the
    batch folded into its channels (group c reads the N images of channel c); with a batch
    of one, no Transpose at all (the general form swaps a batch of 1 with the channels). Its
    output row (the kernel's width, 3 for a 3x3) is widened by zero columns to whole vectors
    (_widened: 4 columns, one register, not a half and a scalar) and cropped back. None for
    other convolutions."""
    rank = len(xs) - 2
    n, c = xs[0], xs[1]
    if not (groups == c == ws[0] and ws[1] == 1):
        return None
    xv, end = reached_input(b, x, xs, ws, ys, strides, dilations, pads)
    kw = ws[-1]
    # the scheduled depthwise tile runs kernels (here dy) of at most MAX_UNROLLED_TAPS taps;
    # the plain loop nest gains nothing from the extra columns
    wide = _widened(kw, vector) if rank == 2 and int(np.prod(ys[2:])) <= MAX_UNROLLED_TAPS else kw
    end[-1] += (wide - kw) * dilations[-1]  # one more output column per dilation of padding
    if n == 1:
        xin = b.reshape(xv, (1, c, *xv.type.shape[2:]))
        kern = b.reshape(g, (c, 1, *ys[2:]))
    else:
        swap = [1, 0, *range(2, rank + 2)]
        xin = b.reshape(b.op("Transpose", [xv], perm=swap), (1, c * n, *xv.type.shape[2:]))
        kern = b.op("Transpose", [g], perm=swap)  # (C, N, dy...): group c's N input channels
    out = b.op("Conv", [xin, kern], group=c, kernel_shape=list(ys[2:]), strides=list(dilations),
               dilations=list(strides), pads=list(pads[:rank]) + end)
    if wide != kw:
        out = b.op("Slice", [out], begin=[0] * (rank + 2), step=[1] * (rank + 2), count=[1, c, *ws[2:]])
    return b.reshape(out, ws)


def few_channel_weight_grad(b, x, g, xs, ws, ys, strides, dilations, pads, groups, vector=None):
    """dw of an ungrouped 2-D Conv of one image with fewer input channels than a vector has
    lanes (a network's stem: 3 colour channels), as one Conv over the input with its
    channels as the batch and dy as the kernel (strides and dilations trade places), run by
    the "conv-taps-reduce" tile: vectors along dy's rows, one accumulator per tap of the
    real kernel. A Gemm per tap (weight_grad_by_taps) would multiply matrices a few columns
    wide (the channels), which the register tile fills poorly. None for other convolutions
    or where that tile would not take the Conv."""
    rank = len(xs) - 2
    n, c, o = xs[0], xs[1], ws[0]
    lanes = vector.lanes if vector is not None else 4
    if rank != 2 or groups != 1 or n != 1 or not 1 < lanes or c >= lanes:
        return None
    if int(np.prod(ws[2:])) > REDUCE_MAX_OUTPUTS or not lanes <= ys[-1] <= REDUCE_MAX_COLUMNS or int(
            np.prod(ys[2:])) <= MAX_UNROLLED_TAPS:
        return None
    xv, end = reached_input(b, x, xs, ws, ys, strides, dilations, pads)
    xin = b.reshape(xv, (c, 1, *xv.type.shape[2:]))  # the channels as the batch (one image: no Transpose)
    kern = b.reshape(g, (o, 1, *ys[2:]))
    out = b.op("Conv", [xin, kern], group=1, kernel_shape=list(ys[2:]), strides=list(dilations),
               dilations=list(strides), pads=list(pads[:rank]) + end)  # (C, O, k...)
    return b.op("Transpose", [out], perm=[1, 0, 2, 3])


def bias_grad(b, g):
    """A bias's gradient: dy summed over the batch and the positions, each channel's
    positions as one row (a loop LLVM vectorizes, not one of the last axis's length)."""
    n, o = g.type.shape[:2]
    rows = b.reshape(g, (n, o, int(np.prod(g.type.shape[2:]))))
    return b.op("ReduceSum", [rows], axes=[0, 2], keepdims=0)


def reached_input(b, x, xs, ws, ys, strides, dilations, pads):
    """(x, end padding) for a weight gradient's Conv over x with dy as its kernel: the end
    padding its windows reach, and x with the trailing rows and columns no window reaches
    cropped off (a Slice; the padding then 0 there)."""
    rank = len(xs) - 2
    span = [(ys[2 + i] - 1) * strides[i] + (ws[2 + i] - 1) * dilations[i] + 1 for i in range(rank)]
    end = [span[i] - xs[2 + i] - pads[i] for i in range(rank)]
    if min(end) >= 0:
        return x, end
    count = [*xs[:2], *(xs[2 + i] + min(end[i], 0) for i in range(rank))]
    return b.op("Slice", [x], begin=[0] * len(xs), step=[1] * len(xs), count=count), [max(e, 0) for e in end]
