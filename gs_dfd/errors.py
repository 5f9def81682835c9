"""Errors a user can act on: printed as one line by the CLI, no traceback."""

from __future__ import annotations

from pathlib import Path


class GsDfdError(Exception):
    """Base class of errors the CLI reports as a single line."""


class InputError(GsDfdError):
    """Bad input: names the file and, where there is one, the field."""

    def __init__(self, path: str | Path | None, message: str, field: str | None = None):
        self.path = None if path is None else Path(path)
        self.field = field
        self.message = message
        where = [str(self.path)] if self.path is not None else []
        if field:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [message]) if where else message)


class Interrupted(GsDfdError):
    """Ctrl-C during a long job, after its state was saved; the CLI exits 130."""


def os_error_reason(exc: OSError) -> str:
    """What the system said, for a one-line message: "No space left on device", "Read-only file system", ..."""
    if exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
