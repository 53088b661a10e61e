"""latlab: make a CNN fast on your hardware.

The packages beside this one are the library: ``profiler`` (LUT sweeps), ``db`` (storage), ``latency_models``,
``pruning`` and ``training``; ``latlab`` holds the command line (``latlab.cli``) and the demo.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latlab")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
