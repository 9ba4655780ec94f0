"""AEDAT 2.0 (jAER) reader and writer for DVS128 recordings, as in the original CIFAR10-DVS files.

File layout::

    #!AER-DAT2.0\\r\\n          the version line jAER writes (see pipeline.io.aedat_header)
    #...\\r\\n                  ASCII header lines, each starting with '#' (optionally ending with
                                '#End Of ASCII Header\\r\\n'; without that mark the header ends at the first line
                                that is not printable ASCII starting with '#')
    (address u32, timestamp u32)*   big-endian pairs, timestamps in µs

A file whose ``#`` comment lines carry no ``#!AER-DAT`` line is read as 2.0, as SpikingJelly's CIFAR10-DVS
loader does (tonic's ``read_aedat_header_from_file`` does not: it raises UnboundLocalError without a version
line; see tests/test_conformance.py). jAER writes the version line since 2.0; a 1.0 file's 6-byte events would
fail the whole-pairs check. Its header record says ``"version_line": false`` so the store's provenance shows the assumption. A
version line naming another version (1.0, 3.1, 4.0) is an error that names it, and so is a file with no ``#``
header at all.

Orientation: we follow SpikingJelly's CIFAR10-DVS loader, which most published CIFAR10-DVS results trained on.
From the raw jAER DVS128 address::

    x_r = (addr & 0xFE) >> 1,  y_r = (addr & 0x7F00) >> 8,  p_r = addr & 1
    stored:  x = 127 - y_r,  y = 127 - x_r,  p = 1 - p_r

so x, y are always inside the 128x128 sensor. 32-bit timestamps that wrap around (a step back of more than
2^31 µs) are unwrapped into int64. Events come back in file order (`pipeline.ingest` sorts any out-of-order
ones by time and counts them as ``reordered``; nothing is dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.events import DecodedEvents
from pipeline.io.aedat_header import version_line
from pipeline.io.errors import RawDataError

__all__ = ["READER_VERSION", "read_aedat20", "decode_aedat20", "write_aedat20", "to_raw_address"]

READER_VERSION = "aedat2.0-reader/1"
_END_MARK = b"#End Of ASCII Header"
_MAX_LINE = 4096


def _is_header_line(line: bytes) -> bool:
    """A header line is printable ASCII ending in a line feed (binary event data practically never is)."""
    return line.endswith(b"\n") and all(32 <= c < 127 or c in (9, 13, 10) for c in line)


def _data_start(buf: bytes, path: str | Path) -> tuple[dict, int]:
    """The header record and the offset of the first binary byte: after the header lines (or the end mark)."""
    if not buf.startswith(b"#"):
        raise RawDataError(path, f"not an AEDAT 2.0 file: no '#!AER-DAT2.0' or '#' header line, found {buf[:16]!r}",
                           offset=0)
    has_version = buf.startswith(b"#!AER-DAT")
    if has_version:  # a version line must name 2.0 (a malformed one is an error, not a comment)
        version_line(buf, path, "2.0")
    header = {"format": "AEDAT 2.0", "version_line": has_version}
    pos = 0
    while pos < len(buf) and buf[pos : pos + 1] == b"#":
        eol = buf.find(b"\n", pos, pos + _MAX_LINE)
        line = buf[pos : eol + 1] if eol >= 0 else b""
        if not _is_header_line(line):
            if pos == 0:
                raise RawDataError(path, "malformed first header line", offset=0)
            break  # binary data whose first byte happens to be '#': the header ended before it
        pos = eol + 1
        if line.startswith(_END_MARK):
            break
    return header, pos


def decode_aedat20(buf: bytes, path: str | Path = "<buffer>") -> DecodedEvents:
    """Decode an AEDAT 2.0 DVS128 file held in memory (see the module docstring)."""
    header, start = _data_start(buf, path)
    n_bytes = len(buf) - start
    if n_bytes % 8:
        raise RawDataError(
            path,
            f"event data is {n_bytes} bytes, not a whole number of (address, timestamp) u32 pairs "
            f"({n_bytes // 4} u32 words{', an odd number' if (n_bytes // 4) % 2 else ''}; {n_bytes % 4} stray bytes)",
            offset=start + (n_bytes // 8) * 8,
        )
    words = np.frombuffer(buf, dtype=">u4", offset=start).reshape(-1, 2)
    addr = words[:, 0]
    t = words[:, 1].astype(np.int64)
    if len(t) > 1:
        step = np.diff(t)
        wraps = np.concatenate(([0], np.cumsum(step < -(1 << 31))))
        if wraps[-1]:
            t = t + (wraps.astype(np.int64) << 32)
    x_r = (addr & 0xFE) >> 1
    y_r = (addr & 0x7F00) >> 8
    p_r = addr & 1
    x = (127 - y_r).astype(np.uint16)
    y = (127 - x_r).astype(np.uint16)
    p = (1 - p_r).astype(np.uint8)
    counts = {"events_read": int(len(t)), "invalid_dropped": 0, "nonpolarity_skipped": 0}
    return DecodedEvents(x, y, t, p, counts, header)


def read_aedat20(path: str | Path) -> DecodedEvents:
    """Read a CIFAR10-DVS style AEDAT 2.0 file into columnar events (see the module docstring)."""
    try:
        buf = Path(path).read_bytes()
    except OSError as err:
        raise RawDataError(path, f"cannot read: {err}") from err
    return decode_aedat20(buf, path)


def to_raw_address(x, y, p) -> np.ndarray:
    """Inverse of the stored orientation: the jAER DVS128 address that reads back as (x, y, p)."""
    x_r = 127 - np.asarray(y, np.int64)
    y_r = 127 - np.asarray(x, np.int64)
    p_r = 1 - np.asarray(p, np.int64)
    return ((y_r << 8) | (x_r << 1) | p_r).astype(np.uint32)


def write_aedat20(path: str | Path, x, y, t, p, *, end_mark: bool = True) -> None:
    """Write events (stored orientation, t < 2^32 µs) as a jAER AEDAT 2.0 DVS128 file."""
    t = np.asarray(t, np.int64)
    if len(t) and (t.min() < 0 or t.max() >= 1 << 32):
        raise ValueError("write_aedat20: timestamps must fit in u32")
    words = np.empty((len(t), 2), dtype=">u4")
    words[:, 0] = to_raw_address(x, y, p)
    words[:, 1] = t
    header = [b"#!AER-DAT2.0", b"# This is a raw AE data file - do not edit",
              b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
              b"# Timestamps tick is 1 us"]
    if end_mark:
        header.append(_END_MARK)
    tmp = Path(str(path) + ".part")
    tmp.write_bytes(b"".join(h + b"\r\n" for h in header) + words.tobytes())
    tmp.replace(path)
