"""SolutionCall: the one way fib calls a solution (allocate poisoned outputs, build the arguments in
declaration order, pass the chosen configuration, call, return the outputs). The worker, the
profiler target, benchmarks and tests all go through it, so destination-passing style, returned
outputs and configurations are handled in one place.

Configurations: a solution's entry module may define `fib_configs(axes) -> {name: dict}`, the
named configurations valid at a workload's axes ("default" among them by convention: what the
solution runs when given none), and `fib_with_config(config)` returning its entry function bound to
that configuration (so the entry keeps the definition's signature: flashinfer-bench loads it
unchanged); an entry that accepts `config=` itself also works. Without a config (None) the entry is
called exactly as before, so a solution without configurations needs nothing.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Callable

import torch

from .. import solutions as sol_mod
from ..errors import ConfigError
from ..schema import Definition, Solution
from ..schema.config import CONFIG_CALL_HOOK, CONFIG_HOOK, CONFIG_NAME_PATTERN

CONFIG_NAME = re.compile(CONFIG_NAME_PATTERN)


def declared_configs(module, solution: str, axes: dict[str, int]) -> dict[str, dict] | None:
    """The module's `fib_configs(axes)`, checked: {name: dict} with names fib can use in a
    solution's name (`solution@name`); None when the module declares no configurations."""
    hook = getattr(module, CONFIG_HOOK, None)
    if hook is None:
        return None
    answer = hook(dict(axes))
    if not isinstance(answer, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                               for k, v in answer.items()):
        raise ConfigError(f"{CONFIG_HOOK}({axes}) returned {type(answer).__name__} {str(answer)[:200]}, "
                          "not {name: dict}", field=f"solution '{solution}'",
                          fix=f"return a dict of configuration name -> configuration dict from {CONFIG_HOOK}")
    bad = [k for k in answer if not CONFIG_NAME.fullmatch(k)]
    if bad:
        raise ConfigError(f"{CONFIG_HOOK} declares configuration name(s) {', '.join(map(repr, bad))}; a name "
                          "starts with a letter or digit and holds only letters, digits and '_.+-'",
                          field=f"solution '{solution}'", fix="rename them")
    return answer


def choose_config(module, solution: str, name: str, axes: dict[str, int]) -> tuple[dict | None, str | None]:
    """(the configuration `name` of the solution at these axes, None) or (None, why not)."""
    declared = declared_configs(module, solution, axes)
    if declared is None:
        return None, f"solution '{solution}' declares no configurations ({CONFIG_HOOK}), so it has no '{name}'"
    if name not in declared:
        return None, (f"solution '{solution}' declares no configuration '{name}' at {dict(axes)}; valid here: "
                      f"{', '.join(declared) or 'none'}")
    return declared[name], None


class SolutionCall:
    def __init__(self, function: Callable, solution: Solution, definition: Definition, axes: dict[str, int],
                 device: str, config: dict | None = None):
        self.function = function
        self.solution = solution
        self.definition = definition
        self.axes = axes
        self.device = device
        self.dps = solution.spec.destination_passing_style
        self.config = config
        self.kwargs = {}
        if config is not None:
            # A module's `fib_with_config(config)` returns its entry with that configuration, so the entry
            # keeps the definition's exact signature (flashinfer-bench counts its parameters); an entry
            # that takes `config=` itself gets it as a keyword.
            hook = (getattr(function, "__globals__", None) or {}).get(CONFIG_CALL_HOOK)  # the entry's module
            if hook is not None:
                self.function = hook(config)
            else:
                self.kwargs = {"config": config}

    @classmethod
    def load(cls, solution: Solution, definition: Definition, axes: dict[str, int], device: str,
             config: str | dict | None = None, *, solution_name: str | None = None) -> "SolutionCall":
        """Import the entry point; `config` is a configuration name (looked up in the module's
        fib_configs at `axes`: ConfigError if not declared there), a dict (passed as it is), or None."""
        function = sol_mod.load_entry(solution, device=device)
        if isinstance(config, str):
            name = solution_name or solution.name
            module = None if solution.spec.language.native else sys.modules[function.__module__]
            config, reason = choose_config(module, name, config, axes)  # a compiled solution declares none
            if reason:
                raise ConfigError(reason, fix=f"choose one of the names listed, or run '{name}' without a config")
        return cls(function, solution, definition, axes, device, config=config)

    def outputs(self) -> list[torch.Tensor]:
        """Fresh output buffers, filled with NaN (or an out-of-range integer)."""
        return sol_mod.allocate_outputs(self.definition, self.axes, self.device)

    def arguments(self, inputs: dict[str, Any], outputs: list[torch.Tensor] | None = None) -> tuple:
        """The positional arguments of one call: inputs in declaration order, then (DPS) the outputs."""
        args = tuple(inputs.values())
        return args + tuple(outputs) if self.dps else args

    def __call__(self, inputs: dict[str, Any], outputs: list[torch.Tensor] | None = None) -> list:
        """Call once on `inputs` (DPS: into `outputs`, fresh poisoned buffers if None); returns the
        outputs (the DPS buffers, or what the function returned)."""
        if self.dps and outputs is None:
            outputs = self.outputs()
        result = self.function(*self.arguments(inputs, outputs), **self.kwargs)
        if self.dps:
            return outputs
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def bound(self, inputs: dict[str, Any], outputs: list[torch.Tensor] | None = None) -> Callable[[], Any]:
        """A zero-argument call on fixed inputs and output buffers (for timing and profiling);
        DPS: into `outputs`, or buffers allocated once here."""
        if self.dps and outputs is None:
            outputs = self.outputs()
        args = self.arguments(inputs, outputs)
        function, kwargs = self.function, self.kwargs
        return lambda: function(*args, **kwargs)
