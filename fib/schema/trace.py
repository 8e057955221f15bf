"""Trace: the result of one (solution, workload) evaluation, FlashInfer-Trace compatible.

FlashInfer-Trace fields: `definition`, `workload`, `solution`, `evaluation` {`status`,
`environment` {`hardware`, `libs`}, `timestamp`, `log`, `correctness` {`max_relative_error`,
`max_absolute_error`, `extra`}, `performance` {`latency_ms`, `reference_latency_ms`,
`speedup_factor`}}. As there, PASSED carries correctness and performance, INCORRECT_NUMERICAL
carries correctness only, other statuses neither.

fib additions, all optional: status UNSUPPORTED (with `reason`); `reason` for every non-PASSED
status; `correctness.matched_ratio` and the tolerances it was judged by; the scale-free
`correctness.relative_l2_error` (||out - ref||_2 / ||ref||_2, the worst output's; NaN when an
output has NaN/Inf where the reference is finite) and `correctness.cosine_similarity` (the worst
output's), with the tolerance's `max_relative_l2`, `min_cosine_similarity` and `tolerance` (its
name) where set; `correctness.extra` {`outputs`: per-output statistics, `also_checked`: the
verdict at other tolerances}; `performance.timing`
with the raw samples and their statistics; `evaluation.device` and `evaluation.seed`;
`evaluation.solution_config` {`solution`, `name`, `values`} when the trace's solution is one
configuration of a solution (`solution@name`, fib run --config/--sweep): the configuration dict
the solution was called with (`values`, absent when the pair ended before it was chosen);
`evaluation.floor` where the definition's family declares a floor (fib/families.py): the least
work of the workload's main input set (bytes, FLOPs, the matmul ceiling they run against, the
family's details), which `fib report floor` puts against the device's ceilings.
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .workload import Workload


class Status(str, Enum):
    PASSED = "PASSED"
    INCORRECT_SHAPE = "INCORRECT_SHAPE"
    INCORRECT_NUMERICAL = "INCORRECT_NUMERICAL"
    INCORRECT_DTYPE = "INCORRECT_DTYPE"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    COMPILE_ERROR = "COMPILE_ERROR"
    TIMEOUT = "TIMEOUT"
    UNSUPPORTED = "UNSUPPORTED"


class Correctness(BaseModel):
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="strings")
    max_relative_error: float = 0.0
    max_absolute_error: float = 0.0
    extra: Optional[dict[str, Any]] = None
    matched_ratio: Optional[float] = None
    atol: Optional[float] = None
    rtol: Optional[float] = None
    required_matched_ratio: Optional[float] = None
    relative_l2_error: Optional[float] = None
    cosine_similarity: Optional[float] = None
    max_relative_l2: Optional[float] = None
    min_cosine_similarity: Optional[float] = None
    tolerance: Optional[str] = None

    @field_validator("max_relative_error", "max_absolute_error")
    @classmethod
    def _non_negative_or_nan(cls, v: float) -> float:
        if not math.isnan(v) and v < 0:
            raise ValueError("must be non-negative or NaN")
        return v


class TimingStats(BaseModel):
    """Raw per-call samples (ms) and the statistics fib reports from them."""

    model_config = ConfigDict(extra="allow")
    timer: str
    samples_ms: list[float]
    median_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    ci95_low_ms: float
    ci95_high_ms: float
    warmup_runs: int = 0
    l2_flush: bool = False
    input_copies: int = 1

    @property
    def event_median_ms(self) -> Optional[float]:
        """Where the GPU idled most of the call (fib.timing.measure): its back-to-back time by CUDA
        events, beside the kernel-sum median; None otherwise (kept as an extra field of the trace)."""
        value = (self.model_extra or {}).get("event_median_ms")
        return float(value) if value is not None else None

    @property
    def gpu_idle_share(self) -> Optional[float]:
        value = (self.model_extra or {}).get("gpu_idle_share")
        return float(value) if value is not None else None


class Performance(BaseModel):
    model_config = ConfigDict(extra="allow")
    latency_ms: float = Field(default=0.0, ge=0.0)
    reference_latency_ms: float = Field(default=0.0, ge=0.0)
    speedup_factor: float = Field(default=0.0, ge=0.0)
    timing: Optional[TimingStats] = None


class Environment(BaseModel):
    model_config = ConfigDict(extra="allow")
    hardware: str = Field(min_length=1)
    libs: dict[str, str] = Field(default_factory=dict)


class SolutionConfigRecord(BaseModel):
    """Which configuration of which solution a trace measured."""
    model_config = ConfigDict(extra="allow")
    solution: str
    name: str
    values: Optional[dict[str, Any]] = None


class FloorWork(BaseModel):
    """What a workload needs at least, as its family's `work()` counted it on the main input set."""
    model_config = ConfigDict(extra="allow")
    family: str
    token_axis: str
    tokens: Optional[int] = None
    bytes: Union[int, float] = Field(ge=0)
    flops: Union[int, float] = Field(ge=0)
    compute: Optional[str] = None         # the matmul ceiling the FLOPs run against (fp8_e4m3, bf16)
    detail: dict[str, Any] = Field(default_factory=dict)
    family_hash: Optional[str] = None     # of the family.py that counted it


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Status
    environment: Environment
    timestamp: str = Field(min_length=1)
    log: str = ""
    correctness: Optional[Correctness] = None
    performance: Optional[Performance] = None
    reason: Optional[str] = None
    device: Optional[str] = None
    seed: Optional[int] = None
    solution_config: Optional[SolutionConfigRecord] = None
    floor: Optional[FloorWork] = None

    @model_validator(mode="after")
    def _fields_match_status(self):
        has_c, has_p = self.correctness is not None, self.performance is not None
        if self.status == Status.PASSED and not (has_c and has_p):
            raise ValueError("a PASSED evaluation carries correctness and performance")
        if self.status == Status.INCORRECT_NUMERICAL and (not has_c or has_p):
            raise ValueError("an INCORRECT_NUMERICAL evaluation carries correctness and no performance")
        if self.status not in (Status.PASSED, Status.INCORRECT_NUMERICAL) and (has_c or has_p):
            raise ValueError(f"a {self.status.value} evaluation carries neither correctness nor performance")
        return self


class Trace(BaseModel):
    model_config = ConfigDict(extra="allow")
    definition: str = Field(min_length=1)
    workload: Workload
    solution: Optional[str] = None
    evaluation: Optional[Evaluation] = None

    def is_workload_trace(self) -> bool:
        return self.solution is None and self.evaluation is None

    @property
    def status(self) -> Optional[Status]:
        return self.evaluation.status if self.evaluation else None
