"""The one event contract of the project.

Every reader, store, kernel and dataset speaks these types:

* ``EVENT_DTYPE`` -- a NumPy structured dtype with tonic's field names ``x, y, t, p``
  (``t`` in microseconds), so tonic transforms accept our events unchanged.
* ``SensorSize(width, height, polarities)`` -- the order tonic uses for ``sensor_size``.
* ``DecodedEvents`` -- what every raw reader returns: the columns ``x, y`` (u2), ``t`` (i8 µs), ``p`` (u1) of one
  recording, the counts of everything it did not keep, and what the file's header said.
* Frames are laid out ``(T, P, H, W)``; a batch of samples is ``(N, T, P, H, W)``.
  ``frame_shape`` computes that layout, for the empty case too.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["EVENT_DTYPE", "SensorSize", "DecodedEvents", "make_events", "frame_shape"]

#: x, y: pixel column/row (uint16); t: timestamp in microseconds (int64); p: polarity 0=OFF, 1=ON (uint8).
EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])


class SensorSize(NamedTuple):
    """Sensor geometry in tonic's order: ``(width, height, polarities)``."""

    width: int
    height: int
    polarities: int

    @classmethod
    def of(cls, value: "SensorSize | tuple[int, int, int] | list[int]") -> "SensorSize":
        """Coerce a ``(W, H, P)`` tuple, validating that every entry is a positive int."""
        try:
            w, h, p = (int(v) for v in value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"sensor_size must be (width, height, polarities), got {value!r}") from err
        if w <= 0 or h <= 0 or p not in (1, 2):
            raise ValueError(f"sensor_size must have positive width/height and 1 or 2 polarities, got {value!r}")
        return cls(w, h, p)


class DecodedEvents(NamedTuple):
    """Columnar polarity events of one recording plus the counts of everything not kept."""

    x: np.ndarray  # uint16 (N,)
    y: np.ndarray  # uint16 (N,)
    t: np.ndarray  # int64 (N,) µs
    p: np.ndarray  # uint8 (N,)
    counts: dict[str, int]
    header: dict | None = None  # what the file's header says: {"format": "AEDAT 3.1", "source": "DVS128", ...}


def make_events(x, y, t, p) -> np.ndarray:
    """Pack four equal-length 1-D arrays into a contiguous ``EVENT_DTYPE`` array."""
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"x, y, t, p must have equal lengths, got {len(x)}, {len(y)}, {n}, {len(p)}")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = x
    ev["y"] = y
    ev["t"] = t
    ev["p"] = p
    return ev


def frame_shape(n_frames: int, sensor_size: SensorSize) -> tuple[int, int, int, int]:
    """Frame layout ``(T, P, H, W)`` for ``n_frames`` frames of a sensor ``(W, H, P)``."""
    s = SensorSize.of(sensor_size)
    return (int(n_frames), s.polarities, s.height, s.width)
