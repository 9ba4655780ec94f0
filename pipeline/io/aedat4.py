"""AEDAT 4.0 (iniVation DV: DAVIS346, DVXplorer, tonic's CIFAR10-DVS copy) through the ``aedat`` decoder.

File layout (what DV and dv-processing write)::

    #!AER-DAT4.0\\r\\n          the version line (see pipeline.io.aedat_header)
    u32 length, IOHeader       a flatbuffer (identifier "IOHE"): compression (none | LZ4 | LZ4-high | ZSTD |
                               ZSTD-high), dataTablePosition (i64, -1 when the file was not closed), and a DV XML
                               description naming every stream: id, typeIdentifier (EVTS, FRME, IMUS, TRIG),
                               sizeX / sizeY and the camera (``source``, e.g. "DVXplorer_DXA00093")
    (i32 stream id, u32 size, compressed flatbuffer packet)*
    FileDataTable              an index of the packets, written when the file is closed

Decoding the packets is left to the ``aedat`` package (Rust; the decoder tonic's ``read_aedat4`` uses), an
optional extra: ``pip install -e '.[aedat4]'`` (it pins ``aedat==2.3.0``). This module reads only the IOHeader
itself (to name the camera, and to check the file is as long as the header says) and turns the decoder's
packets into the project's columns.

What is kept: the polarity events of **one** event stream -- the one with the lowest stream id, as tonic's
``read_aedat4`` chooses (a DAVIS or DVXplorer recording has exactly one; a stereo rig or a DV project that also
saved a filtered output has several: pass ``stream=`` to pick another). ``t`` is the event timestamp in µs
(DV's clock: µs since the Unix epoch, so values around 1.6e15), ``p = 1`` for ON. Nothing is dropped inside the
kept stream (``invalid_dropped`` is 0: AEDAT 4 events carry no valid bit). What is not kept is counted:

    other_event_streams_skipped   events of the other event streams
    frames_skipped                APS frames (one per frame packet)
    imu_samples_skipped           IMU samples
    triggers_skipped              trigger events
    nonpolarity_skipped           frames + IMU samples + triggers (the same meaning as in pipeline.io.aedat3)

Memory: the file is decoded twice, once to count the kept events and once into exact-size columns (13 bytes per
event), so a packet is held only while it is copied; decompression runs twice, which costs less than holding every
packet (the decoder's 13-byte records) next to the columns.

Errors: anything the decoder refuses (a truncated packet, an LZ4/ZSTD block that does not decompress, an unknown
stream id) becomes a RawDataError naming the file and the decoder's message (the decoder reports no offset). The
decoder stops silently when fewer than 4 bytes are left where a packet would start, so a file cut exactly at a
packet boundary would look complete to it; a file whose IOHeader records a dataTablePosition is therefore
checked to be at least that long (files not closed by DV carry -1 and cannot be checked this way).
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import numba as nb
import numpy as np

from pipeline.events import DecodedEvents
from pipeline.io.aedat_header import version_line
from pipeline.io.errors import RawDataError

__all__ = ["READER_VERSION", "DECODER_PIN", "read_aedat4", "read_ioheader", "stream_table", "decoder"]

READER_VERSION = "aedat4-reader/1"
#: The pinned decoder (pyproject.toml's ``aedat4`` extra).
DECODER_PIN = "aedat==2.3.0"
_COMPRESSION = ("none", "LZ4", "LZ4-high", "ZSTD", "ZSTD-high")
_MAX_HEADER_BYTES = 16 << 20


def decoder():
    """The ``aedat`` module, imported on first use; a clear ImportError naming the extra when it is missing."""
    try:
        import aedat
    except ImportError as err:
        raise ImportError(
            "reading AEDAT 4 files needs the optional 'aedat' decoder: pip install -e '.[aedat4]' "
            f"(or pip install {DECODER_PIN})") from err
    return aedat


def decoder_version() -> str:
    """``aedat <version>`` of the installed decoder (recorded in each file's header record)."""
    try:
        return f"aedat {metadata.version('aedat')}"
    except metadata.PackageNotFoundError:
        return "aedat (unknown version)"


def _flatbuffer_table(buf: bytes, path: str | Path, base: int) -> tuple[int, list[int]]:
    """Position of a flatbuffer's root table and its vtable's field offsets (0 = field absent)."""
    def u32(i: int) -> int:
        if i < 0 or i + 4 > len(buf):
            raise RawDataError(path, "IOHeader flatbuffer: offset out of range", offset=base + max(i, 0))
        return struct.unpack_from("<I", buf, i)[0]

    table = u32(0)
    vtable = table - struct.unpack("<i", struct.pack("<I", u32(table)))[0]
    if vtable < 0 or vtable + 4 > len(buf):
        raise RawDataError(path, "IOHeader flatbuffer: vtable out of range", offset=base + table)
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    if vt_size < 4 or vtable + vt_size > len(buf):
        raise RawDataError(path, f"IOHeader flatbuffer: vtable of {vt_size} bytes out of range", offset=base + vtable)
    fields = [struct.unpack_from("<H", buf, vtable + 4 + 2 * k)[0] for k in range((vt_size - 4) // 2)]
    return table, fields


def read_ioheader(path: str | Path, head: bytes | None = None) -> dict:
    """The IOHeader of an AEDAT 4.0 file: ``{"compression": str, "data_table_position": int, "description": str,
    "packets_start": int}``. ``head`` may hold the file's first bytes (read from ``path`` otherwise).

    Raises RawDataError (file and byte offset) when the version line is not ``#!AER-DAT4.0`` or the header is cut.
    """
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(18)
                if len(head) == 18:
                    head += f.read(min(struct.unpack_from("<I", head, 14)[0], _MAX_HEADER_BYTES))
        except OSError as err:
            raise RawDataError(path, f"cannot read: {err}") from err
    pos = version_line(head, path, "4.0")
    if len(head) < pos + 4:
        raise RawDataError(path, "truncated: no IOHeader length after the version line", offset=pos)
    length = struct.unpack_from("<I", head, pos)[0]
    buf = bytes(head[pos + 4 : pos + 4 + length])
    if len(buf) < length:
        raise RawDataError(path, f"truncated IOHeader: {length} bytes announced, {len(buf)} present", offset=pos)
    table, fields = _flatbuffer_table(buf, path, pos + 4)

    def field(k: int) -> int:
        return table + fields[k] if k < len(fields) and fields[k] else 0

    try:
        compression = struct.unpack_from("<i", buf, field(0))[0] if field(0) else 0
        data_table = struct.unpack_from("<q", buf, field(1))[0] if field(1) else -1
        description = ""
        if field(2):
            at = field(2) + struct.unpack_from("<I", buf, field(2))[0]
            n = struct.unpack_from("<I", buf, at)[0]
            description = buf[at + 4 : at + 4 + n].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as err:
        raise RawDataError(path, f"malformed IOHeader flatbuffer: {err}", offset=pos + 4) from None
    if not 0 <= compression < len(_COMPRESSION):
        raise RawDataError(path, f"IOHeader: unknown compression {compression}", offset=pos + 4)
    return {"compression": _COMPRESSION[compression], "data_table_position": int(data_table),
            "description": description, "packets_start": pos + 4 + length}


def stream_table(description: str) -> dict[int, dict]:
    """Streams named in the DV XML description: ``{id: {"type": "EVTS"|"FRME"|"IMUS"|"TRIG", "name": output name,
    "source": camera, "width": int, "height": int}}`` (fields absent from the XML are absent here)."""
    out: dict[int, dict] = {}
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return out
    for node in root.findall("./node[@name='outInfo']/node"):
        try:
            sid = int(node.get("name", ""))
        except ValueError:
            continue
        info: dict = {}
        for key, name in (("typeIdentifier", "type"), ("originalOutputName", "name")):
            el = node.find(f"./attr[@key='{key}']")
            if el is not None and el.text:
                info[name] = el.text
        for key, name in (("source", "source"), ("sizeX", "width"), ("sizeY", "height")):
            el = node.find(f"./node[@name='info']/attr[@key='{key}']")
            if el is not None and el.text:
                info[name] = int(el.text) if name in ("width", "height") else el.text
        out[sid] = info
    return out


def read_aedat4(path: str | Path, *, stream: int | None = None, head: bytes | None = None) -> DecodedEvents:
    """Read the polarity events of one event stream of an AEDAT 4.0 file (see the module docstring).

    Returns x u2, y u2, t i8 (µs), p u1 (1 = ON) in file order, the counts of everything not kept, and
    ``header = {"format": "AEDAT 4.0", "source": camera or None, "sensor_size": [W, H], "stream": id,
    "streams": [...], "compression": ..., "decoder": "aedat 2.3.0"}``. ``head``: the file's first bytes, when
    the caller has them already (only the header is parsed from them; the decoder reads ``path``).
    """
    aedat = decoder()
    path = Path(path)
    ioh = read_ioheader(path, head)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise RawDataError(path, f"cannot read: {err}") from err
    if ioh["data_table_position"] >= 0 and size < ioh["data_table_position"]:
        raise RawDataError(path, f"truncated: the IOHeader puts the packet index at byte "
                                 f"{ioh['data_table_position']}, the file has {size} bytes", offset=size)
    described = stream_table(ioh["description"])
    dec = _open(aedat, path)
    streams = dec.id_to_stream()
    event_ids = sorted(i for i, s in streams.items() if s["type"] == "events")
    if not event_ids:
        raise RawDataError(path, f"no event stream (streams: {_describe(streams)})")
    keep = event_ids[0] if stream is None else int(stream)
    if keep not in event_ids:
        raise RawDataError(path, f"stream {stream} is not an event stream (event streams: {event_ids})")
    counts = dict.fromkeys(("packets", "events_read", "invalid_dropped", "nonpolarity_skipped",
                            "other_event_streams_skipped", "frames_skipped", "imu_samples_skipped",
                            "triggers_skipped"), 0)
    # pass 1 counts (packets are dropped as they come); pass 2 decodes again into exact-size columns, so the
    # peak is the columns (13 bytes per event) plus one packet, not every packet held at once
    n_keep = 0
    for packet in _packets(dec, path):
        counts["packets"] += 1
        if "events" in packet:
            if packet["stream_id"] == keep:
                n_keep += len(packet["events"])
            else:
                counts["other_event_streams_skipped"] += len(packet["events"])
        elif "frame" in packet:
            counts["frames_skipped"] += 1
        elif "imus" in packet:
            counts["imu_samples_skipped"] += len(packet["imus"])
        elif "triggers" in packet:
            counts["triggers_skipped"] += len(packet["triggers"])
    x = np.empty(n_keep, np.uint16)
    y = np.empty(n_keep, np.uint16)
    t = np.empty(n_keep, np.int64)
    p = np.empty(n_keep, np.uint8)
    k = 0
    for packet in _packets(_open(aedat, path), path):
        if packet["stream_id"] != keep or "events" not in packet:
            continue
        a = packet["events"]
        if k + len(a) > n_keep:
            raise RawDataError(path, "the file changed while it was read (more events on the second pass)")
        _fill(a, k, x, y, t, p, path)
        k += len(a)
    if k != n_keep:
        raise RawDataError(path, "the file changed while it was read (fewer events on the second pass)")
    counts["events_read"] = n_keep
    counts["nonpolarity_skipped"] = counts["frames_skipped"] + counts["imu_samples_skipped"] + counts["triggers_skipped"]
    info = described.get(keep, {})
    header = {
        "format": "AEDAT 4.0",
        "source": info.get("source"),
        "sensor_size": [int(streams[keep]["width"]), int(streams[keep]["height"])],
        "stream": keep,
        "streams": [{"id": int(i), "type": s["type"], **({"name": described[i]["name"]}
                                                           if "name" in described.get(i, {}) else {})}
                    for i, s in sorted(streams.items())],
        "compression": ioh["compression"],
        "decoder": decoder_version(),
    }
    return DecodedEvents(x, y, t, p, counts, header)


def _open(aedat, path: Path):
    try:
        return aedat.Decoder(str(path))
    except RuntimeError as err:  # the decoder raises RuntimeError with its message for every malformed input
        raise RawDataError(path, f"AEDAT 4 decoder ({decoder_version()}): {err}") from None


def _packets(dec, path: Path):
    """The decoder's packets; its RuntimeErrors become RawDataErrors naming the file and the packet index."""
    i = 0
    while True:
        try:
            packet = next(dec)
        except StopIteration:
            return
        except RuntimeError as err:
            raise RawDataError(path, f"AEDAT 4 decoder ({decoder_version()}), after packet {i}: {err}") from None
        i += 1
        yield packet


@nb.njit(cache=True, nogil=True)
def _unpack(raw, k, x, y, t, p):
    """Packed 13-byte records -> columns at rows k..; returns the number of timestamps >= 2^63."""
    big = 0
    for i in range(raw.shape[0] // 13):
        b = i * 13
        tv = np.uint64(0)
        for j in range(8):
            tv |= np.uint64(raw[b + j]) << np.uint64(8 * j)
        if tv >> np.uint64(63):
            big += 1
        t[k + i] = np.int64(tv & np.uint64(0x7FFFFFFFFFFFFFFF))
        x[k + i] = np.uint16(raw[b + 8]) | (np.uint16(raw[b + 9]) << np.uint16(8))
        y[k + i] = np.uint16(raw[b + 10]) | (np.uint16(raw[b + 11]) << np.uint16(8))
        p[k + i] = 1 if raw[b + 12] else 0
    return big


def _fill(a: np.ndarray, k: int, x, y, t, p, path: Path) -> None:
    """Copy one packet's events into rows ``k:k+len(a)`` of the columns."""
    if a.dtype.itemsize == 13 and a.dtype.fields is not None and a.flags.c_contiguous and \
            [a.dtype.fields[f][1] for f in ("t", "x", "y", "p")] == [0, 8, 10, 12] and \
            [a.dtype.fields[f][0].str for f in ("t", "x", "y")] == ["<u8", "<u2", "<u2"]:
        big = _unpack(a.view(np.uint8), k, x, y, t, p)
    else:  # another layout (a future decoder version): field by field
        m = len(a)
        big = int(np.count_nonzero(a["t"] >= np.uint64(1 << 63)))
        x[k : k + m], y[k : k + m], t[k : k + m], p[k : k + m] = a["x"], a["y"], a["t"], a["p"]
    if big:
        raise RawDataError(path, "event timestamp does not fit in int64 µs")


def _describe(streams: dict) -> str:
    return ", ".join(f"{i}: {s['type']}" for i, s in sorted(streams.items())) or "none"
