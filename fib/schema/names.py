"""Names and relative paths that fib turns into file and folder names, checked so none can leave
fib's folders (the reference cache, a run's logs/, the written-out sources of a solution).

A name (definition or solution) becomes one path component: it may not contain '/', '\\', '..'
or NUL, nor start with '.'. A source path is relative and stays inside its solution's folder, read
both the POSIX and the Windows way: no absolute path, no drive, no '..' component, no NUL.
"""
from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from ..errors import InvalidValue


def check_name(value: str, what: str) -> str:
    bad = [text for text, found in (("'/'", "/" in value), ("'\\'", "\\" in value), ("'..'", ".." in value),
                                    ("NUL", "\0" in value)) if found]
    if value.startswith("."):
        bad.append("a leading '.'")
    if bad:
        raise InvalidValue(f"{what} {value!r} has {' and '.join(bad)}; fib uses {what}s as file and folder "
                           "names, so they may not contain '/', '\\', '..' or NUL, nor start with '.'",
                           fix=f"rename the {what} (letters, digits, '_', '-', '.')")
    return value


def check_relative_path(value: str, what: str) -> str:
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    problem = None
    if "\0" in value:
        problem = "contains NUL"
    elif posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        problem = "is absolute"
    elif ".." in posix.parts or ".." in windows.parts:
        problem = "has a '..' component"
    if problem:
        raise InvalidValue(f"{what} {value!r} {problem}; it must be relative and stay inside the solution's "
                           "folder", fix="give the path relative to the solution's folder, without '..'")
    return value
