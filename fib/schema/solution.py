"""Solution: one implementation of a definition, FlashInfer-Trace compatible.

FlashInfer-Trace fields: `name`, `definition`, `author`, `spec` {`language`, `target_hardware`,
`entry_point` "file.py::function" (Python-like languages) or "file.cu::function" / "file.cpp::function"
(compiled ones, see `fib.native`), `dependencies`, `destination_passing_style`, `binding`
("torch" | "tvm-ffi"), `compile_options`}, `sources` [{`path`, `content`}], `description`.

In fib's own layout (`solutions/<definition>/<solution>/solution.json`) the sources live on disk
beside solution.json; `sources` may then list paths only, or be left out (every file in the folder
is a source). fib additions to `spec`, all optional:

- `shape_constraints`: Python expressions over the axes that must hold (else UNSUPPORTED).
- `build_timeout_s`: the budget for import and the `fib_build` hook (default 300 s), kept apart from the run
  timeout; the very first call (JIT) has `--jit-timeout`.
- `worker_env`: environment variables set when this solution's worker process (and its `fib build`
  process) starts, for what must be in place before the first import (e.g. `LD_PRELOAD`). Values may
  name the parent's variables as `${NAME}`; an entry whose variables are all unset or empty is left
  out (see `BuildSpec.worker_environment`).

`target_hardware` entries understood by fib: "cpu"; "cuda" or "gpu" (any CUDA GPU); "smNN" (that
compute capability, e.g. sm90), "smNN+" (that or newer); any other word is matched against the GPU
name (e.g. "H100", "B200").

Names and paths are checked so that none leaves fib's folders (see `fib.schema.names`): `name` and
`definition` are single path components, source paths and the entry_point file are relative without
'..', and in fib's layout every source file, followed through symlinks, lies inside the folder.
"""
from __future__ import annotations

import ast
import re
from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .names import check_name, check_relative_path


class SourcePathError(ValueError):
    """A solution's source file that is missing or lies outside its folder; names the field and the fix."""

    def __init__(self, message: str, *, field: str, fix: str):
        super().__init__(message)
        self.field = field
        self.fix = fix


class Language(str, Enum):
    """Every language flashinfer-bench's schema lists (its current `language` values, and the names
    of its multi-language variant), in two families: Python-like ones are imported as a module,
    C++-like ones are compiled into an extension (see `fib.native`)."""
    # Python family
    python = "python"
    pytorch = "pytorch"
    triton = "triton"
    tilelang = "tilelang"
    cutedsl = "cutedsl"
    cute_dsl = "cute_dsl"
    cutile = "cutile"
    cudnn_frontend = "cudnn_frontend"
    # C++ family
    cuda = "cuda"
    cpp = "cpp"
    cuda_cpp = "cuda_cpp"
    cutlass = "cutlass"
    cudnn = "cudnn"
    cublas = "cublas"

    @property
    def native(self) -> bool:
        """Compiled C++/CUDA (True) or imported Python (False)."""
        return self in NATIVE_LANGUAGES

    @property
    def with_cuda(self) -> bool:
        """Compiled with nvcc (CUDA sources, CUDA libraries)."""
        return self.native and self is not Language.cpp


NATIVE_LANGUAGES = frozenset({Language.cuda, Language.cpp, Language.cuda_cpp, Language.cutlass, Language.cudnn,
                              Language.cublas})
# The package (distribution name, import name) each Python-like DSL needs; absent -> UNSUPPORTED.
LANGUAGE_PACKAGES: dict[Language, tuple[str, str]] = {
    Language.triton: ("triton", "triton"),
    Language.tilelang: ("tilelang", "tilelang"),
    Language.cutedsl: ("nvidia-cutlass-dsl", "cutlass.cute"),
    Language.cute_dsl: ("nvidia-cutlass-dsl", "cutlass.cute"),
    Language.cutile: ("cuda-tile", "cuda.tile"),
    Language.cudnn_frontend: ("nvidia-cudnn-frontend", "cudnn"),
}
PYTHON_SUFFIXES = (".py",)
NATIVE_SUFFIXES = (".cu", ".cpp", ".cc", ".cxx", ".c")
HEADER_SUFFIXES = (".h", ".hpp", ".cuh", ".hh", ".inl")


class Binding(str, Enum):
    """How a compiled solution's entry function is exposed to Python (flashinfer-bench's
    `spec.binding`): a PyTorch extension module whose source binds it with PYBIND11_MODULE or
    TORCH_LIBRARY, or a tvm-ffi module whose source exports it with TVM_FFI_DLL_EXPORT_TYPED_FUNC."""
    torch = "torch"
    tvm_ffi = "tvm-ffi"


class CompileOptions(BaseModel):
    """Extra compiler and linker flags for C++/CUDA solutions (flashinfer-bench's field names)."""
    model_config = ConfigDict(extra="forbid")
    cflags: list[str] = Field(default_factory=list)
    cuda_cflags: list[str] = Field(default_factory=list)
    ld_flags: list[str] = Field(default_factory=list)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str = Field(min_length=1)
    content: Optional[str] = None

    @field_validator("path")
    @classmethod
    def _relative_path(cls, path: str) -> str:
        return check_relative_path(path, "source path")


class BuildSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    language: Language
    target_hardware: list[str] = Field(default_factory=lambda: ["cuda"])
    entry_point: str
    dependencies: list[str] = Field(default_factory=list)
    destination_passing_style: bool = True
    build_commands: list[str] = Field(default_factory=list)
    binding: Optional[Binding] = None  # C++/CUDA only; None: read from the entry source (see fib.native)
    compile_options: Optional[CompileOptions] = None
    # fib additions
    shape_constraints: list[str] = Field(default_factory=list)
    build_timeout_s: float = Field(default=300, gt=0)
    worker_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("worker_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if not _ENV_NAME.fullmatch(k) or k.startswith("FIB_"))
        if bad:
            raise ValueError(f"worker_env names {bad} are not environment variable names a solution may set "
                             "(letters, digits, '_', not starting with a digit; FIB_* belong to fib)")
        return value

    def worker_environment(self, environ: dict[str, str]) -> dict[str, str]:
        """`worker_env` with `${NAME}` replaced from `environ`; an entry whose referenced variables are
        all unset or empty is dropped (so an unset `${DEEPGEMM_LD_PRELOAD}` sets no LD_PRELOAD)."""
        resolved = {}
        for key, template in self.worker_env.items():
            names = _ENV_REF.findall(template)
            if names and not any(environ.get(n) for n in names):
                continue
            resolved[key] = _ENV_REF.sub(lambda m: environ.get(m.group(1), ""), template)
        return resolved

    @field_validator("entry_point")
    @classmethod
    def _entry_point_form(cls, value: str) -> str:
        file, sep, func = value.partition("::")
        if not sep or not file or "::" in func or not func.isidentifier():
            raise ValueError(f"entry_point {value!r} must look like 'file.py::function' (Python-like languages) "
                             "or 'file.cu::function' / 'file.cpp::function' (C++/CUDA)")
        check_relative_path(file, "entry_point file")
        return value

    @model_validator(mode="after")
    def _entry_file_fits_language(self):
        file = self.entry_file
        if self.language.native:
            if not file.endswith(NATIVE_SUFFIXES):
                raise ValueError(f"entry_point {self.entry_point!r}: language '{self.language.value}' is compiled, "
                                 f"so its entry file must be a C++/CUDA source ({', '.join(NATIVE_SUFFIXES)}), "
                                 f"e.g. 'kernel.cu::{self.entry_function}'")
        else:
            if not file.endswith(PYTHON_SUFFIXES):
                raise ValueError(f"entry_point {self.entry_point!r}: language '{self.language.value}' is imported "
                                 f"as Python, so its entry file must be a .py file (C++/CUDA sources need "
                                 "language 'cuda' or 'cpp')")
            if self.binding is not None or self.compile_options is not None:
                raise ValueError(f"binding/compile_options are for C++/CUDA solutions, not language "
                                 f"'{self.language.value}'")
        return self

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
    # Set by the dataset when another author's solution has the same name for the same definition:
    # both are then known as 'author/name' (see `label`).
    namespaced: bool = Field(default=False, exclude=True)

    @property
    def label(self) -> str:
        """The name fib files results under and selects by: `name`, or `author/name` when two
        authors' solutions of one definition share the name."""
        return f"{self.author}/{self.name}" if self.namespaced else self.name

    @property
    def safe_label(self) -> str:
        """`label` as one file-name component ('author/name' -> 'author--name')."""
        return self.label.replace("/", "--")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "solution name")

    @field_validator("definition")
    @classmethod
    def _safe_definition(cls, value: str) -> str:
        return check_name(value, "definition name")

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
        """Read the sources from `root` (our on-disk layout) into `content`.

        Every source, the entry file first among them, must be a file inside `root` once symlinks
        are resolved: a symlink pointing out of the folder raises SourcePathError (a ValueError)."""
        self._root = root
        if not self.sources:
            self.sources = [SourceFile(path=p.relative_to(root).as_posix())
                            for p in sorted(root.rglob("*"))
                            if p.is_file() and p.name != "solution.json" and "__pycache__" not in p.parts]
        inside = root.resolve()
        for src in self.sources:
            field = "spec.entry_point" if src.path == self.spec.entry_file else "sources"
            file = root / src.path
            target = file.resolve()
            if target != inside and inside not in target.parents:
                raise SourcePathError(f"{src.path!r} resolves to {target}, outside the solution's folder {inside}",
                                      field=field, fix="copy the file into the solution's folder instead of "
                                                       "linking to it")
            if src.content is None:
                if not file.is_file():
                    raise SourcePathError(f"sources names {src.path!r}, which is not a file in {root}",
                                          field=field, fix="add the file or remove it from 'sources'")
                src.content = file.read_text()
        return self

    def entry_source(self) -> Optional[SourceFile]:
        return next((s for s in self.sources if s.path == self.spec.entry_file), None)
