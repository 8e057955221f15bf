"""JSON and JSONL reading and writing with errors that name the file, the line and the field."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import DatasetError, pydantic_problems

M = TypeVar("M", bound=BaseModel)
JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):  # the text ends before the JSON value does
            raise DatasetError(f"malformed JSON: the text ends before the JSON value does ({exc.msg}); "
                               "it looks cut short", where=where,
                               fix="complete or remove the truncated record") from None
        raise DatasetError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                           where=where, fix="fix the JSON syntax") from None


def validate(model: type[M], data, where: str) -> M:
    """Validate `data` as `model`; the first problem is raised, all are attached as `.problems`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc, where)
        err = problems[0]
        err.problems = problems  # type: ignore[attr-defined]
        raise err from None


def load_model(path: str | Path, model: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read: {exc.strerror}", where=path) from None
    return validate(model, _parse_json(text, str(path)), str(path))


def load_jsonl(path: str | Path, problems: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, parsed object) for each non-blank line.

    Without `problems` the first malformed line raises. With a list, every malformed line (bad JSON,
    a line cut short, bytes that are not UTF-8, a value that is not a JSON object) is appended to it
    as a DatasetError naming `file:line`, and the lines after it are still read.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"not UTF-8 text (byte {exc.start + 1} of the line)", where=where,
                                       fix="save the file as UTF-8") from None
                if not line.strip():
                    continue
                obj = _parse_json(line, where)
                if problems is not None and not isinstance(obj, dict):
                    kind = JSON_KINDS.get(type(obj), type(obj).__name__)
                    raise DatasetError(f"a line holds a JSON {kind}, not an object", where=where,
                                       fix="put one JSON object per line")
            except DatasetError as err:
                if problems is None:
                    raise
                problems.append(err)
                continue
            yield number, obj


def dump_json(model: BaseModel) -> str:
    return model.model_dump_json(exclude_none=True)


def append_jsonl_text(path: str | Path, text: str) -> None:
    """Append one JSON text as a line, in a single write, then fsync it.

    A crash leaves at most this line cut short, never an earlier one. If the file does not end
    with a newline (a line cut short by an earlier crash that nobody repaired), a newline is
    written first, so the new record never merges with the fragment: the fragment stays a bad line
    of its own and the new record parses. A newly created file's directory entry is fsynced too.
    """
    if "\n" in text:
        raise ValueError("a JSONL record must not contain a newline")
    path = Path(path)
    data = (text + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if not size:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def write_jsonl_line(path: str | Path, model: BaseModel) -> None:
    """Append one record and flush it to disk, so an interrupted run keeps every finished line
    (see append_jsonl_text: a crash cuts at most this line short)."""
    append_jsonl_text(path, dump_json(model))
