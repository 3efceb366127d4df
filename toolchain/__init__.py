"""edgec: an ahead-of-time compiler from ONNX models to allocation-free static libraries.

The layers, each importing only those before it (docs/architecture.md):
errors, contract, version -> ir -> targets -> schedules -> kernel (vocabulary, tiled loop
nests) -> ops -> passes -> frontend -> memory -> backends -> emit, cache -> inspect ->
compiler (the driver) -> harness, inprocess (compile_model, jit) -> bench, firmware, cli.
"""
from .version import __version__

__all__ = ["compile_model", "compile_grad", "compile_train", "jit", "CompiledModel", "CompiledGrad", "CompiledJvp",
           "CompiledTrain", "__version__"]


def __getattr__(name):
    """compile_model, jit and CompiledModel load on first use: `import toolchain` stays
    cheap (no onnx, numpy or LLVM) for the CLI and for tools that only read __version__."""
    if name in ("compile_model", "jit", "CompiledModel"):
        from . import inprocess
        return getattr(inprocess, name)
    if name in ("compile_grad", "CompiledGrad", "CompiledJvp", "compile_train", "CompiledTrain"):  # derivatives
        from . import inprocess_grad
        return getattr(inprocess_grad, name)
    raise AttributeError(f"module 'toolchain' has no attribute '{name}'")
