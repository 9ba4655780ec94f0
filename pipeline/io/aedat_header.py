"""The ASCII version line every AEDAT file starts with, as the real tools write it.

jAER, cAER and DV all begin a file with ``#!AER-DAT<major>.<minor>`` and a line end (``\\r\\n``; ``\\n`` is
accepted too)::

    #!AER-DAT2.0\\r\\n      jAER (CIFAR10-DVS)                then '#' comment lines, then big-endian event pairs
    #!AER-DAT3.1\\r\\n      cAER / jAER (DVS128-Gesture)      then '#' lines up to '#!END-HEADER', then packets
    #!AER-DAT4.0\\r\\n      iniVation DV (DAVIS346, DVXplorer) then a flatbuffer IOHeader and LZ4/ZSTD packets

(There is no ``#!AEDAT-3.1`` spelling: no device or tool writes it.) tonic's ``read_aedat_header_from_file``
and SpikingJelly's readers parse the same line. `sniff_version` reads it without raising, so a caller can pick
the reader; `version_line` raises a `RawDataError` that names the file when it is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.io.errors import RawDataError

__all__ = ["sniff_version", "version_line", "SUPPORTED"]

_VERSION = re.compile(rb"#!AER-DAT(\d+)\.(\d+)\r?\n")

#: Versions this project reads, and the module that reads each.
SUPPORTED = {"2.0": "pipeline.io.aedat2", "3.1": "pipeline.io.aedat3", "4.0": "pipeline.io.aedat4"}


def sniff_version(head: bytes) -> tuple[str, int] | None:
    """``(version, offset past the line)`` of a ``#!AER-DAT<major>.<minor>`` first line, else None."""
    m = _VERSION.match(bytes(head[:64]))
    if m is None:
        return None
    return f"{int(m.group(1))}.{int(m.group(2))}", m.end()


def version_line(head: bytes, path: str | Path, expected: str) -> int:
    """Check that ``head`` starts with the ``#!AER-DAT<expected>`` line; return the offset past it.

    The error names the version found (and the reader for it) or the bytes found instead.
    """
    found = sniff_version(head)
    if found is None:
        raise RawDataError(
            path, f"not an AEDAT {expected} file: expected a '#!AER-DAT{expected}' first line, "
                  f"found {bytes(head[:16])!r}", offset=0)
    version, end = found
    if version != expected:
        other = SUPPORTED.get(version)
        hint = f" (read it with {other})" if other else f" (supported versions: {', '.join(SUPPORTED)})"
        raise RawDataError(path, f"AEDAT version {version}, not {expected}{hint}", offset=0)
    return end
