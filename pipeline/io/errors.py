"""The one error type raw readers raise for malformed input."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import Refusal

__all__ = ["RawDataError"]


class RawDataError(Refusal, ValueError):
    """A raw file does not follow its format.

    The message always names the file and the position: a byte offset for binary files, a 1-based row for
    text files. Both are also kept as attributes so callers can act on them.
    """

    def __init__(self, path: str | Path, message: str, *, offset: int | None = None, row: int | None = None):
        self.path = str(path)
        self.offset = offset
        self.row = row
        where = self.path
        if offset is not None:
            where += f" at byte {offset}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")
