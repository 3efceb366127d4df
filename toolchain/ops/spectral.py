"""Spectral ops: DFT, STFT and MelWeightMatrix.

DFT and STFT are lowered as a product with constant twiddle tables. The transform of one
signal is linear, so its matrix is the transform of the unit vectors: the tables are that,
taken at compile time with numpy's FFT in float64 (every mode alike: forward, inverse, onesided,
the inverse of a onesided spectrum, a dft_length that pads or truncates) and rounded once to the
element type. Each output bin is then a dot product over the transformed axis: O(n_out * n_in)
multiply-adds per transform (O(n^2), against an FFT's O(n log n)), and tables of
n_out * n_in values per real/imaginary pair (at most four). That is cheap for the frame sizes
edge models use (a few hundred points) and the inner loop has no data-dependent control. A
complex signal is [..., 2] (real, imaginary); a real one [..., 1].

Sizes that decide shapes (dft_length, axis, frame_step, frame_length, every input of
MelWeightMatrix) must be compile-time constants. MelWeightMatrix is then a constant: folded."""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from ..kernel.llvm import LLVM_TYPES
from .base import Op, const_input, in_type, invalid, register, unsupported

FLOATS = ("float32", "float64")


def _scalar(node, i, what, default=None, kinds="iu"):
    v = const_input(node, i, what)
    if v is None:
        if default is None:
            raise invalid(node, f"needs {what} (input {i})")
        return default
    v = np.asarray(v)
    if v.size != 1 or v.dtype.kind not in kinds:
        raise invalid(node, f"{what} must be a scalar, got {v.dtype}{list(v.shape)}")
    return v.reshape(-1)[0]


def _transform(z, n, inverse, onesided, axis=0):
    """The 1-D transform of complex z along `axis`, in numpy (float64/complex128)."""
    if inverse and onesided:
        return np.fft.irfft(z, n=n, axis=axis).astype(np.complex128)
    r = np.fft.ifft(z, n=n, axis=axis) if inverse else np.fft.fft(z, n=n, axis=axis)
    if onesided:
        r = np.take(r, np.arange(n // 2 + 1), axis=axis)
    return r


def _out_len(n, inverse, onesided):
    return n if inverse or not onesided else n // 2 + 1


def _tables(n_in, n, inverse, onesided, complex_in, complex_out, dtype):
    """{(out part, in part): [n_out, n_in] matrix}, parts 0 = real, 1 = imaginary; only the
    pairs that take part (a real input has no imaginary column, a real output no imaginary row)."""
    eye = np.eye(n_in, dtype=np.complex128)
    parts = {}
    for p in range(1 + complex_in):
        m = _transform(eye * (1j if p else 1), n, inverse, onesided)  # [n_out, n_in]
        for q, part in enumerate((m.real, m.imag)[:1 + complex_out]):
            parts[(q, p)] = part.astype(dtype)
    return parts


def _complex(x):
    """[..., 1|2] -> complex128 [...]."""
    x = x.astype(np.float64)
    return x[..., 0] + 1j * x[..., 1] if x.shape[-1] == 2 else x[..., 0].astype(np.complex128)


def _lower_dot(k, outer, n_out, n_in, tables, dtype, load, store):
    """For every index of `outer` and every output bin f: the sums over n of table[f, n]
    times the input's part; load(oi, n) -> [real, imaginary or None], store(oi, f, parts)."""
    consts = {key: k.constant(t) for key, t in tables.items()}
    n_parts = 1 + max(q for q, _ in tables)
    zero = k.lift(0.0, like=LLVM_TYPES[dtype])
    with k.loops(outer) as oi:
        with k.loop(n_out) as f:
            accs = [k.var(zero) for _ in range(n_parts)]
            with k.loop(n_in) as n:
                xs = load(oi, n)
                for q in range(n_parts):
                    s = accs[q].value
                    for (qq, p), t in consts.items():
                        if qq == q:
                            s = s + t[(f, n)] * xs[p]
                    accs[q].value = s
            store(oi, f, [a.value for a in accs])


@register("DFT")
class DFT(Op):
    """opset 17: axis an attribute (default 1), dft_length input 1; opset 20: axis input 2
    (default -2). Output: the input's shape with the axis n (inverse) or n // 2 + 1 (onesided
    forward) long, and a last dim of 2, or 1 for the inverse of a onesided spectrum (irfft)."""
    shape_operands = (1, 2)

    def canonicalize(self, node, opset):
        t = in_type(node)
        rank = len(t.shape)
        if rank < 2 or t.shape[-1] not in (1, 2):
            raise invalid(node, f"needs an input [..., 1 or 2] (real or complex), got shape {list(t.shape)}")
        if opset >= 20:
            axis = int(_scalar(node, 2, "axis", default=-2))
        else:
            axis = int(node.attrs.get("axis", 1))
        if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
            raise invalid(node, f"axis {axis} out of range for rank {rank} (the last dim is the complex one)")
        axis %= rank
        inverse, onesided = int(node.attrs.get("inverse", 0)), int(node.attrs.get("onesided", 0))
        if inverse not in (0, 1) or onesided not in (0, 1):
            raise invalid(node, f"inverse and onesided must be 0 or 1, got {inverse} and {onesided}")
        if onesided and not inverse and t.shape[-1] == 2:
            raise invalid(node, "a onesided transform needs a real input (last dim 1), got a complex one")
        default = 2 * (t.shape[axis] - 1) if inverse and onesided else t.shape[axis]
        n = int(_scalar(node, 1, "dft_length", default=default))
        if n < 1:
            raise unsupported(node, f"a dft_length of {n} (an empty output) is not supported")
        node.attrs.clear()
        node.attrs.update(axis=axis, n=n, inverse=inverse, onesided=onesided)
        node.inputs = node.inputs[:1]

    def _io(self, node):
        a, t = node.attrs, in_type(node)
        irfft = a["inverse"] and a["onesided"]
        shape = list(t.shape)
        shape[a["axis"]] = _out_len(a["n"], a["inverse"], a["onesided"])
        shape[-1] = 1 if irfft else 2
        return t, tuple(shape)

    def infer(self, node):
        t, shape = self._io(node)
        if t.dtype not in FLOATS:
            raise unsupported(node, f"{t.dtype} is not supported (float32, float64)")
        return [TensorType(t.dtype, shape)]

    def reference(self, node, x):
        a = node.attrs
        r = _transform(_complex(x), a["n"], a["inverse"], a["onesided"], axis=a["axis"])
        out = r.real[..., None] if a["inverse"] and a["onesided"] else np.stack([r.real, r.imag], -1)
        return [out.astype(x.dtype)]

    def macs(self, node):
        t, shape = self._io(node)
        return math.prod(shape) // shape[-1] * t.shape[node.attrs["axis"]] * t.shape[-1] * shape[-1]

    def lower(self, k, node, ins, outs):
        a, (t, shape) = node.attrs, self._io(node)
        ax, x, y = a["axis"], ins[0], outs[0]
        n_in, n_out = t.shape[ax], shape[ax]
        tables = _tables(n_in, a["n"], a["inverse"], a["onesided"], t.shape[-1] == 2, shape[-1] == 2, t.dtype)
        outer = t.shape[:ax] + t.shape[ax + 1:-1]

        def at(oi, i, part):
            return tuple(oi[:ax]) + (i,) + tuple(oi[ax:]) + (part,)

        def load(oi, n):
            return [x[at(oi, n, p)] for p in range(t.shape[-1])]

        def store(oi, f, parts):
            for q, v in enumerate(parts):
                y[at(oi, f, q)] = v

        _lower_dot(k, outer, n_out, n_in, tables, t.dtype, load, store)


@register("STFT")
class STFT(Op):
    """signal [batch, length, 1|2], frame_step, optional window [frame_length] (read at run
    time), optional frame_length -> [batch, frames, bins, 2], frames = 1 + (length -
    frame_length) // frame_step, bins = frame_length // 2 + 1 when onesided (the default)."""
    shape_operands = (1, 3)

    def canonicalize(self, node, opset):
        t = in_type(node)
        if len(t.shape) != 3 or t.shape[-1] not in (1, 2):
            raise invalid(node, f"needs a signal [batch, length, 1 or 2], got shape {list(t.shape)}")
        step = int(_scalar(node, 1, "frame_step"))
        window = node.inputs[2] if len(node.inputs) > 2 else None
        wlen = None
        if window is not None:
            if len(window.type.shape) != 1:
                raise invalid(node, f"window must be 1-D, got shape {list(window.type.shape)}")
            wlen = window.type.shape[0]
        length = int(_scalar(node, 3, "frame_length", default=wlen or t.shape[1]))
        if wlen is not None and wlen != length:
            raise invalid(node, f"window of {wlen} values for a frame_length of {length}")
        if step < 1 or length < 1:
            raise invalid(node, f"frame_step {step} and frame_length {length} must be positive")
        onesided = int(node.attrs.get("onesided", 1))
        if onesided not in (0, 1):
            raise invalid(node, f"onesided must be 0 or 1, got {onesided}")
        if onesided and t.shape[-1] == 2:
            raise invalid(node, "a onesided STFT needs a real signal (last dim 1), got a complex one")
        if length > t.shape[1]:
            raise unsupported(node, f"a frame_length of {length} longer than the signal ({t.shape[1]}): no frame "
                                    f"(an empty output) is not supported")
        node.attrs.clear()
        node.attrs.update(step=step, length=length, onesided=onesided, window=window is not None)
        node.inputs = node.inputs[:1] + ([window] if window is not None else [])

    def _shape(self, node):
        a, t = node.attrs, in_type(node)
        frames = 1 + (t.shape[1] - a["length"]) // a["step"]
        return (t.shape[0], frames, _out_len(a["length"], 0, a["onesided"]), 2)

    def infer(self, node):
        t = in_type(node)
        if t.dtype not in FLOATS:
            raise unsupported(node, f"{t.dtype} is not supported (float32, float64)")
        if node.attrs["window"] and in_type(node, 1).dtype != t.dtype:
            raise invalid(node, f"window is {in_type(node, 1).dtype}, the signal {t.dtype}")
        return [TensorType(t.dtype, self._shape(node))]

    def reference(self, node, x, window=None):
        a = node.attrs
        _, frames, _, _ = self._shape(node)
        z = _complex(x)
        w = np.ones(a["length"]) if window is None else window.astype(np.float64)
        framed = np.stack([z[:, f * a["step"]:f * a["step"] + a["length"]] * w for f in range(frames)], 1)
        r = _transform(framed, a["length"], 0, a["onesided"], axis=2)
        return [np.stack([r.real, r.imag], -1).astype(x.dtype)]

    def macs(self, node):
        b, frames, bins, _ = self._shape(node)
        return b * frames * bins * node.attrs["length"] * 2 * in_type(node).shape[-1]

    def lower(self, k, node, ins, outs):
        a, t = node.attrs, in_type(node)
        x, y, w = ins[0], outs[0], (ins[1] if a["window"] else None)
        b, frames, bins, _ = self._shape(node)
        tables = _tables(a["length"], a["length"], 0, a["onesided"], t.shape[-1] == 2, True, t.dtype)

        def load(oi, n):
            pos = k.lift(oi[1]) * a["step"] + n
            xs = [x[(oi[0], pos, p)] for p in range(t.shape[-1])]
            return xs if w is None else [v * w[(n,)] for v in xs]

        def store(oi, f, parts):
            for q, v in enumerate(parts):
                y[(oi[0], oi[1], f, q)] = v

        _lower_dot(k, (b, frames), bins, a["length"], tables, t.dtype, load, store)


def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
    """[dft_length // 2 + 1, num_mel_bins] triangular filters, in float64: the spec's formula
    (onnx's reference), with the inputs' own numpy types where the spec computes with them."""
    bins = np.arange(0, num_mel_bins + 2)
    low = 2595 * np.log1p(lower_edge_hertz / 700) / np.log(10)
    high = 2595 * np.log1p(upper_edge_hertz / 700) / np.log(10)
    step = (high - low) / bins.shape[0]
    freq = 700 * np.expm1((bins * step + low) / 2595 * np.log(10))
    edges = (((dft_length + 1) * freq) // sample_rate).astype(np.int64)
    out = np.zeros((int(dft_length) // 2 + 1, int(num_mel_bins)))
    for i in range(int(num_mel_bins)):
        lo, mid, hi = (int(v) for v in edges[i:i + 3])
        if mid - lo == 0:
            out[mid, i] = 1
        else:
            for j in range(lo, mid + 1):
                out[j, i] = (j - lo) / (mid - lo)
        for j in range(mid, hi):
            out[j, i] = (hi - j) / (hi - mid)
    return out


@register("MelWeightMatrix")
class MelWeightMatrix(Op):
    """A constant once its five scalar inputs are: folded at compile time."""
    shape_operands = (0, 1, 2)
    dtype_attrs = ("output_datatype",)

    def canonicalize(self, node, opset):
        ints = [_scalar(node, i, w) for i, w in enumerate(("num_mel_bins", "dft_length", "sample_rate"))]
        edges = [_scalar(node, i, w, kinds="f") for i, w in ((3, "lower_edge_hertz"), (4, "upper_edge_hertz"))]
        mels, dft_length, rate = (int(v) for v in ints)
        lo, hi = (float(v) for v in edges)
        if mels < 1 or dft_length < 1 or rate < 1:
            raise invalid(node, f"num_mel_bins {mels}, dft_length {dft_length} and sample_rate {rate} "
                                f"must be positive")
        if not 0 <= lo <= hi <= rate / 2:
            raise invalid(node, f"needs 0 <= lower_edge_hertz ({lo}) <= upper_edge_hertz ({hi}) <= "
                                f"sample_rate / 2 ({rate / 2})")
        dtype = node.attrs.get("output_datatype", "float32")
        if dtype not in FLOATS + ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
            raise unsupported(node, f"output_datatype {dtype} is not supported")
        try:
            table = mel_weight_matrix(*ints, *edges)
        except IndexError:
            raise invalid(node, "a filter edge falls past the last spectrogram bin") from None
        node.attrs.clear()
        node.attrs.update(dtype=dtype, table=table)
        node.inputs = []

    def infer(self, node):
        return [TensorType(node.attrs["dtype"], node.attrs["table"].shape)]

    def reference(self, node, *unused):
        return [node.attrs["table"].astype(node.attrs["dtype"])]

    def lower(self, k, node, ins, outs):
        table, y = k.constant(self.reference(node)[0].reshape(-1)), outs[0].flat()
        with k.loop(y.size) as i:
            y[i] = table[i]
