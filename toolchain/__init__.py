"""edgec: an ahead-of-time compiler from ONNX models to allocation-free static libraries.

front end (frontend/) -> graph IR (ir.py) -> passes (passes/) -> memory plan (memory.py)
-> LLVM code generation (codegen/) -> emission (emit.py) -> inspection (inspect/)
-> proof under QEMU (harness/).
"""
__version__ = "0.1.0"

__all__ = ["compile_model", "jit", "CompiledModel", "__version__"]


def __getattr__(name):
    """compile_model, jit and CompiledModel load on first use: `import toolchain` stays
    cheap (no onnx, numpy or LLVM) for the CLI and for tools that only read __version__."""
    if name in ("compile_model", "jit", "CompiledModel"):
        import importlib
        module = importlib.import_module(".jit", __name__)
        # toolchain.jit is the submodule itself once imported (the import system binds it):
        # the module is callable as the jit() function, so both spellings mean one thing
        return module if name == "jit" else getattr(module, name)
    raise AttributeError(f"module 'toolchain' has no attribute '{name}'")
