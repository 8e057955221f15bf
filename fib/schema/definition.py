"""Definition: an operator's contract (axes, inputs, outputs, reference), FlashInfer-Trace compatible.

The FlashInfer-Trace fields are `name`, `op_type` (older files say `type`), `axes`, `inputs`,
`outputs`, `reference`, `tags`, `description`, `constraints`. fib adds, all optional:

- `tolerance`: the operator's correctness bound (a `Tolerance`, CLI flags win for `atol`, `rtol`,
  `required_matched_ratio`): the per-element rule (an element fails when abs error > atol AND
  relative error > rtol) with the required matched ratio, and, also fib additions, the optional
  scale-free bounds `max_relative_l2` (||out - ref||_2 / ||ref||_2 per output) and
  `min_cosine_similarity`, plus an optional `name` (a label recorded in traces).
- `tolerance_presets`: other named tolerances for this operator, `{name: Tolerance}` (e.g.
  `"contest"`: the FlashInfer contest's atol 1, rtol 0.3, ratio 0.9), for `--also-check`-style
  comparisons and `Definition.tolerance_preset(name)`. Optional: FlashInfer-Trace files without
  it load unchanged, and fib ignores it when judging a run.
- `stages`: the pipeline's stages in order, each `{name, kernels: [regex...], description}`; the
  regexes attribute third-party kernels (launched outside any `fib.stage`) to a stage.
- `generator`: Python source defining a top-level `generate(axes, scalars, generator, device)`
  that returns a dict of tensors for the inputs whose workload spec is `{"type": "generator"}`.
  Use it for inputs that must agree with each other (FP8 values and their block scales).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .names import check_name

# Dtype names of the format, mapped to torch attribute names. `float8_e4m3` is the spelling of
# older FlashInfer-Trace files and is read as float8_e4m3fn.
DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "float4_e2m1": "float4_e2m1fn_x2",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "bool": "bool",
}
DTYPE_ALIASES = {"float8_e4m3": "float8_e4m3fn", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DType = Literal[tuple(DTYPES)]  # type: ignore[valid-type]


class _Model(BaseModel):
    # Unknown fields are kept (round-trip of newer FlashInfer-Trace files); `fib validate` lists them.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class AxisConst(_Model):
    type: Literal["const"] = "const"
    value: int = Field(gt=0)
    description: Optional[str] = None


class AxisVar(_Model):
    type: Literal["var"] = "var"
    parent: Optional[str] = None
    description: Optional[str] = None


Axis = Annotated[Union[AxisConst, AxisVar], Field(discriminator="type")]


class TensorSpec(_Model):
    """A tensor's shape as axis names (None: a scalar) and its dtype."""

    shape: Optional[list[str]] = None
    dtype: DType
    description: Optional[str] = None

    @field_validator("dtype", mode="before")
    @classmethod
    def _alias_dtype(cls, value):
        return DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value

    @property
    def is_scalar(self) -> bool:
        return self.shape is None


class Tolerance(_Model):
    """fib's one tolerance type (definitions, the harness, fib.harness.check, the CLI's overrides).

    An element fails when abs error > `atol` AND relative error > `rtol`; an output fails when
    less than `required_matched_ratio` of its elements pass. `max_relative_l2` (if set) bounds
    ||out - ref||_2 / ||ref||_2 and `min_cosine_similarity` (if set) bounds the cosine similarity
    of the flattened output and reference: scale-free checks that an O(0.1-1) output cannot pass
    by being near zero. `name` labels the setting in traces (e.g. "contest")."""

    atol: float = Field(default=1e-2, ge=0)
    rtol: float = Field(default=1e-2, ge=0)
    required_matched_ratio: float = Field(default=1.0, ge=0, le=1)
    max_relative_l2: Optional[float] = Field(default=None, ge=0)
    min_cosine_similarity: Optional[float] = Field(default=None, ge=-1, le=1)
    name: Optional[str] = None

    def describe(self) -> str:
        """A one-line summary, e.g. 'atol 0.1, rtol 0.2, ratio 0.99, rel-L2 <= 0.08'."""
        parts = [f"atol {self.atol:g}", f"rtol {self.rtol:g}", f"ratio {self.required_matched_ratio:g}"]
        if self.max_relative_l2 is not None:
            parts.append(f"rel-L2 <= {self.max_relative_l2:g}")
        if self.min_cosine_similarity is not None:
            parts.append(f"cosine >= {self.min_cosine_similarity:g}")
        return (f"{self.name}: " if self.name else "") + ", ".join(parts)


class StageSpec(_Model):
    """One pipeline stage: its name and the kernel-name regexes that belong to it."""

    name: str = Field(min_length=1)
    kernels: list[str] = Field(default_factory=list)
    description: Optional[str] = None


def _top_level_function(source: str, name: str, what: str) -> None:
    problem = _source_problem(source, name, what)
    if problem:
        raise ValueError(problem)


@functools.lru_cache(maxsize=64)
def _source_problem(source: str, name: str, what: str) -> str | None:
    """Why `source` is not Python defining a top-level function `name`, or None. Cached by the text: a
    worker and the judge validate the same definition once per job and verdict, and parsing the DeepSeek
    reference and generator was ~5 ms of each validation."""
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        return f"{what} is not valid Python: line {exc.lineno}: {exc.msg}"
    if not any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body):
        return f"{what} must define a top-level function `{name}`"
    return None


class Definition(_Model):
    name: str = Field(min_length=1)
    op_type: str = Field(min_length=1, validation_alias="op_type")
    axes: dict[str, Axis]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: str
    tags: list[str] = Field(default_factory=list)
    description: Optional[str] = None
    constraints: list[str] = Field(default_factory=list)
    # fib additions
    tolerance: Optional[Tolerance] = None
    tolerance_presets: dict[str, Tolerance] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(default_factory=list)
    generator: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _accept_type_as_op_type(cls, data):
        if isinstance(data, dict) and "op_type" not in data and "type" in data:
            data = dict(data)
            data["op_type"] = data.pop("type")
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "definition name")

    @field_validator("reference")
    @classmethod
    def _reference_defines_run(cls, source: str) -> str:
        _top_level_function(source, "run", "reference")
        return source

    @field_validator("generator")
    @classmethod
    def _generator_defines_generate(cls, source: Optional[str]) -> Optional[str]:
        if source is not None:
            _top_level_function(source, "generate", "generator")
        return source

    @field_validator("constraints")
    @classmethod
    def _constraints_parse(cls, constraints: list[str]) -> list[str]:
        for text in constraints:
            try:
                ast.parse(text, mode="eval")
            except SyntaxError as exc:
                raise ValueError(f"constraint {text!r} is not a Python expression: {exc.msg}") from exc
        return constraints

    @model_validator(mode="after")
    def _shapes_name_known_axes(self):
        problems = []
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            for tensor, spec in specs.items():
                for axis in spec.shape or []:
                    if axis not in self.axes:
                        problems.append(f"{kind}.{tensor}.shape names unknown axis '{axis}'")
        if not self.outputs:
            problems.append("outputs is empty: a definition needs at least one output")
        if any(not name for name in self.tolerance_presets):
            problems.append("tolerance_presets has an empty name")
        stage_names = [s.name for s in self.stages]
        if len(set(stage_names)) != len(stage_names):
            problems.append(f"stages has duplicate names: {stage_names}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- axes -------------------------------------------------------------------------------
    def const_axes(self) -> dict[str, int]:
        return {n: a.value for n, a in self.axes.items() if isinstance(a, AxisConst)}

    def var_axes(self) -> list[str]:
        return [n for n, a in self.axes.items() if isinstance(a, AxisVar)]

    def var_axis_bindings(self) -> dict[str, tuple[str, int]]:
        """axis -> (input, dim): a var axis takes its value from the first input that uses it."""
        bindings: dict[str, tuple[str, int]] = {}
        for tensor, spec in self.inputs.items():
            for dim, axis in enumerate(spec.shape or []):
                if isinstance(self.axes[axis], AxisVar) and axis not in bindings:
                    bindings[axis] = (tensor, dim)
        return bindings

    def resolve_axes(self, var_values: dict[str, int]) -> dict[str, int]:
        """All axis values for a workload; raises ValueError naming a missing or unknown var axis."""
        missing = [a for a in self.var_axes() if a not in var_values]
        if missing:
            raise ValueError(f"no value for var axis {', '.join(missing)} of definition '{self.name}'")
        unknown = [a for a in var_values if a not in self.axes]
        if unknown:
            raise ValueError(f"axis {', '.join(unknown)} is not an axis of definition '{self.name}'")
        consts = [a for a in var_values if isinstance(self.axes[a], AxisConst)
                  and var_values[a] != self.axes[a].value]
        if consts:
            raise ValueError(f"const axis {', '.join(consts)} given a value other than its own")
        return {**self.const_axes(), **{a: int(var_values[a]) for a in self.var_axes()}}

    def shape_of(self, spec: TensorSpec, axes: dict[str, int]) -> tuple[int, ...] | None:
        return None if spec.shape is None else tuple(axes[a] for a in spec.shape)

    def check_constraints(self, axes: dict[str, int]) -> list[str]:
        """The constraints that do not hold for these axis values."""
        failed = []
        for text in self.constraints:
            try:
                ok = eval(text, {"__builtins__": {}}, dict(axes))  # noqa: S307 - definition authors' expressions
            except Exception as exc:  # a constraint naming something we cannot evaluate
                failed.append(f"{text} (cannot evaluate: {exc})")
                continue
            if not ok:
                failed.append(text)
        return failed

    def content_hash(self) -> str:
        """Hash of what determines the reference output: the contract and the reference code."""
        fields = {"name", "axes", "inputs", "outputs", "reference", "generator"}
        text = json.dumps(self.model_dump(include=fields, mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def tolerance_preset(self, name: str) -> Tolerance:
        """The named tolerance preset (its `name` filled in); ValueError listing the known names."""
        if name not in self.tolerance_presets:
            known = ", ".join(sorted(self.tolerance_presets)) or "none"
            raise ValueError(f"definition '{self.name}' has no tolerance preset '{name}' (known: {known})")
        preset = self.tolerance_presets[name]
        return preset if preset.name else preset.model_copy(update={"name": name})

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]
