"""Source fragments of the MoE definitions' `reference` and `generator` code.

A definition must be self-contained JSON, so its `reference` and `generator` are Python source
strings. To keep one copy of each piece of logic, the pieces live here as fragment files and
`families/moe/build_definitions.py` concatenates them (after a small header of constants) into the
JSON. A fragment may use names that an earlier fragment of the same string defines, so the files
are not meant to be imported one by one: exec the assembled string, as the harness does.

Fragments:
  common.py            imports and constants shared by every string (BLOCK)
  routing.py           DeepSeek-V3 grouped sigmoid routing, softmax top-k routing
  experts.py           128-block dequantisation and the per-local-expert SwiGLU MLP loop
  reference_*.py       `run(*inputs)` of each family
  rng.py               a counter-based hash RNG, identical on CPU and CUDA
  quantize.py          FP8 quantisation per 128x128 weight block and per 1x128 token group
  synth.py             realistic routing logits, activations and expert weights
  fp8_layer.py         the FP8 hidden states and expert stacks every FP8 generator makes alike
  generator_*.py       `generate(axes, scalars, generator, device)` of each family
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def fragment(name: str) -> str:
    """The text of one fragment file, e.g. fragment("routing")."""
    return (_HERE / f"{name}.py").read_text()


def assemble(header: str, *names: str) -> str:
    """A self-contained source string: `header` followed by the named fragments in order."""
    parts = [header.rstrip() + "\n"] + [fragment(n).rstrip() + "\n" for n in names]
    return "\n\n".join(parts)
