"""Operator families: each folder holds its generator fragments, definition builder, floor model, benchmarks and tests."""
