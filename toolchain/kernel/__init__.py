"""The kernel vocabulary: the loop-nest language ops write their lowerings in (llvm.py,
and its portable-C twin c.py), inline math on it (mathfns.py), and the tiled loop nests
that carry out a schedule (tiled_matmul.py, tiled_conv.py). Below the ops, above the
schedules: nothing here imports an op, a pass or a backend."""
