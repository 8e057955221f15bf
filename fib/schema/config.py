"""RunConfig: every setting of a run, validated once in the parent, written resolved into run.json.

A value travels as this one model: the CLI builds it (a bad value is an error naming the option,
exit 2, before any worker starts), run.json stores `model_dump(mode="json")` with `format`, and
workers receive the same JSON. Tolerances resolve in layers, computed once per definition in the
parent: fib's defaults, then the definition's `tolerance`, then the CLI's `--atol/--rtol/
--required-matched-ratio`. `also_check` entries are extra verdicts recorded beside the main one:
a definition's named preset (e.g. "contest") or explicit numbers. `variants` are the solution
configurations chosen (`--config SOLUTION=NAME`, `--sweep SOLUTION`): each runs as a solution of
its own named `SOLUTION@NAME` (fib.harness.call: the solution's `fib_configs` hook).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .definition import Definition, Tolerance

CONFIG_FORMAT = 2
TIMER_CHOICES = ("auto", "cupti", "cuda_graph", "cuda_event", "wall")  # fib.timing.measure.TIMERS (checked by a test)
DEFAULT_TOLERANCE = Tolerance()
CONFIG_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"  # a configuration name (it becomes part of a solution's)
CONFIG_HOOK = "fib_configs"            # a solution module's `fib_configs(axes) -> {name: dict}`
CONFIG_CALL_HOOK = "fib_with_config"   # and its `fib_with_config(config) -> entry function`


def variant_name(solution: str, config: str) -> str:
    """The name a solution's configuration runs under: its traces, logs and reports use it."""
    return f"{solution}@{config}"


class SolutionVariant(BaseModel):
    """One named configuration of a solution, run as a solution of its own (`variant_name`)."""
    model_config = ConfigDict(extra="forbid")
    solution: str = Field(min_length=1)
    config: str = Field(pattern=f"^{CONFIG_NAME_PATTERN}$")


class AlsoCheck(BaseModel):
    """One extra verdict: a definition's preset by `preset` name, or explicit numbers."""
    model_config = ConfigDict(extra="forbid")
    preset: Optional[str] = None
    atol: Optional[float] = Field(default=None, ge=0)
    rtol: Optional[float] = Field(default=None, ge=0)
    required_matched_ratio: Optional[float] = Field(default=None, gt=0, le=1)

    @classmethod
    def parse(cls, text: str) -> "AlsoCheck":
        """'contest' (a preset name) or 'atol,rtol,ratio'."""
        text = text.strip()
        if "," not in text:
            if not text.isidentifier():
                raise ValueError(f"{text!r} is neither a preset name nor 'atol,rtol,ratio'")
            return cls(preset=text)
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError(f"{text!r}: expected 'atol,rtol,ratio', e.g. 0.1,0.2,0.85")
        try:
            atol, rtol, ratio = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r}: expected three numbers 'atol,rtol,ratio'") from None
        return cls(atol=atol, rtol=rtol, required_matched_ratio=ratio)

    def resolve(self, definition: Definition) -> Tolerance:
        if self.preset is not None:
            return definition.tolerance_preset(self.preset)
        return Tolerance(atol=self.atol, rtol=self.rtol, required_matched_ratio=self.required_matched_ratio,
                         name=f"{self.atol:g},{self.rtol:g},{self.required_matched_ratio:g}")


class RunConfig(BaseModel):
    """What a `fib run` does to each (solution, workload) pair."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    format: Literal[2] = CONFIG_FORMAT
    # correctness: None means "the definition's, else fib's default"
    atol: Optional[float] = Field(default=None, ge=0)
    rtol: Optional[float] = Field(default=None, ge=0)
    required_matched_ratio: Optional[float] = Field(default=None, gt=0, le=1)
    also_check: list[AlsoCheck] = Field(default_factory=list)
    fresh_check: bool = True
    # run solutions whose target_hardware names another GPU or SM on this GPU anyway (--any-hardware)
    any_hardware: bool = False
    # timing
    warmup_runs: int = Field(default=10, ge=0)
    # the warm-up's floor in ms of calls: a worker's first timed workload (and one after a pause of a second
    # or more) warms the GPU for min_warmup_ms at least; the next ones, on a GPU this worker kept busy until
    # a moment ago, for min_warmup_ms_warm (then on until stable either way: fib.timing.measure)
    min_warmup_ms: float = Field(default=25.0, ge=0)
    min_warmup_ms_warm: float = Field(default=5.0, ge=0)
    iterations: int = Field(default=50, ge=1)
    num_trials: int = Field(default=3, ge=1)
    timer: Literal["auto", "cupti", "cuda_graph", "cuda_event", "wall"] = "auto"
    seed: int = 0
    input_copies: int = Field(default=0, ge=0)          # 0: chosen from the input size
    # On a CPU device the timed calls of one workload stop after this many seconds (at least one
    # sample per trial): a slow CPU reference implementation cannot take minutes. The trace records
    # how many samples were taken and why (timing.timer_note). None: no budget. GPUs are never cut.
    cpu_timing_budget_s: Optional[float] = Field(default=3.0, gt=0)
    flush_l2: bool = True
    # budgets (seconds)
    timeout_s: float = Field(default=300.0, gt=0)      # a workload's calls: first call, check, timing, fresh check
    build_timeout_s: Optional[float] = Field(default=None, gt=0)  # import + build hook; None: the solution's own
    jit_timeout_s: float = Field(default=180.0, gt=0)  # a solution's very first call in the run (JIT compiles)
    # processes that make each workload's first call before a solution's first pair on a GPU, so its JIT
    # compilations run in parallel (fib/harness/prewarm.py); None: chosen from the GPU, CPUs and workloads
    jit_workers: Optional[int] = Field(default=None, ge=0)
    prepare_timeout_s: float = Field(default=600.0, gt=0)  # a worker's start, inputs, the reference
    max_failures: int = Field(default=3, ge=1)
    log_cap_bytes: int = Field(default=2 * 2**20, ge=4096)  # per solution log: head and tail kept
    # solution configurations: variant name (solution@config) -> which; sweep: solutions swept
    variants: dict[str, SolutionVariant] = Field(default_factory=dict)
    sweep: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _variant_names(self):
        for name, variant in self.variants.items():
            if name != variant_name(variant.solution, variant.config):
                raise ValueError(f"variant {name!r} must be named {variant_name(variant.solution, variant.config)!r}")
        return self

    @field_validator("also_check", mode="before")
    @classmethod
    def _parse_also(cls, values):
        out = []
        for v in values or []:
            if isinstance(v, str):
                out.append(AlsoCheck.parse(v))
            elif isinstance(v, (list, tuple)) and len(v) == 3:
                out.append(AlsoCheck(atol=v[0], rtol=v[1], required_matched_ratio=v[2]))
            else:
                out.append(v)
        return out

    def tolerance(self, definition: Definition) -> Tolerance:
        """The main verdict's tolerance: CLI over definition over fib's default."""
        base = definition.tolerance or DEFAULT_TOLERANCE
        update = {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol),
                                    ("required_matched_ratio", self.required_matched_ratio)) if v is not None}
        if not update:
            return base
        name = f"{base.name} with command-line overrides" if base.name else None
        return Tolerance.model_validate({**base.model_dump(exclude={"name"}), **update, "name": name})

    def also_tolerances(self, definition: Definition) -> list[Tolerance]:
        return [a.resolve(definition) for a in self.also_check]

    def build_budget(self, solution_build_timeout_s: float) -> float:
        return self.build_timeout_s if self.build_timeout_s is not None else solution_build_timeout_s


OPTION_NAMES = {"timeout_s": "--timeout", "build_timeout_s": "--build-timeout", "jit_timeout_s": "--jit-timeout",
                "jit_workers": "--jit-workers",
                "prepare_timeout_s": "--prepare-timeout", "log_cap_bytes": "--log-cap", "flush_l2": "--no-flush-l2",
                "fresh_check": "--no-fresh-check", "variants": "--config", "sweep": "--sweep"}


def config_error_message(exc) -> str:
    """A pydantic ValidationError of RunConfig as 'option: problem' lines."""
    lines = []
    for err in exc.errors():
        field = str(err.get("loc", ("?",))[0])
        option = OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
        lines.append(f"{option}: {err.get('msg')} (got {err.get('input')!r})")
    return "; ".join(lines)


__all__ = ["AlsoCheck", "RunConfig", "SolutionVariant", "CONFIG_FORMAT", "TIMER_CHOICES", "config_error_message",
           "variant_name"]
