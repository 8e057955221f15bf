"""fib: a benchmarking and profiling harness for GPU kernels, starting with fused MoE."""
from .stages import stage

__version__ = "0.1.0"
__all__ = ["stage", "__version__"]
