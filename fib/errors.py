"""Errors a user can hit. Each names where the problem is (file, field, solution) and how to fix it."""
from __future__ import annotations

from pathlib import Path


class FibError(Exception):
    """A problem with the user's input, reported without a traceback.

    `where` is the file (and line), `field` the JSON field or the solution, `fix` what to do.
    """

    def __init__(self, message: str, *, where: str | Path | None = None, field: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.where = str(where) if where is not None else None
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.where:
            parts.append(self.where)
        if self.field:
            parts.append(f"field '{self.field}'")
        head = ": ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class DatasetError(FibError):
    """A definition, workload or solution file that cannot be used."""


class ClusterError(FibError):
    """A --cluster / --gpus value that cannot be used, or a cluster that cannot run the plan."""


class InvalidValue(ValueError):
    """Raised by a schema validator: a value that cannot be used, with what to do about it.
    `pydantic_problems` turns it into a DatasetError that keeps the fix."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix


# What to do about pydantic's generic errors, by error type.
PYDANTIC_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove the field or correct its spelling",
    "union_tag_invalid": "use one of the expected values",
    "union_tag_not_found": "add the field 'type'",
    "literal_error": "use one of the expected values",
    "enum": "use one of the expected values",
}


def pydantic_problems(exc, where: str | Path) -> list[FibError]:
    """Turn a pydantic ValidationError into one DatasetError per problem, each naming its field."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or None
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidValue):
            problems.append(DatasetError(str(cause), where=where, field=field, fix=cause.fix))
        else:
            message = err.get("msg", "invalid value")
            if err.get("type") == "value_error":  # a validator's own words; pydantic prefixes "Value error, "
                message = message.removeprefix("Value error, ")
            problems.append(DatasetError(message, where=where, field=field, fix=PYDANTIC_FIXES.get(err.get("type"))))
    return problems


class TimingError(FibError):
    """A timer that cannot run here, or a call that the chosen timer cannot measure."""


class ConfigError(FibError):
    """A solution configuration that cannot be used: `--config` for a solution that declares none,
    a name it does not declare at a workload, or a `fib_configs` hook that answers something else
    than {name: dict}."""
