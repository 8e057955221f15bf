"""Timing: one timed call measured honestly (statistics, L2 flush, input rotation, the timer registry, CUPTI, ceilings)."""
