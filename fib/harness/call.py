"""SolutionCall: the one way fib calls a solution (allocate poisoned outputs, build the arguments in
declaration order, call, return the outputs). The worker, the profiler target, benchmarks and tests
all go through it, so destination-passing style and returned outputs are handled in one place."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .. import solutions as sol_mod
from ..schema import Definition, Solution


class SolutionCall:
    def __init__(self, function: Callable, solution: Solution, definition: Definition, axes: dict[str, int],
                 device: str):
        self.function = function
        self.solution = solution
        self.definition = definition
        self.axes = axes
        self.device = device
        self.dps = solution.spec.destination_passing_style

    @classmethod
    def load(cls, solution: Solution, definition: Definition, axes: dict[str, int], device: str) -> "SolutionCall":
        return cls(sol_mod.load_entry(solution), solution, definition, axes, device)

    def outputs(self) -> list[torch.Tensor]:
        """Fresh output buffers, filled with NaN (or an out-of-range integer)."""
        return sol_mod.allocate_outputs(self.definition, self.axes, self.device)

    def arguments(self, inputs: dict[str, Any], outputs: list[torch.Tensor] | None = None) -> tuple:
        """The positional arguments of one call: inputs in declaration order, then (DPS) the outputs."""
        args = tuple(inputs.values())
        return args + tuple(outputs) if self.dps else args

    def __call__(self, inputs: dict[str, Any]) -> list:
        """Call once on `inputs`; returns the outputs (DPS buffers, or what the function returned)."""
        outputs = self.outputs() if self.dps else None
        result = self.function(*self.arguments(inputs, outputs))
        if self.dps:
            return outputs
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def bound(self, inputs: dict[str, Any]) -> Callable[[], Any]:
        """A zero-argument call on fixed inputs and output buffers (for timing and profiling)."""
        args = self.arguments(inputs, self.outputs() if self.dps else None)
        function = self.function
        return lambda: function(*args)
