"""edgec: an ahead-of-time compiler from ONNX models to allocation-free static libraries.

The layers, each importing only those before it (docs/architecture.md):
errors, contract, version -> ir -> targets -> schedules -> kernel (vocabulary, tiled loop
nests) -> ops -> passes -> frontend -> memory -> backends -> emit -> inspect -> compiler
(the driver) -> harness, bench, firmware, cli.
"""
from .version import __version__

__all__ = ["__version__"]
