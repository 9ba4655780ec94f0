"""AEDAT 3.1 (cAER / jAER) reader and writer for DVS128 polarity events, as in DVS128-Gesture.

File layout::

    #!AER-DAT3.1\\r\\n           the version line, as cAER and jAER write it (see pipeline.io.aedat_header)
    #Format: RAW\\r\\n           ASCII header lines, each starting with '#' and ending in \\r\\n (\\n is accepted)
    #Source 1: DVS128\\r\\n
    #Start-Time: 2017-01-16 16:15:36 (TZ+0100)\\r\\n
    #!END-HEADER\\r\\n
    packet*                     28-byte little-endian header, then eventCapacity * eventSize bytes

    packet header: eventType u16, eventSource u16, eventSize u32, eventTSOffset u32, eventTSOverflow u32,
                   eventCapacity u32, eventNumber u32, eventValid u32

A polarity event (eventType 1, eventSize 8, eventTSOffset 4) is ``data u32, timestamp u32``::

    x = data >> 17 & 0x7FFF,  y = data >> 2 & 0x7FFF,  polarity = data >> 1 & 1,  valid = data & 1
    t = eventTSOverflow << 31 | timestamp        (µs, 64-bit)

x and y are the 15-bit fields of libcaer's ``polarity.h`` (bits 17-31 and 2-16), as SpikingJelly's
``load_aedat_v3`` reads them. (tonic's ``read_dvs_ibm`` masks 13 bits, ``0x1FFF``, which folds an address past
8191 back into the sensor; reader/1 did the same. No DVS128 event has those bits set.)

eventCapacity vs eventNumber: a packet occupies ``eventCapacity * eventSize`` bytes on disk (the slots the
packet was allocated with; cAER writes files with the two equal, and SpikingJelly's reader advances by
capacity). Only the first ``eventNumber`` slots hold events; slots past eventNumber are skipped and counted as
``unused_slots``. ``eventNumber > eventCapacity`` is a format error.

Decoding runs in Numba, no per-event Python: one pass validates every packet header, a second lists the
polarity packets, then two passes parallel over packets count each packet's valid events and decode them into
their exact output rows (packets are independent, so the result does not depend on the thread count).
"""

from __future__ import annotations

from pathlib import Path

import numba as nb
import numpy as np

from pipeline.events import DecodedEvents
from pipeline.io.aedat_header import version_line
from pipeline.io.errors import RawDataError
from pipeline.runtime import PARALLEL_LOCK  # the workqueue threading layer and its one-launch-at-a-time rule

__all__ = [
    "READER_VERSION",
    "read_aedat31",
    "decode_aedat31",
    "write_aedat31",
    "encode_packet",
    "POLARITY_EVENT",
]

READER_VERSION = "aedat3.1-reader/2"  # /2: 15-bit x, y fields (were 13)
POLARITY_EVENT = 1
HEADER_BYTES = 28
_END_HEADER = b"#!END-HEADER"
_MAX_HEADER_BYTES = 1 << 20

# Error codes returned by the Numba kernels; the wrapper turns them into RawDataError messages.
_OK, _ERR_TRUNC_HEADER, _ERR_TRUNC_BODY, _ERR_POL_SIZE, _ERR_POL_TSOFF, _ERR_NUM_GT_CAP, _ERR_ZERO_SIZE = range(7)
_MESSAGES = {
    _ERR_TRUNC_HEADER: "truncated packet header ({detail} of 28 bytes present)",
    _ERR_TRUNC_BODY: "truncated packet: eventCapacity * eventSize needs {detail} bytes past the header, fewer remain",
    _ERR_POL_SIZE: "eventSize {detail} is inconsistent with a polarity packet (eventType 1 needs eventSize 8)",
    _ERR_POL_TSOFF: "eventTSOffset {detail} is inconsistent with a polarity packet (must be 4)",
    _ERR_NUM_GT_CAP: "eventNumber exceeds eventCapacity ({detail})",
    _ERR_ZERO_SIZE: "eventSize 0 with a non-zero eventCapacity ({detail})",
}


@nb.njit(cache=True, nogil=True)
def _u32(buf, i):
    return np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << 8) | (np.uint32(buf[i + 2]) << 16) | (np.uint32(buf[i + 3]) << 24)


@nb.njit(cache=True, nogil=True)
def _walk_packets(buf, start):
    """Validate every packet header. Returns (err, err_offset, detail, n_packets, polarity_events, other_events,
    unused_slots)."""
    n = buf.shape[0]
    pos = start
    n_packets = 0
    pol = 0
    other = 0
    unused = 0
    while pos < n:
        if n - pos < 28:
            return _ERR_TRUNC_HEADER, pos, n - pos, n_packets, pol, other, unused
        etype = np.uint32(buf[pos]) | (np.uint32(buf[pos + 1]) << 8)
        esize = np.int64(_u32(buf, pos + 4))
        tsoff = np.int64(_u32(buf, pos + 8))
        cap = np.int64(_u32(buf, pos + 16))
        num = np.int64(_u32(buf, pos + 20))
        if etype == 1 and esize != 8:
            return _ERR_POL_SIZE, pos + 4, esize, n_packets, pol, other, unused
        if etype == 1 and tsoff != 4:
            return _ERR_POL_TSOFF, pos + 8, tsoff, n_packets, pol, other, unused
        if num > cap:
            return _ERR_NUM_GT_CAP, pos + 20, num, n_packets, pol, other, unused
        if esize == 0 and cap > 0:
            return _ERR_ZERO_SIZE, pos + 4, cap, n_packets, pol, other, unused
        body = esize * cap
        if body > n - pos - 28:
            return _ERR_TRUNC_BODY, pos, body, n_packets, pol, other, unused
        if etype == 1:
            pol += num
        else:
            other += num
        unused += cap - num
        n_packets += 1
        pos += 28 + body
    return _OK, pos, 0, n_packets, pol, other, unused


@nb.njit(cache=True, nogil=True)
def _polarity_table(buf, start, n_packets):
    """Byte position, eventNumber and eventTSOverflow of every polarity packet (headers already validated)."""
    pos_out = np.empty(n_packets, np.int64)
    num_out = np.empty(n_packets, np.int64)
    ovf_out = np.empty(n_packets, np.int64)
    n = buf.shape[0]
    pos = start
    k = 0
    while pos < n:
        etype = np.uint32(buf[pos]) | (np.uint32(buf[pos + 1]) << 8)
        esize = np.int64(_u32(buf, pos + 4))
        cap = np.int64(_u32(buf, pos + 16))
        if etype == 1:
            pos_out[k] = pos + 28
            num_out[k] = np.int64(_u32(buf, pos + 20))
            ovf_out[k] = np.int64(_u32(buf, pos + 12))
            k += 1
        pos += 28 + esize * cap
    return pos_out[:k], num_out[:k], ovf_out[:k]


@nb.njit(cache=True, nogil=True, parallel=True)
def _count_valid(buf, pos, num):
    """Valid events per polarity packet (the valid bit of each event's data word), in parallel over packets."""
    out = np.empty(pos.shape[0], np.int64)
    for i in nb.prange(pos.shape[0]):
        c = 0
        e = pos[i]
        for _ in range(num[i]):
            c += buf[e] & 1  # little-endian: bit 0 of the data word is bit 0 of its first byte
            e += 8
        out[i] = c
    return out


@nb.njit(cache=True, nogil=True, parallel=True)
def _decode_packets(buf, pos, num, overflow, first, x, y, t, p):
    """Decode packet i's valid events into rows first[i]:first[i+1]; packets are independent (no races)."""
    for i in nb.prange(pos.shape[0]):
        high = overflow[i] << 31
        k = first[i]
        e = pos[i]
        for _ in range(num[i]):
            data = _u32(buf, e)
            if data & 1:
                x[k] = (data >> 17) & 0x7FFF
                y[k] = (data >> 2) & 0x7FFF
                p[k] = (data >> 1) & 1
                t[k] = high | np.int64(_u32(buf, e + 4))
                k += 1
            e += 8


def parse_header(buf: bytes | np.ndarray, path: str | Path) -> tuple[dict, int]:
    """The header's fields and the offset of the first packet.

    The first line must be ``#!AER-DAT3.1``; every further line starts with ``#`` and ends in ``\\r\\n`` (or
    ``\\n``), up to ``#!END-HEADER``. ``#Format:`` must be ``RAW`` when present (cAER's compressed formats are
    refused by name). Returns ``({"format": "AEDAT 3.1", "source": ..., "start_time": ...}, data_start)``;
    ``source`` is the first ``#Source N: <camera>`` line (``DVS128`` in DVS128-Gesture).
    """
    head = bytes(buf[:_MAX_HEADER_BYTES])
    pos = version_line(head, path, "3.1")
    info: dict = {"format": "AEDAT 3.1"}
    while True:
        eol = head.find(b"\n", pos)
        if eol < 0:
            raise RawDataError(path, "header never ends: no '#!END-HEADER' line", offset=pos)
        line = head[pos:eol].rstrip(b"\r")
        if not line.startswith(b"#"):
            raise RawDataError(path, f"header line does not start with '#' (no '#!END-HEADER' line before it): {line[:40]!r}", offset=pos)
        if line == _END_HEADER:
            return info, eol + 1
        text = line[1:].decode("latin-1")
        key, _, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if key == "Format" and value != "RAW":
            raise RawDataError(path, f"'#Format: {value}' is not supported (only RAW, the format cAER and jAER record in)", offset=pos)
        if key.startswith("Source ") and "source" not in info:
            info["source"] = value
        if key == "Start-Time":
            info["start_time"] = value
        pos = eol + 1


def decode_aedat31(buf: bytes | np.ndarray, path: str | Path = "<buffer>") -> DecodedEvents:
    """Decode an AEDAT 3.1 file held in memory (bytes or a uint8 array). Raises RawDataError on malformed input."""
    buf = np.frombuffer(buf, np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else np.ascontiguousarray(buf, np.uint8)
    header, start = parse_header(buf, path)
    err, off, detail, n_packets, n_pol, n_other, unused = _walk_packets(buf, start)
    if err != _OK:
        raise RawDataError(path, _MESSAGES[err].format(detail=detail), offset=int(off))
    pos, num, overflow = _polarity_table(buf, start, n_packets)
    first = np.zeros(len(pos) + 1, np.int64)
    with PARALLEL_LOCK:  # one parallel launch at a time (pipeline.runtime)
        np.cumsum(_count_valid(buf, pos, num), out=first[1:])
    kept = int(first[-1])
    invalid = n_pol - kept
    x = np.empty(kept, np.uint16)
    y = np.empty(kept, np.uint16)
    t = np.empty(kept, np.int64)
    p = np.empty(kept, np.uint8)
    with PARALLEL_LOCK:
        _decode_packets(buf, pos, num, overflow, first, x, y, t, p)
    counts = {
        "packets": int(n_packets),
        "events_read": int(n_pol),
        "invalid_dropped": int(invalid),
        "nonpolarity_skipped": int(n_other),
        "unused_slots": int(unused),
    }
    return DecodedEvents(x, y, t, p, counts, header)


def read_aedat31(path: str | Path) -> DecodedEvents:
    """Read the valid polarity events of an AEDAT 3.1 file (see the module docstring for the format)."""
    try:  # memory-mapped: the page cache is decoded in place, without a copy of the file
        buf = np.memmap(path, dtype=np.uint8, mode="r") if Path(path).stat().st_size else np.empty(0, np.uint8)
    except OSError as err:
        raise RawDataError(path, f"cannot read: {err}") from err
    return decode_aedat31(buf, path)


# --------------------------------------------------------------------------------------------- writing
def encode_packet(
    event_type: int,
    payload: bytes,
    *,
    event_size: int,
    ts_offset: int = 4,
    ts_overflow: int = 0,
    capacity: int | None = None,
    number: int | None = None,
    valid: int | None = None,
    source: int = 1,
) -> bytes:
    """One packet: the 28-byte header followed by ``payload`` (``capacity * event_size`` bytes)."""
    if capacity is None:
        capacity = len(payload) // event_size if event_size else 0
    number = capacity if number is None else number
    valid = number if valid is None else valid
    head = np.array(
        [event_type | (source << 16), event_size, ts_offset, ts_overflow, capacity, number, valid], dtype="<u4"
    )
    return head.tobytes() + payload


def polarity_payload(x, y, t, p, valid=None) -> bytes:
    """Encode polarity events (timestamps' low 31 bits) as the little-endian (data, timestamp) u32 pairs."""
    n = len(t)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    words = np.empty((n, 2), dtype="<u4")
    words[:, 0] = (
        (np.asarray(x, np.uint32) << 17)
        | (np.asarray(y, np.uint32) << 2)
        | (np.asarray(p, np.uint32) << 1)
        | valid.astype(np.uint32)
    )
    words[:, 1] = np.asarray(t, np.int64) & 0x7FFFFFFF
    return words.tobytes()


def write_aedat31(
    path: str | Path,
    x,
    y,
    t,
    p,
    *,
    valid=None,
    events_per_packet: int = 4096,
    header_lines: tuple[str, ...] = ("#Format: RAW", "#Source 1: DVS128", "#Start-Time: 2017-01-01 00:00:00 (TZ+0000)"),
) -> None:
    """Write polarity events as an AEDAT 3.1 file, as cAER does for a DVS128 (the same header lines).

    Events are grouped into packets of at most ``events_per_packet`` events that share ``t >> 31`` (the packet's
    eventTSOverflow). ``valid`` (bool per event, default all True) sets each event's valid bit; eventValid counts
    them. ``t`` must be sorted and non-negative.
    """
    t = np.asarray(t, np.int64)
    n = len(t)
    if n and (t[0] < 0 or np.any(np.diff(t) < 0)):
        raise ValueError("write_aedat31: timestamps must be non-negative and sorted")
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    x, y, p = np.asarray(x), np.asarray(y), np.asarray(p)
    overflow = t >> 31
    lines = ("#!AER-DAT3.1", *header_lines, _END_HEADER.decode())
    parts = [line.encode("ascii") + b"\r\n" for line in lines]
    # packet boundaries: every events_per_packet events and wherever the overflow counter changes
    cuts = set(range(0, n, events_per_packet)) | set((np.flatnonzero(np.diff(overflow)) + 1).tolist())
    bounds = sorted(cuts) + [n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if a == b:
            continue
        payload = polarity_payload(x[a:b], y[a:b], t[a:b], p[a:b], valid[a:b])
        parts.append(
            encode_packet(POLARITY_EVENT, payload, event_size=8, ts_overflow=int(overflow[a]), valid=int(valid[a:b].sum()))
        )
    tmp = Path(str(path) + ".part")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(path)
