"""Reports built from run directories and profiler captures; no GPU needed."""
