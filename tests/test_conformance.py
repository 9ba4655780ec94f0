"""Conformance: published readers and binners we did not write, run on the same bytes as ours, event by event.

Which peer checks which of our functions (the peers are installed for the tests only, by ``make setup``; nothing
in pipeline/ or models/ imports them)::

    peer                                                               checks
    SpikingJelly 2.0.0  datasets.utils.load_aedat_v3                   pipeline.io.aedat3.read_aedat31
    tonic 1.7.0         io.read_dvs_ibm  (read_aedat_header_from_file  pipeline.io.aedat3.read_aedat31
                        + get_aer_events_from_file)
    SpikingJelly 2.0.0  datasets.cifar10_dvs._load_origin_data         pipeline.io.aedat2.read_aedat20 (orientation)
    tonic 1.7.0         io.read_dvs_128                                pipeline.io.aedat2.read_aedat20
    SpikingJelly 2.0.0  DVS128Gesture.create_raw_from_extracted        pipeline.ingestion.ingest (dvs_gesture samples)
    SpikingJelly 2.0.0  datasets.utils.                                pipeline.binning.to_frames(
                        integrate_events_by_fixed_frames_number          semantics="spikingjelly")

The files are written two ways: byte by byte from the published formats in this module (`spec_aedat31`,
`spec_aedat20`: ``struct.pack``, no project code), and by our writers. Where a peer differs from us by design,
the difference is applied to the peer's output -- each one is named with the line of the peer's code it comes
from -- and equality is asserted after it. A missing peer is an import error here, not a skip.

AEDAT 3.1 polarity event (libcaer ``polarity.h``): ``data u32 | timestamp i32`` little-endian; bit 0 valid,
bit 1 polarity, bits 2-16 y, bits 17-31 x; ``t = eventTSOverflow << 31 | timestamp``.
AEDAT 2.0 (jAER ``AEFileOutputStream``): ``#`` header lines, then big-endian ``address u32, timestamp u32``;
DVS128 address: bit 0 polarity, bits 1-7 x, bits 8-14 y (jAER's own axes).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import struct
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tonic.io

from pipeline.binning import to_frames
from pipeline.config import IngestConfig
from pipeline.datasets import get_spec
from pipeline.datasets.base import Window
from pipeline.datasets.dvs_gesture import write_recording, write_trials
from pipeline.events import make_events
from pipeline.ingest import ingest
from pipeline.io.aedat2 import read_aedat20, write_aedat20
from pipeline.io.aedat3 import read_aedat31, write_aedat31
from pipeline.io.errors import RawDataError
from pipeline.store import open_event_store

# ------------------------------------------------------------------------------------------- SpikingJelly import
# spikingjelly.datasets imports torchvision, torchaudio and matplotlib at module level (datasets/base.py,
# utils.py, speechcommands.py, and every dataset module's `from torchvision.datasets.utils import
# extract_archive`); torchvision does not load against the CPU torch. The readers used here never call them, so
# while this module runs those three names resolve to empty stub modules, and nothing else ever sees the stubs.
_STUBBED = ("torchvision", "torchaudio", "matplotlib")


class _StubModule(types.ModuleType):
    """Any public attribute is a fresh empty class (``DatasetFolder`` is subclassed in datasets/base.py)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__module__": self.__name__})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _owned(name: str) -> bool:
    return name.partition(".")[0] in (*_STUBBED, "spikingjelly")


@pytest.fixture(scope="module")
def sj():
    """SpikingJelly 2.0.0's dataset modules, imported with the stubs; sys.modules is restored afterwards."""
    saved = {name: mod for name, mod in sys.modules.items() if _owned(name)}
    for name in saved:
        del sys.modules[name]
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        import spikingjelly.datasets.cifar10_dvs as cifar10_dvs
        import spikingjelly.datasets.dvs128_gesture as dvs128_gesture
        import spikingjelly.datasets.utils as utils

        yield types.SimpleNamespace(utils=utils, cifar10_dvs=cifar10_dvs, dvs128_gesture=dvs128_gesture)
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if _owned(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_peers_stay_out_of_the_project():
    """The peers are test-only: no module of pipeline/ or models/ imports them."""
    repo = Path(__file__).resolve().parents[1]
    peer_import = re.compile(r"^\s*(import|from)\s+(spikingjelly|loguru)\b", re.M)
    offenders = [str(f.relative_to(repo)) for d in ("pipeline", "models") for f in sorted((repo / d).rglob("*.py"))
                 if peer_import.search(f.read_text(encoding="utf-8"))]
    assert not offenders


# ------------------------------------------------------------------------------------------- tonic's readers
def tonic_read(reader, path: Path, header: tuple[float, int] | None = None) -> np.ndarray:
    """Run tonic's ``read_dvs_ibm`` / ``read_dvs_128`` (its own bit layout) on ``path``.

    tonic 1.7 io.py ``read_dvs_128`` / ``read_dvs_ibm`` unpack ``read_aedat_header_from_file``'s three return
    values into two names (``data_version, data_start = read_aedat_header_from_file(filename)``) and so raise on
    every file (`test_tonic_readers_as_released_raise`); they run here with that function narrowed to its first
    two values -- or, where ``header=(version, data_start)`` is given, with tonic's header scan replaced by it.
    """
    real = tonic.io.read_aedat_header_from_file

    def header_of(filename):
        return header if header is not None else real(filename)[:2]

    with mock.patch.object(tonic.io, "read_aedat_header_from_file", header_of):
        _, events = reader(str(path))
    return events


@pytest.mark.parametrize("reader", ["read_dvs_128", "read_dvs_ibm"])
def test_tonic_readers_as_released_raise(tmp_path, reader):
    """Why `tonic_read` narrows the header function: tonic 1.7.0 as released cannot run these two readers."""
    path = tmp_path / "a.aedat"
    path.write_bytes(spec_aedat20([(1, 2, 1, 10)])[0])
    with pytest.raises(ValueError, match="too many values to unpack"):
        getattr(tonic.io, reader)(str(path))


def _raises_or_differs(fn, expected) -> bool:
    """True when ``fn()`` raises or returns events other than ``expected`` (a peer that cannot read a file)."""
    try:
        got = fn()
    except Exception:  # noqa: BLE001 -- any failure of the peer counts as "does not read it"
        return True
    return any(len(got[k]) != len(expected[k]) or not np.array_equal(got[k], expected[k]) for k in "xytp")


def _cols(ev) -> dict[str, np.ndarray]:
    """x, y, t, p of a DecodedEvents, a dict or a structured array, as int64 columns."""
    get = (lambda k: getattr(ev, k)) if hasattr(ev, "counts") else (lambda k: ev[k])
    return {k: np.asarray(get(k)).astype(np.int64) for k in "xytp"}


def assert_events_equal(got: dict, expected: dict, what: str) -> None:
    for k in "xytp":
        np.testing.assert_array_equal(np.asarray(got[k]).astype(np.int64), np.asarray(expected[k]).astype(np.int64),
                                      err_msg=f"{what}: field {k}")


# =========================================================================================== AEDAT 3.1
CAER_HEADER = (  # cAER's header for a DVS128, as in the DVS128-Gesture recordings; line ends: `spec_aedat31`
    "#!AER-DAT3.1",
    "#Format: RAW",
    "#Source 1: DVS128",
    "#Start-Time: 2017-01-16 16:15:36 (TZ+0100)",
    "#!END-HEADER",
)
HEADER_WITH_SOURCE_INFO = (  # '#-Source' and comment lines too (their text is made up: any '#' line is skipped)
    "#!AER-DAT3.1",
    "#Format: RAW",
    "#Source 1: DVS128",
    "#-Source 1: sizeX=128 sizeY=128",
    "# a comment line",
    "#Start-Time: 2017-01-16 16:15:36 (TZ+0100)",
    "#!END-HEADER",
)


def pol_word(x: int, y: int, p: int, valid: int = 1) -> int:
    return (x << 17) | (y << 2) | (p << 1) | valid


def spec_packet(event_type: int, slots: list[bytes], *, event_size: int, overflow: int = 0, number: int | None = None,
                source: int = 1) -> bytes:
    """One AEDAT 3.1 packet: the 28-byte header (eventType u16, eventSource u16, eventSize, eventTSOffset,
    eventTSOverflow, eventCapacity, eventNumber, eventValid: u32 little-endian) and ``len(slots)`` slots."""
    assert all(len(s) == event_size for s in slots)
    capacity = len(slots)
    number = capacity if number is None else number
    valid = sum(struct.unpack_from("<I", s)[0] & 1 for s in slots[:number])
    head = struct.pack("<HHIIIIII", event_type, source, event_size, 4, overflow, capacity, number, valid)
    assert len(head) == 28
    return head + b"".join(slots)


def pol_slot(x: int, y: int, p: int, ts: int, valid: int = 1) -> bytes:
    return struct.pack("<II", pol_word(x, y, p, valid), ts)


def spec_aedat31(packets: list[bytes], header=CAER_HEADER, eol: bytes = b"\r\n") -> bytes:
    return b"".join(line.encode() + eol for line in header) + b"".join(packets)


def packets_with_everything(imu: bool = True) -> list[bytes]:
    """Several polarity packets crossing 2^31 and 2^32 µs, invalid events, unused slots past eventNumber that
    hold valid-looking events, a special-event packet, an IMU6 packet (eventSize 36) and an empty packet."""
    rng = np.random.default_rng(31)

    def random_slots(n, t0, t1, invalid_every=0):
        ts = np.sort(rng.integers(t0, t1, n))
        return [pol_slot(int(rng.integers(128)), int(rng.integers(128)), int(rng.integers(2)), int(t),
                         0 if invalid_every and i % invalid_every == 3 else 1) for i, t in enumerate(ts)]

    special = [struct.pack("<II", (1 << 1) | 1, 5), struct.pack("<II", (0x2A << 8) | (5 << 1) | 1, 9)]
    imu6 = [struct.pack("<II7f", 1, 20 + i, 0.1, 0.2, 9.8, 25.0, 0.0, 0.5, -0.5) for i in range(2)]
    packets = [
        spec_packet(1, random_slots(6, 10, 1000) + random_slots(2, 1000, 2000), event_size=8, number=6),
        spec_packet(0, special, event_size=8),
        spec_packet(1, random_slots(40, 2000, (1 << 31) - 1, invalid_every=7), event_size=8),
    ]
    if imu:
        packets.append(spec_packet(3, imu6, event_size=36))
    packets += [
        spec_packet(1, random_slots(30, 0, 1 << 20, invalid_every=5), event_size=8, overflow=1),  # t >= 2^31
        spec_packet(1, random_slots(3, 0, 9), event_size=8, overflow=1, number=0),  # no event, 3 unused slots
        spec_packet(1, random_slots(25, 0, (1 << 31) - 1), event_size=8, overflow=2, number=20),  # t >= 2^32
    ]
    return packets


def slot_table(data: bytes) -> dict[str, np.ndarray]:
    """Every event slot of every packet, in file order, straight from the spec (struct, no project code):
    eventType, whether the slot is below eventNumber, the valid bit, eventSize, and x, y, p, t as the spec
    decodes them (t with the packet's eventTSOverflow)."""
    pos = data.index(b"\n", data.index(b"#!END-HEADER")) + 1
    rows = []
    while pos < len(data):
        etype, _, size, _, overflow, capacity, number, _ = struct.unpack_from("<HHIIIIII", data, pos)
        pos += 28
        for k in range(capacity):
            word, ts = struct.unpack_from("<II", data, pos + k * size)
            rows.append((etype, k < number, word & 1, size, (word >> 17) & 0x7FFF, (word >> 2) & 0x7FFF,
                         (word >> 1) & 1, overflow << 31 | ts, ts))
        pos += capacity * size
    cols = np.array(rows, dtype=np.int64).reshape(-1, 9).T
    return dict(zip(("type", "in_number", "valid", "size", "x", "y", "p", "t", "ts"), cols))


def sj_keep(slots) -> np.ndarray:
    """Which of SpikingJelly's events are ours. SpikingJelly (datasets/utils.py load_aedat_v3) reads
    ``e_capacity * e_size`` bytes per packet and, ``if e_type == 1``, decodes every slot: the valid bit and
    eventNumber are not looked at. Its rows are the eventType-1 slots; we keep those below eventNumber whose
    valid bit is set."""
    pol = slots["type"] == 1
    return ((slots["in_number"] == 1) & (slots["valid"] == 1))[pol]


def tonic_keep(slots) -> np.ndarray:
    """Which of tonic's events are ours. tonic (io.py get_aer_events_from_file, version > 3) reads, after each
    28-byte header, ``np.fromfile(f, <u4 pairs, capacity)``: eventCapacity 8-byte slots of every packet, whatever
    its eventType, eventNumber or valid bit. Its rows are all slots (of files whose packets all have eventSize 8,
    see `test_aedat31_tonic_cannot_read_other_event_sizes`)."""
    assert np.all(slots["size"] == 8)
    return (slots["type"] == 1) & (slots["in_number"] == 1) & (slots["valid"] == 1)


def check_aedat31_peers(sj, path: Path, crlf_twin: Path | None = None) -> dict[str, np.ndarray]:
    """Ours on ``path`` against SpikingJelly and tonic (on ``crlf_twin`` where the file has LF line ends: both
    peers need CRLF, `test_aedat31_lf_header`), each after its documented difference; returns our events."""
    ours = _cols(read_aedat31(path))
    peer_path = crlf_twin or path
    slots = slot_table(peer_path.read_bytes())
    spec = {k: slots[k][(slots["type"] == 1) & (slots["in_number"] == 1) & (slots["valid"] == 1)] for k in "xytp"}
    assert_events_equal(ours, spec, f"{path.name}: ours vs the spec's slot table")

    sj_events = sj.utils.load_aedat_v3(peer_path)
    keep = sj_keep(slots)
    assert len(sj_events["t"]) == len(keep)
    assert_events_equal({k: np.asarray(sj_events[k])[keep] for k in "xytp"}, ours, f"{path.name}: SpikingJelly")

    if np.all(slots["size"] == 8):
        tn = tonic_read(tonic.io.read_dvs_ibm, peer_path)
        keep = tonic_keep(slots)
        assert len(tn) == len(keep)
        tn = {k: tn[k][keep].astype(np.int64) for k in "xytp"}
        # tonic (get_aer_events_from_file) never reads eventTSOverflow: its t is the slot's 32-bit timestamp
        tn["t"] = tn["t"] | (slots["t"][keep] >> 31 << 31)
        # tonic (io.py read_dvs_ibm) masks x and y with 0x1FFF, 13 of the 15 address bits
        ours13 = {**ours, "x": ours["x"] & 0x1FFF, "y": ours["y"] & 0x1FFF}
        assert_events_equal(tn, ours13, f"{path.name}: tonic")
    return ours


@pytest.mark.parametrize("header", [CAER_HEADER, HEADER_WITH_SOURCE_INFO], ids=["caer", "source-info"])
def test_aedat31_spec_built_file(sj, tmp_path, header):
    path = tmp_path / "spec.aedat"
    path.write_bytes(spec_aedat31(packets_with_everything(), header))
    ours = check_aedat31_peers(sj, path)
    counts = read_aedat31(path).counts
    assert counts["packets"] == 7 and counts["nonpolarity_skipped"] == 4 and counts["unused_slots"] == 10
    assert ours["t"].max() >= 1 << 32 and np.all(np.diff(ours["t"]) >= 0)


def test_aedat31_spec_built_file_tonic(sj, tmp_path):
    """The same packets without the IMU6 packet, so that tonic reads it too."""
    path = tmp_path / "spec.aedat"
    path.write_bytes(spec_aedat31(packets_with_everything(imu=False)))
    check_aedat31_peers(sj, path)
    assert read_aedat31(path).counts["invalid_dropped"] > 0


def test_aedat31_tonic_cannot_read_other_event_sizes(tmp_path):
    """tonic reads eventCapacity 8-byte slots whatever the eventSize (get_aer_events_from_file), so after an
    IMU6 packet (eventSize 36) it reads the rest of the file out of step; ours and SpikingJelly do not."""
    path = tmp_path / "imu.aedat"
    path.write_bytes(spec_aedat31(packets_with_everything(imu=True)))
    slots = slot_table(path.read_bytes())
    ours = _cols(read_aedat31(path))
    keep = (slots["type"] == 1) & (slots["in_number"] == 1) & (slots["valid"] == 1)
    assert len(ours["t"]) == keep.sum()

    def tonic_events():
        tn = tonic_read(tonic.io.read_dvs_ibm, path)
        if len(tn) != len(keep):
            raise AssertionError("tonic read another number of slots")
        return {k: tn[k][keep] for k in "xytp"}

    ours_low = {**ours, "t": ours["t"] & 0x7FFFFFFF}
    assert _raises_or_differs(tonic_events, ours_low)


def test_aedat31_address_fields_are_15_bits(sj, tmp_path):
    """libcaer's polarity.h: x is bits 17-31, y bits 2-16 (15 bits each); SpikingJelly masks 0x7FFF, as we do.
    tonic's read_dvs_ibm masks 0x1FFF, so there an address past 8191 comes back inside the sensor (our reader/1
    did the same; found by this module, fixed in aedat3.1-reader/2). Ingest then names such an event as outside
    the 128x128 sensor instead of storing it at a wrong pixel."""
    slots = [pol_slot(8192 + 5, 3, 1, 10), pol_slot(7, (1 << 14) + 3, 0, 11), pol_slot(127, 127, 1, 12),
             pol_slot(32767, 32767, 1, 13)]
    root = tmp_path / "raw"
    root.mkdir()
    path = root / "user01_led.aedat"
    path.write_bytes(spec_aedat31([spec_packet(1, slots, event_size=8)]))
    ours = check_aedat31_peers(sj, path)
    assert ours["x"].tolist() == [8197, 7, 127, 32767] and ours["y"].tolist() == [3, 16387, 127, 32767]
    (root / "user01_led_labels.csv").write_text("class,startTime_usec,endTime_usec\r\n1,0,100\r\n")
    write_trials(root, ["user01_led"], [])
    with pytest.raises(RawDataError, match="x=8197, y=3 outside the 128x128 sensor"):
        ingest(get_spec("dvs_gesture"), root, tmp_path / "ev.zarr", IngestConfig(), progress=False)


def test_aedat31_our_writer(sj, tmp_path):
    """Our writer's output (invalid events, timestamps crossing 2^31, many packets) read by both peers."""
    rng = np.random.default_rng(3)
    n = 3000
    t = np.sort(rng.integers((1 << 31) - 400_000, (1 << 31) + 400_000, n))
    x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    valid = rng.random(n) > 0.1
    path = tmp_path / "ours.aedat"
    write_aedat31(path, x, y, t, p, valid=valid, events_per_packet=256)
    ours = check_aedat31_peers(sj, path)
    assert_events_equal(ours, {"x": x[valid], "y": y[valid], "t": t[valid], "p": p[valid]}, "writer round trip")


def test_aedat31_lf_header(sj, tmp_path):
    """'\\n' line ends: ours reads them as '\\r\\n'. Both peers need '\\r\\n': SpikingJelly's header loop ends only
    on ``line == b"#!END-HEADER\\r\\n"`` (utils.py load_aedat_v3) and so eats the first packet bytes as one more
    header line; tonic takes the version from ``str(line)[...:-5]`` (io.py read_aedat_header_from_file), which
    for ``'...3.1\\n'`` is 3.0, and get_aer_events_from_file has no branch for 3.0. So the peers read the CRLF
    twin (same packets) and ours must give the same events on both files."""
    packets = packets_with_everything(imu=False)
    lf, crlf = tmp_path / "lf.aedat", tmp_path / "crlf.aedat"
    lf.write_bytes(spec_aedat31(packets, eol=b"\n"))
    crlf.write_bytes(spec_aedat31(packets, eol=b"\r\n"))
    ours = check_aedat31_peers(sj, lf, crlf_twin=crlf)
    assert_events_equal(_cols(read_aedat31(crlf)), ours, "LF vs CRLF")
    assert _raises_or_differs(lambda: sj.utils.load_aedat_v3(lf), ours)
    with pytest.raises(NotImplementedError):
        tonic_read(tonic.io.read_dvs_ibm, lf)
    assert tonic.io.read_aedat_header_from_file(str(lf))[0] == 3.0


# =========================================================================================== AEDAT 2.0
JAER_HEADER = (  # jAER AEFileOutputStream's header (as in the CIFAR10-DVS files): no '#End Of ASCII Header'
    "#!AER-DAT2.0",
    "# This is a raw AE data file - do not edit",
    "# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
    "# Timestamps tick is 1 us",
    "# created Mon Jun 15 14:21:01 CST 2015",
)


def dvs128_address(x_r: int, y_r: int, p_r: int, high: int = 0) -> int:
    """jAER DVS128 address in jAER's axes: bit 0 polarity, bits 1-7 x, bits 8-14 y; ``high`` sets bits 16-31,
    which no DVS128 reader looks at."""
    return (high << 16) | (y_r << 8) | (x_r << 1) | p_r


def spec_aedat20(raw_events, header=JAER_HEADER, eol: bytes = b"\r\n") -> tuple[bytes, int]:
    """``(file bytes, header length)``: the '#' lines, then big-endian (address, timestamp) u32 pairs of
    ``raw_events`` = [(x_r, y_r, p_r, t[, high])]."""
    head = b"".join(line.encode() + eol for line in header)
    body = b"".join(struct.pack(">II", dvs128_address(e[0], e[1], e[2], *e[4:]), e[3]) for e in raw_events)
    return head + body, len(head)


def random_raw(n: int, seed: int, t0: int = 0, wrap: bool = False) -> list[tuple]:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 1 << 20, n)) + t0
    if wrap:  # jAER's 32-bit timestamps wrap around mid-recording
        t = t + (1 << 32) - int(t[n // 2])
    return [(int(a), int(b), int(c), int(d) & 0xFFFFFFFF)
            for a, b, c, d in zip(rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), t)]


def check_aedat20_peers(sj, path: Path, raw, tonic_header: tuple[float, int] | None = None) -> dict:
    """Ours on ``path`` against SpikingJelly (our stored orientation is its orientation) and tonic (its own
    orientation mapped), after unwrapping: both peers return the 32-bit timestamps as they are in the file
    (cifar10_dvs.py _load_raw_events, tonic get_aer_events_from_file), ours unwraps them into int64."""
    ours = _cols(read_aedat20(path))
    x_r, y_r, p_r, t_r = (np.array([e[i] for e in raw], np.int64) for i in range(4))
    # what SpikingJelly's loader returns, from the raw bits (cifar10_dvs.py _load_origin_data:
    # {"t": t, "x": 127 - y, "y": 127 - x, "p": 1 - p}) -- our documented claim, checked against the peer below
    assert_events_equal({**ours, "t": ours["t"] & 0xFFFFFFFF},
                        {"x": 127 - y_r, "y": 127 - x_r, "p": 1 - p_r, "t": t_r}, f"{path.name}: orientation claim")
    assert np.all(np.diff(ours["t"]) >= 0)

    sj_events = sj.cifar10_dvs._load_origin_data(path)
    assert_events_equal(sj_events, {**ours, "t": ours["t"] & 0xFFFFFFFF}, f"{path.name}: SpikingJelly")

    # tonic io.py read_dvs_128: x = a >> 8 & 0x7F, y = a >> 1 & 0x7F, p = a & 1 -- jAER's axes and polarity
    # as they are: ours (SpikingJelly's) is that rotated by 180 degrees, polarity inverted
    tn = tonic_read(tonic.io.read_dvs_128, path, tonic_header)
    mapped = {"x": 127 - tn["x"].astype(np.int64), "y": 127 - tn["y"].astype(np.int64),
              "p": 1 - tn["p"].astype(np.int64), "t": tn["t"]}
    assert_events_equal(mapped, {**ours, "t": ours["t"] & 0xFFFFFFFF}, f"{path.name}: tonic")
    return ours


def test_aedat20_spec_built_jaer_file(sj, tmp_path):
    """jAER's header without '#End Of ASCII Header', CRLF."""
    raw = random_raw(500, 1)
    path = tmp_path / "a.aedat"
    path.write_bytes(spec_aedat20(raw)[0])
    check_aedat20_peers(sj, path, raw)
    assert read_aedat20(path).header == {"format": "AEDAT 2.0", "version_line": True}


def test_aedat20_timestamp_wrap(sj, tmp_path):
    raw = random_raw(400, 2, wrap=True)
    path = tmp_path / "wrap.aedat"
    path.write_bytes(spec_aedat20(raw)[0])
    ours = check_aedat20_peers(sj, path, raw)
    assert ours["t"].max() >= 1 << 32 and ours["t"][0] < 1 << 32


def test_aedat20_lf_header(sj, tmp_path):
    """'\\n' line ends: all three read them (SpikingJelly strips each line; tonic's version slice gives 2)."""
    raw = random_raw(300, 3)
    path = tmp_path / "lf.aedat"
    path.write_bytes(spec_aedat20(raw, eol=b"\n")[0])
    check_aedat20_peers(sj, path, raw)


def test_aedat20_first_data_byte_is_hash(sj, tmp_path):
    """The first event's address starts with the byte '#' (0x23, bits 24-31, which no DVS128 reader decodes).

    Ours ends the header at the first line that is not printable ASCII. SpikingJelly's _skip_header
    (cifar10_dvs.py) stops where a line does not decode as UTF-8 (``except UnicodeDecodeError: break``), so with
    a 0xFF byte right after the '#' it reads the file as we do. tonic's read_aedat_header_from_file takes every
    line that starts with '#' as header (``is_comment = "#" in str(f.read(1))``) and starts the data after the
    next 0x0A byte: given the true data start, its decoder agrees with ours."""
    raw = [(5, 6, 1, 0x0A0A, 0x23FF)] + random_raw(200, 4, t0=0x0B00)
    data, header_len = spec_aedat20(raw)
    assert data[header_len : header_len + 1] == b"#"
    path = tmp_path / "hash.aedat"
    path.write_bytes(data)
    check_aedat20_peers(sj, path, raw, tonic_header=(2.0, header_len))
    assert tonic.io.read_aedat_header_from_file(str(path))[1] > header_len  # tonic's own scan: past the data start


def test_aedat20_first_data_byte_is_hash_and_utf8(sj, tmp_path):
    """As above, but the bytes up to the first 0x0A decode as UTF-8: SpikingJelly then also takes them for a
    header line (_skip_header) and reads the file out of step; ours still reads every event."""
    raw = [(5, 6, 1, 0x0A0A, 0x2320)] + random_raw(200, 5, t0=0x0B00)
    data, header_len = spec_aedat20(raw)
    path = tmp_path / "hash.aedat"
    path.write_bytes(data)
    ours = _cols(read_aedat20(path))
    assert len(ours["t"]) == len(raw)
    assert_events_equal(ours, _cols(read_aedat20_from(data, header_len)), "header end")
    assert _raises_or_differs(lambda: sj.cifar10_dvs._load_origin_data(path), ours)


def read_aedat20_from(data: bytes, header_len: int) -> dict:
    """The spec's events of a file whose header is ``header_len`` bytes, in our stored orientation."""
    words = np.frombuffer(data, ">u4", offset=header_len).reshape(-1, 2).astype(np.int64)
    a = words[:, 0]
    return {"x": 127 - (a >> 8 & 0x7F), "y": 127 - (a >> 1 & 0x7F), "p": 1 - (a & 1), "t": words[:, 1]}


def test_aedat20_comment_header_without_version_line(sj, tmp_path):
    """'#' lines but no '#!AER-DAT2.0': ours reads it as 2.0 (its header record says ``version_line: False``),
    as SpikingJelly does (_skip_header skips any '#' lines). tonic does NOT accept it: read_aedat_header_from_file
    assigns ``data_version`` only on a '!AER-DAT' line and raises UnboundLocalError without one; given the
    version and data start, its decoder agrees."""
    raw = random_raw(250, 6)
    data, header_len = spec_aedat20(raw, header=JAER_HEADER[1:])
    path = tmp_path / "nomagic.aedat"
    path.write_bytes(data)
    check_aedat20_peers(sj, path, raw, tonic_header=(2.0, header_len))
    assert read_aedat20(path).header == {"format": "AEDAT 2.0", "version_line": False}
    with pytest.raises(UnboundLocalError):
        tonic.io.read_aedat_header_from_file(str(path))


def test_aedat20_our_writer(sj, tmp_path):
    """Our writer's output (with the '#End Of ASCII Header' mark) read by both peers."""
    rng = np.random.default_rng(7)
    n = 2000
    x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 1 << 31, n))
    path = tmp_path / "ours.aedat"
    write_aedat20(path, x, y, t, p)
    raw = list(zip((127 - y).tolist(), (127 - x).tolist(), (1 - p).tolist(), t.tolist()))
    ours = check_aedat20_peers(sj, path, raw)
    assert_events_equal(ours, {"x": x, "y": y, "t": t, "p": p}, "writer round trip")


# =========================================================================================== DVS-Gesture samples
def test_dvs_gesture_samples_match_spikingjelly_split(sj, tmp_path):
    """SpikingJelly's own DVS128Gesture splitter (create_raw_from_extracted -> _split_aedat_files_to_np) and our
    ingest, on one tree in the official layout, sample by sample: the same windows (``start <= t < end``), the
    same 0-based labels (``csv class - 1``), the same events once SpikingJelly's invalid events are dropped (its
    load_aedat_v3 ignores the valid bit; applied with `sj_keep`). Covers overlapping windows (user22_led has
    one), one label twice in a recording (user26_fluorescent), a window past the last event, and t >= 2^31.

    The label compared is SpikingJelly's folder name (``output_dir / str(csv class - 1)``). Its dataset class
    then numbers those folders through torchvision's DatasetFolder (stubbed here), which sorts them as strings:
    folder "10" (other_gestures) becomes class 2, "2" class 3, ... We keep the csv order (dvs_gesture.py)."""
    ext = tmp_path / "extracted"
    root = ext / "DvsGesture"
    rng = np.random.default_rng(8)
    recordings = {"user01_fluorescent": 0, "user02_led": (1 << 31) - 2_000_000, "user03_natural": 5_000}
    for name, base in recordings.items():
        n = 6000
        t = np.sort(rng.integers(0, 4_000_000, n)) + base
        x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
        valid = rng.random(n) > 0.05
        windows = [Window(c, base + 100_000 + c * 300_000, base + 350_000 + c * 300_000) for c in range(11)]
        windows += [Window(3, base + 3_300_000, base + 3_900_000),  # label 3 again, overlapping label 10's window
                    Window(7, base + 4_100_000, base + 4_500_000)]  # after the last event: empty
        write_recording(root, name, x, y, t, p, windows, valid=valid, events_per_packet=512)
    write_trials(root, ["user01_fluorescent", "user02_led"], ["user03_natural"])

    store_path = tmp_path / "ev.zarr"
    # val 0: SpikingJelly knows the official train / test lists only (no validation carved from train)
    attrs = ingest(get_spec("dvs_gesture"), ext, store_path, IngestConfig(chunk_events=1024, shard_events=8192,
                                                                          val={"dvs_gesture": 0}),
                   progress=False)
    store = open_event_store(store_path)
    sj_root = tmp_path / "sj"
    sj_root.mkdir()
    sj.dvs128_gesture.DVS128Gesture.create_raw_from_extracted(ext, sj_root)

    n_sj_files = 0
    for split, names in (("train", ["user01_fluorescent", "user02_led"]), ("test", ["user03_natural"])):
        ours = store[split]
        i = 0
        for name in names:
            slots = slot_table((root / f"{name}.aedat").read_bytes())
            keep_all = sj_keep(slots)
            t_all = slots["t"][slots["type"] == 1]
            rows = np.loadtxt(root / f"{name}_labels.csv", dtype=np.int64, delimiter=",", skiprows=1)
            seen = [0] * 11
            for cls, start, end in rows:
                label = int(cls) - 1
                sj_file = sj_root / split / str(label) / f"{name}_{seen[label]}.npz"
                seen[label] += 1
                with np.load(sj_file) as z:
                    sj_ev = {k: z[k] for k in "xytp"}
                n_sj_files += 1
                # SpikingJelly's sample is every eventType-1 slot with start <= t < end, in file order
                in_window = (t_all >= start) & (t_all < end)
                assert len(sj_ev["t"]) == in_window.sum()
                keep = keep_all[in_window]
                got, got_label = ours[i]
                assert got_label == label, f"{split}[{i}]"
                assert_events_equal(got, {k: sj_ev[k][keep] for k in "xytp"}, f"{split}[{i}] {sj_file.name}")
                assert (int(ours.window_us[i, 0]), int(ours.window_us[i, 1])) == (start, end)
                i += 1
        assert i == len(ours)
    assert n_sj_files == sum(1 for _ in sj_root.rglob("*.npz"))
    assert attrs["counts"]["overlapping_windows"] == 3 and attrs["counts"]["samples"] == 39
    assert len(store["test"][12][0]) == 0  # the window past the last event: empty in both


# =========================================================================================== frames
def _frame_streams():
    rng = np.random.default_rng(9)
    out = []
    for n, (w, h), t_span in [(5000, (128, 128), 1_000_000), (257, (7, 5), 3_000), (64, (1, 1), 40)]:
        t = np.sort(rng.integers(0, t_span, n))
        out.append((make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n)), (w, h)))
    ev = np.repeat(out[1][0][:50], 3)  # every timestamp three times
    out.append((ev, (7, 5)))
    return out


@pytest.mark.parametrize("split_by", ["time", "number"])
def test_frames_match_spikingjelly(sj, split_by):
    """to_frames(semantics="spikingjelly") against SpikingJelly's integrate_events_by_fixed_frames_number."""
    for events, (w, h) in _frame_streams():
        for frames_num in (1, 3, 16):  # every time bin of these streams holds events: SpikingJelly does not raise
            expected = sj.utils.integrate_events_by_fixed_frames_number(
                {k: events[k] for k in ("t", "x", "y", "p")}, split_by, frames_num, h, w)
            mode = "n_time_bins" if split_by == "time" else "n_event_bins"
            ours = to_frames(events, (w, h, 2), semantics="spikingjelly", dtype=np.int16, **{mode: frames_num})
            assert ours.shape == expected.shape == (frames_num, 2, h, w)
            np.testing.assert_array_equal(ours, expected, err_msg=f"{split_by} M={frames_num} N={len(events)}")


def test_frames_spikingjelly_raises_where_we_document_a_deviation(sj):
    """An empty time bin: SpikingJelly's cal_fixed_frames_number_segment_index indexes an empty mask
    (``idx_masked[0]``) and raises IndexError; ours returns the empty frame (binning module docstring)."""
    events = make_events([0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 100, 101], [0, 1, 1, 0])
    with pytest.raises(IndexError):
        sj.utils.integrate_events_by_fixed_frames_number({k: events[k] for k in "txyp"}, "time", 4, 1, 4)
    ours = to_frames(events, (4, 1, 2), n_time_bins=4, semantics="spikingjelly")
    assert ours.sum() == 4 and ours[1:3].sum() == 0
