"""fib: a benchmarking and profiling harness for GPU kernels, starting with fused MoE."""
__version__ = "0.1.0"
__all__ = ["stage", "__version__"]


def __getattr__(name: str):
    # `fib.stage` on first use: importing it loads nvtx and numpy, which `python -m fib run` wants to do only
    # after its standby children are on their way (fib/cli/entry.py)
    if name == "stage":
        from .stages import stage
        globals()["stage"] = stage  # later look-ups find it without this hook (solutions use it per call)
        return stage
    raise AttributeError(f"module 'fib' has no attribute {name!r}")
