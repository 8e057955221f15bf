"""Workload: concrete values of a definition's var axes and how to make each input.

FlashInfer-Trace input kinds: `{"type": "random"}`, `{"type": "scalar", "value": ...}`,
`{"type": "safetensors", "path": ..., "tensor_key": ...}` (path relative to the dataset root).
fib adds `{"type": "generator"}`: the tensor comes from the definition's `generator`.
A dataset's .jsonl line is either a bare workload or a "workload trace"
`{"definition": ..., "workload": {...}, "solution": null, "evaluation": null}`.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class RandomInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["random"] = "random"


class ScalarInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scalar"] = "scalar"
    value: Union[bool, int, float]


class SafetensorsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["safetensors"] = "safetensors"
    path: str = Field(min_length=1)
    tensor_key: str = Field(min_length=1)


class GeneratorInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["generator"] = "generator"


InputSpec = Annotated[Union[RandomInput, ScalarInput, SafetensorsInput, GeneratorInput],
                      Field(discriminator="type")]


class Workload(BaseModel):
    model_config = ConfigDict(extra="allow")
    uuid: str = Field(min_length=1)
    axes: dict[str, Annotated[int, Field(ge=0)]]
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    description: Optional[str] = None

    def scalar_inputs(self) -> dict[str, Union[bool, int, float]]:
        return {n: s.value for n, s in self.inputs.items() if isinstance(s, ScalarInput)}

    def label(self) -> str:
        """Short human label: the var axes, then the first 8 characters of the uuid."""
        axes = ",".join(f"{k}={v}" for k, v in self.axes.items())
        return f"{axes} [{self.uuid[:8]}]"
