"""Profiling: run the timed calls under nsys or torch.profiler and attribute kernels to stages."""
