"""edgec: an ahead-of-time compiler from ONNX models to allocation-free static libraries.

front end (frontend/) -> graph IR (ir.py) -> passes (passes/) -> memory plan (memory.py)
-> LLVM code generation (codegen/) -> emission (emit.py) -> inspection (inspect/)
-> proof under QEMU (harness/).
"""
__version__ = "0.1.0"
