"""Event arrays people save themselves: ``.npy`` (a structured array) or HDF5 (four datasets), fields x, y, t, p.

* ``.npy``: one structured array with fields ``x, y, t, p`` in any order and any integer (or bool, for p)
  dtypes -- what tonic's datasets return, e.g. ``[("x", i2), ("y", i2), ("p", bool), ("t", i8)]``. Other
  fields are ignored (and named in the header record).
* HDF5: 1-D datasets ``x, y, t, p`` of equal length at the root or in an ``events`` group (DSEC's
  ``events.h5`` layout); ``sensor_size = [W, H]`` (or ``width`` and ``height``) attributes on the root or that
  group, when present, give the sensor size.

``t`` is in µs. ``p`` must be 0/1 (or bool); ``x, y`` must be non-negative and fit in uint16; anything else is
a RawDataError naming the file and the first bad event's index. Sniff a file with `sniff_format` (magic bytes,
not the extension).
"""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from pipeline.events import DecodedEvents
from pipeline.io.errors import RawDataError

__all__ = ["READER_VERSION", "NPY_MAGIC", "HDF5_MAGIC", "decode_npy", "decode_h5", "h5_sensor_size", "write_npy"]

READER_VERSION = "arrays-reader/1"
NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
FIELDS = ("x", "y", "t", "p")


def _columns(cols: dict[str, np.ndarray], path: str | Path, fmt: str, extra: dict) -> DecodedEvents:
    """Validate and convert four equal-length columns to the project's dtypes."""
    n = len(cols["t"])
    for f in FIELDS:
        a = cols[f]
        if a.ndim != 1 or len(a) != n:
            raise RawDataError(path, f"field {f!r} has shape {a.shape}, expected ({n},) like 't'")
        if a.dtype.kind not in "iub":
            raise RawDataError(path, f"field {f!r} has dtype {a.dtype}, expected integers"
                                     f"{' or bool' if f == 'p' else ''} (t in µs)")
    for f, hi in (("x", 1 << 16), ("y", 1 << 16), ("p", 2)):
        a = cols[f]
        if a.dtype.kind == "b":
            continue
        bad = (a < 0) | (a >= hi)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise RawDataError(path, f"event {k}: {f}={int(a[k])} is outside [0, {hi - 1}]"
                                     f"{' (p must be 0 = OFF or 1 = ON)' if f == 'p' else ''}")
    if cols["t"].dtype == np.uint64 and n and int(cols["t"].max()) >= 1 << 63:
        raise RawDataError(path, "a timestamp does not fit in int64 µs")
    counts = {"events_read": n, "invalid_dropped": 0, "nonpolarity_skipped": 0}
    return DecodedEvents(cols["x"].astype(np.uint16), cols["y"].astype(np.uint16), cols["t"].astype(np.int64),
                         cols["p"].astype(np.uint8), counts, {"format": fmt, **extra})


def decode_npy(data: bytes, path: str | Path = "<buffer>") -> DecodedEvents:
    """Events of a ``.npy`` file held in memory (a structured array with fields x, y, t, p)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise RawDataError(path, f"not a readable .npy file: {err}", offset=0) from None
    names = arr.dtype.names or ()
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise RawDataError(path, f".npy array needs fields x, y, t, p; missing {missing} "
                                 f"(dtype {arr.dtype}; a plain (N, 4) array is ambiguous: save a structured one)")
    return _columns({f: arr[f] for f in FIELDS}, path, "npy",
                    {"fields": list(names)})


def _events_group(f: h5py.File, path: str | Path):
    for node in (f, f.get("events")):
        if isinstance(node, h5py.Group) and all(isinstance(node.get(k), h5py.Dataset) for k in FIELDS):
            return node
    raise RawDataError(path, "HDF5 file needs 1-D datasets x, y, t, p at the root or in an 'events' group; "
                             f"found {sorted(f.keys())}")


def h5_sensor_size(group, path: str | Path) -> tuple[int, int] | None:
    """``(W, H)`` from a ``sensor_size`` (or ``width`` / ``height``) attribute of ``group`` or its file root."""
    for node in (group, group.file):
        a = node.attrs
        try:
            if "sensor_size" in a:
                w, h = (int(v) for v in np.asarray(a["sensor_size"]).reshape(-1)[:2])
                return w, h
            if "width" in a and "height" in a:
                return int(a["width"]), int(a["height"])
        except (TypeError, ValueError) as err:
            raise RawDataError(path, f"unreadable sensor size attribute: {err}") from None
    return None


def decode_h5(data: bytes | None, path: str | Path) -> DecodedEvents:
    """Events of an HDF5 file (``data``: its bytes, or None to open ``path``)."""
    try:
        with h5py.File(io.BytesIO(data) if data is not None else path, "r") as f:
            g = _events_group(f, path)
            cols = {k: g[k][()] for k in FIELDS}
            size = h5_sensor_size(g, path)
    except OSError as err:
        raise RawDataError(path, f"not a readable HDF5 file: {err}", offset=0) from None
    extra = {"group": g.name}
    if size is not None:
        extra["sensor_size"] = list(size)
    return _columns(cols, path, "HDF5", extra)


def write_npy(path: str | Path, x, y, t, p, dtype=None) -> None:
    """Save events as a structured ``.npy`` (default dtype: tonic's DVSGesture one), atomically."""
    dtype = dtype or np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    arr = np.empty(len(t), dtype)
    arr["x"], arr["y"], arr["t"], arr["p"] = x, y, t, p
    tmp = Path(str(path) + ".part")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    tmp.replace(path)
