"""AEDAT 4 test files written by iniVation's own library, dv-processing (an independent writer: tests only).

`pytest.importorskip` keeps the suite runnable without the dev extra; `make setup` installs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def dv():
    return pytest.importorskip("dv_processing")


def _store(dvp, t, x, y, p):
    store = dvp.EventStore()
    for ti, xi, yi, pi in zip(t.tolist(), x.tolist(), y.tolist(), p.tolist()):
        store.push_back(ti, xi, yi, bool(pi))
    return store


def write_dv(path: Path, x, y, t, p, *, camera: str = "DVXplorer_DXA00093", resolution=(640, 480),
             compression: str = "LZ4", davis: bool = False, second_stream=None, packet: int = 4096) -> None:
    """Write events with dv-processing's MonoCameraWriter (``davis``: also a frame, an IMU sample and a trigger
    per packet; ``second_stream``: (x, y, t, p) written to a second event stream "filtered")."""
    dvp = dv()
    W = dvp.io.MonoCameraWriter
    comp = getattr(dvp.CompressionType, compression)
    cfg = W.DAVISConfig(camera, resolution, comp) if davis else W.EventOnlyConfig(camera, resolution, comp)
    if second_stream is not None:
        cfg.addEventStream(resolution, "filtered", camera)
    writer = W(str(path), cfg)
    t = np.asarray(t, np.int64)
    for a in range(0, max(len(t), 1), packet):
        b = min(len(t), a + packet)
        if b > a:
            writer.writeEvents(_store(dvp, t[a:b], np.asarray(x[a:b]), np.asarray(y[a:b]), np.asarray(p[a:b])))
        if davis and b > a:
            h, w = resolution[1], resolution[0]
            writer.writeFrame(dvp.Frame(int(t[a]), np.full((h, w), a % 255, np.uint8)))
            writer.writeImu(dvp.IMU(int(t[a]), 25.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            writer.writeTrigger(dvp.Trigger(int(t[a]), dvp.TriggerType.EXTERNAL_SIGNAL_RISING_EDGE))
    if second_stream is not None:
        x2, y2, t2, p2 = second_stream
        writer.writeEvents(_store(dvp, np.asarray(t2, np.int64), np.asarray(x2), np.asarray(y2), np.asarray(p2)),
                           streamName="filtered")
    del writer  # the destructor flushes the buffers and writes the file data table


def events(rng: np.random.Generator, n: int, w: int, h: int, t0: int = 1_700_000_000_000_000, span: int = 1_000_000):
    """Sorted random events on a w x h sensor, DV's absolute µs clock."""
    t = np.sort(rng.integers(t0, t0 + span, n)).astype(np.int64)
    return rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n)
