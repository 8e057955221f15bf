"""Solution: one implementation of a definition, FlashInfer-Trace compatible.

FlashInfer-Trace fields: `name`, `definition`, `author`, `spec` {`language`, `target_hardware`,
`entry_point` "file.py::function", `dependencies`, `destination_passing_style`}, `sources`
[{`path`, `content`}], `description`.

In fib's own layout (`solutions/<definition>/<solution>/solution.json`) the sources live on disk
beside solution.json; `sources` may then list paths only, or be left out (every file in the folder
is a source). fib additions to `spec`, all optional:

- `shape_constraints`: Python expressions over the axes that must hold (else UNSUPPORTED).
- `build_timeout_s`: the budget for import and the `fib_build` hook (default 300 s), kept apart from the run
  timeout; the very first call (JIT) has `--jit-timeout`.

`target_hardware` entries understood by fib: "cpu"; "cuda" or "gpu" (any CUDA GPU); "smNN" (that
compute capability, e.g. sm90), "smNN+" (that or newer); any other word is matched against the GPU
name (e.g. "H100", "B200").
"""
from __future__ import annotations

import ast
from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class Language(str, Enum):
    python = "python"
    triton = "triton"
    cuda = "cuda"
    cpp = "cpp"


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str = Field(min_length=1)
    content: Optional[str] = None

    @field_validator("path")
    @classmethod
    def _relative_path(cls, path: str) -> str:
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ValueError(f"source path {path!r} must be relative and stay inside the solution")
        return path


class BuildSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    language: Language
    target_hardware: list[str] = Field(default_factory=lambda: ["cuda"])
    entry_point: str
    dependencies: list[str] = Field(default_factory=list)
    destination_passing_style: bool = True
    build_commands: list[str] = Field(default_factory=list)
    # fib additions
    shape_constraints: list[str] = Field(default_factory=list)
    build_timeout_s: float = Field(default=300, gt=0)

    @field_validator("entry_point")
    @classmethod
    def _entry_point_form(cls, value: str) -> str:
        file, sep, func = value.partition("::")
        if not sep or not file.endswith(".py") or not func.isidentifier():
            raise ValueError(f"entry_point {value!r} must look like 'file.py::function'")
        return value

    @property
    def entry_file(self) -> str:
        return self.entry_point.partition("::")[0]

    @property
    def entry_function(self) -> str:
        return self.entry_point.partition("::")[2]


class Solution(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    author: str = "unknown"
    spec: BuildSpec
    sources: list[SourceFile] = Field(default_factory=list)
    description: Optional[str] = None

    # Where the sources lie on disk (our layout), or None when they are embedded.
    _root: Optional[Path] = PrivateAttr(default=None)
    # The JSON file it was loaded from, for error messages.
    file: Optional[Path] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _sources_consistent(self):
        paths = [s.path for s in self.sources]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"sources lists {dupes} more than once")
        for src in self.sources:
            if src.content is not None and src.path.endswith(".py"):
                try:
                    ast.parse(src.content)
                except SyntaxError as exc:
                    raise ValueError(f"sources[{src.path}] is not valid Python: line {exc.lineno}: {exc.msg}")
        return self

    @property
    def root(self) -> Optional[Path]:
        return self._root

    def attach_root(self, root: Path) -> "Solution":
        """Read the sources from `root` (our on-disk layout) into `content`."""
        self._root = root
        if not self.sources:
            self.sources = [SourceFile(path=str(p.relative_to(root)))
                            for p in sorted(root.rglob("*"))
                            if p.is_file() and p.name != "solution.json" and "__pycache__" not in p.parts]
        for src in self.sources:
            if src.content is None:
                file = root / src.path
                if not file.is_file():
                    raise ValueError(f"sources names {src.path!r}, which is not a file in {root}")
                src.content = file.read_text()
        return self

    def entry_source(self) -> Optional[SourceFile]:
        return next((s for s in self.sources if s.path == self.spec.entry_file), None)
