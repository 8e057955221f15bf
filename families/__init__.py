"""Operator families: each folder holds its generator fragments, definition builder, family module (family.py: token axis and floor, found by fib/families.py), benchmarks and tests."""
