"""Typed models of fib's data (FlashInfer-Trace format plus fib's documented additions) and JSON I/O."""
from .definition import DTYPES, AxisConst, AxisVar, Definition, StageSpec, TensorSpec, Tolerance
from .io import dump_json, load_jsonl, load_model, write_jsonl_line
from .solution import BuildSpec, Language, Solution, SourceFile
from .trace import (Correctness, Environment, Evaluation, FloorWork, Performance, Status, TimingStats, Trace)
from .workload import (GeneratorInput, RandomInput, SafetensorsInput, ScalarInput, Workload)

__all__ = [
    "DTYPES", "AxisConst", "AxisVar", "Definition", "StageSpec", "TensorSpec", "Tolerance",
    "BuildSpec", "Language", "Solution", "SourceFile",
    "Correctness", "Environment", "Evaluation", "FloorWork", "Performance", "Status", "TimingStats", "Trace",
    "GeneratorInput", "RandomInput", "SafetensorsInput", "ScalarInput", "Workload",
    "dump_json", "load_jsonl", "load_model", "write_jsonl_line",
]
