"""Compile time of a large network, phase by phase: a DenseNet-121 topology (torchvision's:
growth 32, blocks of 6/12/24/16 layers, BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 per layer on the
concatenation of every earlier feature map, transitions with 2x2 average pooling) written
with onnx.helper, random weights, 1x3x64x64 input: 431 ONNX nodes. Prints the seconds
spent in import, the pass pipeline, memory planning, IR generation and LLVM, and the total.

    python benchmarks/compile_time_bench.py [--target x86-64-v3] [--blocks 6,12,24,16]
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def densenet(blocks=(6, 12, 24, 16), growth=32, size=64, classes=10, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = collections.Counter()

    def name(kind):
        count[kind] += 1
        return f"{kind}{count[kind]}"

    def const(shape, scale=0.1):
        n = name("w")
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), n))
        return n

    def bn_relu(x, c):
        y, var = name("bn"), name("var")
        inits.append(numpy_helper.from_array(np.ones(c, np.float32), var))
        nodes.append(helper.make_node("BatchNormalization", [x, const((c,)), const((c,)), const((c,)), var], [y]))
        r = name("relu")
        nodes.append(helper.make_node("Relu", [y], [r]))
        return r

    def conv(x, cin, cout, k, stride=1):
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, const((cout, cin, k, k), (2.0 / (cin * k * k)) ** 0.5)], [y],
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        return y

    x = conv("input", 3, 2 * growth, 7, 2)
    x = bn_relu(x, 2 * growth)
    p = name("pool")
    nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    features, channels = [p], 2 * growth
    for b, layers in enumerate(blocks):
        for _ in range(layers):
            cat = features[0]
            if len(features) > 1:
                cat = name("concat")
                nodes.append(helper.make_node("Concat", features, [cat], axis=1))
            h = conv(bn_relu(cat, channels), channels, 4 * growth, 1)
            features.append(conv(bn_relu(h, 4 * growth), 4 * growth, growth, 3))
            channels += growth
        cat = name("concat")
        nodes.append(helper.make_node("Concat", features, [cat], axis=1))
        x = bn_relu(cat, channels)
        if b < len(blocks) - 1:
            x = conv(x, channels, channels // 2, 1)
            channels //= 2
            p = name("pool")
            nodes.append(helper.make_node("AveragePool", [x], [p], kernel_shape=[2, 2], strides=[2, 2]))
            features = [p]
    g = name("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
    f = name("flat")
    nodes.append(helper.make_node("Flatten", [g], [f]))
    nodes.append(helper.make_node("Gemm", [f, const((classes, channels)), const((classes,))], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "densenet121", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def timed(module, attr, bucket, times):
    """Wraps module.attr so the seconds spent in it accumulate in times[bucket]."""
    fn = getattr(module, attr)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times[bucket] += time.perf_counter() - t0

    setattr(module, attr, wrapper)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="x86-64-v3")
    ap.add_argument("--blocks", default="6,12,24,16")
    args = ap.parse_args(argv)
    from toolchain import compiler
    from toolchain.backends import llvm

    model = densenet(tuple(int(b) for b in args.blocks.split(",")))
    times = collections.Counter()
    timed(compiler, "import_batched", "import", times)
    timed(compiler, "run_pipeline", "passes", times)
    timed(compiler, "plan_memory", "memory plan", times)
    timed(llvm, "build_module", "IR generation", times)
    timed(llvm, "compile_ir", "LLVM", times)
    t0 = time.perf_counter()
    c = compiler.compile_onnx(model, args.target, name="densenet")
    total = time.perf_counter() - t0
    print(f"DenseNet-121 topology, {len(model.graph.node)} ONNX nodes -> {len(c.graph.nodes)} compiled nodes, "
          f"{args.target}, arena {c.plan.arena_size:,} B (lower bound {c.plan.lower_bound:,})")
    for phase in ("import", "passes", "memory plan", "IR generation", "LLVM"):
        print(f"  {phase:14} {times[phase]:7.1f} s")
    print(f"  {'total':14} {total:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
