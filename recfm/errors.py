"""Errors a user can act on.

Every problem with input data is raised as :class:`InputError`, whose message names the
file, the 1-based line (or row, for Parquet), the column, what was expected and what was
found. The CLI prints that one line to stderr and exits with status 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class RecfmError(Exception):
    """Base class for errors the CLI reports as one line (exit status 2)."""


class ConfigError(RecfmError, ValueError):
    """A configuration that cannot work (reported by the CLI as one line)."""


class InputError(RecfmError):
    """Bad input data, located as precisely as we can: ``file:line:column: …``. Always one
    line: control characters are escaped, and ``found`` is cut to 160 characters."""

    def __init__(
        self,
        file: str,
        line: int | None,
        column: str | None,
        expected: str,
        found: str,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.column = column
        self.expected = expected
        self.found = found
        where = self.file
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f":{column}"
        found = found if len(found) <= 160 else found[:157] + "..."
        message = f"{where}: expected {expected}, found {found}"
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def shorten(value: object, limit: int = 40) -> str:
    """A found value as it goes into an error message: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def reading(path: object, expected: str) -> Iterator[None]:
    """Any failure inside the block (a truncated, garbled or mismatched file) becomes one
    :class:`InputError` naming ``path``: what was ``expected``, and the reader's complaint."""
    try:
        yield
    except RecfmError:
        raise
    except BaseException as e:  # every reader has its own exceptions; all mean a bad file
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit; a Rust reader's panic is a bad file
        found = f"no {e} entry" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise InputError(str(path), None, None, expected, found) from None
