"""The base of every refusal a stage reports as one ``error:`` line and an exit code instead of a traceback.

A `Refusal` is an input or an output this run cannot accept: a malformed raw file
(`pipeline.io.errors.RawDataError`), a missing, damaged or stale store or cache (`pipeline.storage.StoreError`),
an unreadable checkpoint (`pipeline.runs.CheckpointError`), an unwritable folder or a full disk
(`pipeline.guards.OutputError`). Each class says its exit code (``exit_code``: 1 unless it says otherwise); the
one place that turns them into a message and that code is `pipeline.guards.exits_on_error`, which decorates every
stage's ``main``. This module imports nothing, so the raw readers can use it without pulling in the rest.
"""

from __future__ import annotations

__all__ = ["Refusal"]


class Refusal(Exception):
    """An input or output this run cannot accept; the message names the file (and offset, row) at fault."""

    #: The process exit code `pipeline.guards.exits_on_error` returns for it: 1 (failed while working) unless a
    #: subclass or the stage says otherwise (2: refused before any work).
    exit_code = 1
