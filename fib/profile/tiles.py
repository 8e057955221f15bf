"""Tile configurations and short names read from kernel names.

Kernel libraries encode the tile a kernel was instantiated for in its name, each in its own way:
trtllm cubins (`bmm_E4m3_..._t128x64x128u2_s6_...`), CUTLASS (`..._128x128x64_1x1x1_...`,
`GemmShape<128, 128, 64>`, `cute::tuple<cute::C<128>, cute::C<128>, cute::C<64>>`), and kernels
whose name carries constexpr assignments (`BLOCK_M=64`, `BLOCK_SIZE_N: 128`). `parse_tile` knows
these; a name with none of them has no tile (None).
"""
from __future__ import annotations

import re

_TRTLLM = re.compile(r"(?:^|_)t(\d+)x(\d+)(?:x(\d+))?(?=[a-z_]|$)")
_CUTE = re.compile(r"cute::C<(\d+)>\s*,\s*cute::C<(\d+)>\s*(?:,\s*cute::C<(\d+)>)?")
_SHAPE = re.compile(r"(?:GemmShape|TileShape|Shape)<\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*(\d+))?\s*>")
_UNDERSCORED = re.compile(r"(?:^|_)(\d+)x(\d+)(?:x(\d+))?(?=_|$)")
_TILESIZE = re.compile(r"tile(?:size)?_?(\d+)x(\d+)(?:x(\d+))?")
_MNK = re.compile(r"(?:^|_)m(\d+)n(\d+)k(\d+)(?=_|$)")
_BLOCK_ASSIGN = re.compile(r"\b((?:BLOCK|TILE)(?:_SIZE)?_[A-Z]+|B[MNK])\s*[=:]\s*(\d+)")

# Shapes this small are cluster or warp layouts (1x1x1, 2x1x1), never a CTA tile.
_MIN_TILE_DIM = 8


def _join(groups) -> str | None:
    dims = [int(g) for g in groups if g]
    if len(dims) < 2 or max(dims) < _MIN_TILE_DIM:
        return None
    return "x".join(str(d) for d in dims)


def parse_tile(name: str | None) -> str | None:
    """The tile configuration written in a kernel name, e.g. 't128x64x128' -> '128x64x128'.

    Constexpr assignments come back as written, sorted by name: 'BLOCK_M=64,BLOCK_N=128'.
    """
    if not name:
        return None
    assigns = _BLOCK_ASSIGN.findall(name)
    if assigns:
        return ",".join(f"{k}={v}" for k, v in sorted(dict(assigns).items()))
    for pattern in (_TRTLLM, _TILESIZE, _CUTE, _SHAPE, _MNK, _UNDERSCORED):
        for match in pattern.finditer(name):
            tile = _join(match.groups())
            if tile:
                return tile
    return None


def short_kernel_name(name: str) -> str:
    """A kernel's name without namespaces, template arguments and parameters.

    'void moe::dev::activation::activationDeepSeekKernel<KernelParams<...>>(Params)' ->
    'activationDeepSeekKernel'. Names that are already short come back unchanged.
    """
    text = name.strip()
    if text.startswith("void "):
        text = text[5:]
    depth, cut = 0, []
    for ch in text:  # drop everything inside <...> and (...), nested
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            cut.append(ch)
    base = "".join(cut).strip()
    base = base.split("::")[-1].strip() if "::" in base else base
    if base in _GENERIC and "<" in text:  # cutlass::Kernel<Op<...>>: name it by its operation
        inner = re.match(r"\s*([\w:]+)", text[text.index("<") + 1:])
        if inner:
            return f"{base}<{inner.group(1).split('::')[-1]}>"
    return base or name


_GENERIC = {"Kernel", "Kernel2", "device_kernel", "kernel", "GenericKernel"}
