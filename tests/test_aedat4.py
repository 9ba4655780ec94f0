"""AEDAT 4.0 through the `aedat` decoder, on files written by iniVation's dv-processing (not by us)."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from pipeline.io.errors import RawDataError
from tests.dv_files import events, write_dv

pytest.importorskip("aedat")
pytest.importorskip("dv_processing")

from pipeline.io import aedat4  # noqa: E402


def _packets(buf: bytes, start: int) -> list[tuple[int, int, int]]:
    """(offset, stream id, size) of every packet up to the data table (the AEDAT 4 spec: i32 id, u32 size)."""
    table = aedat4.read_ioheader("<buf>", buf)["data_table_position"]
    out, pos = [], start
    while pos < table:
        sid, size = struct.unpack_from("<iI", buf, pos)
        out.append((pos, sid, size))
        pos += 8 + size
    assert pos == table
    return out


@pytest.mark.parametrize("compression", ["NONE", "LZ4", "LZ4_HIGH", "ZSTD", "ZSTD_HIGH"])
def test_dvxplorer_round_trip(tmp_path, compression):
    rng = np.random.default_rng(1)
    x, y, t, p = events(rng, 9000, 640, 480)
    path = tmp_path / "dvx.aedat4"
    write_dv(path, x, y, t, p, compression=compression, packet=2500)
    ev = aedat4.read_aedat4(path)
    np.testing.assert_array_equal(ev.x, x)
    np.testing.assert_array_equal(ev.y, y)
    np.testing.assert_array_equal(ev.t, t)
    np.testing.assert_array_equal(ev.p, p)
    assert (ev.x.dtype, ev.y.dtype, ev.t.dtype, ev.p.dtype) == (np.uint16, np.uint16, np.int64, np.uint8)
    h = ev.header
    assert h["format"] == "AEDAT 4.0" and h["source"] == "DVXplorer_DXA00093" and h["sensor_size"] == [640, 480]
    assert h["compression"] == {"NONE": "none", "LZ4_HIGH": "LZ4-high", "ZSTD_HIGH": "ZSTD-high"}.get(
        compression, compression)
    assert ev.counts["events_read"] == 9000 and ev.counts["nonpolarity_skipped"] == 0


def test_davis346_frames_imu_triggers_are_counted(tmp_path):
    rng = np.random.default_rng(2)
    x, y, t, p = events(rng, 5000, 346, 260)
    path = tmp_path / "davis.aedat4"
    write_dv(path, x, y, t, p, camera="DAVIS346_00000499", resolution=(346, 260), davis=True, packet=1000)
    ev = aedat4.read_aedat4(path)
    np.testing.assert_array_equal(ev.t, t)
    np.testing.assert_array_equal(ev.x, x)
    assert ev.header["sensor_size"] == [346, 260] and ev.header["source"] == "DAVIS346_00000499"
    c = ev.counts
    assert (c["frames_skipped"], c["imu_samples_skipped"], c["triggers_skipped"]) == (5, 5, 5)
    assert c["nonpolarity_skipped"] == 15
    assert {s["type"] for s in ev.header["streams"]} == {"events", "frame", "imus", "triggers"}


def test_several_event_streams_keep_the_lowest_id_as_tonic_does(tmp_path):
    import tonic.io

    rng = np.random.default_rng(3)
    x, y, t, p = events(rng, 3000, 640, 480)
    x2, y2, t2, p2 = events(rng, 700, 640, 480)
    path = tmp_path / "two.aedat4"
    write_dv(path, x, y, t, p, second_stream=(x2, y2, t2, p2))
    ev = aedat4.read_aedat4(path)
    np.testing.assert_array_equal(ev.t, t)
    assert ev.counts["other_event_streams_skipped"] == 700
    ref = tonic.io.read_aedat4(str(path))  # tonic's own reader on the same file: the same stream, event by event
    np.testing.assert_array_equal(ev.t, ref["t"].astype(np.int64))
    np.testing.assert_array_equal(ev.x, ref["x"])
    np.testing.assert_array_equal(ev.p, ref["p"].astype(np.uint8))
    other = [s["id"] for s in ev.header["streams"] if s["type"] == "events" and s["id"] != ev.header["stream"]]
    ev2 = aedat4.read_aedat4(path, stream=other[0])
    np.testing.assert_array_equal(ev2.t, t2)
    assert ev2.counts["other_event_streams_skipped"] == 3000
    with pytest.raises(RawDataError, match="not an event stream"):
        aedat4.read_aedat4(path, stream=99)


@pytest.fixture
def dv_file(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "rec.aedat4"
    write_dv(path, *events(rng, 6000, 640, 480), packet=1500)
    return path


def test_truncated_inside_a_packet_names_the_file(dv_file, tmp_path, monkeypatch):
    buf = dv_file.read_bytes()
    start = aedat4.read_ioheader(dv_file)["packets_start"]
    off, _, size = _packets(buf, start)[1]
    cut = tmp_path / "cut.aedat4"
    cut.write_bytes(buf[: off + 8 + size // 2])
    with pytest.raises(RawDataError, match=rf"cut\.aedat4 at byte {off + 8 + size // 2}: truncated"):
        aedat4.read_aedat4(cut)
    # a file DV never closed has no dataTablePosition (-1): then the decoder's own error is the one raised
    real = aedat4.read_ioheader
    monkeypatch.setattr(aedat4, "read_ioheader", lambda path, head=None: {**real(path, head), "data_table_position": -1})
    with pytest.raises(RawDataError, match=r"cut\.aedat4: AEDAT 4 decoder \(aedat 2\.3\.0\), after packet 1: "):
        aedat4.read_aedat4(cut)


def test_truncated_at_a_packet_boundary_is_caught_by_the_header_check(dv_file, tmp_path):
    # the decoder itself stops silently here (no bytes for the next packet's id): the IOHeader's
    # dataTablePosition says the file is longer
    buf = dv_file.read_bytes()
    start = aedat4.read_ioheader(dv_file)["packets_start"]
    off, _, _ = _packets(buf, start)[2]
    cut = tmp_path / "cut.aedat4"
    cut.write_bytes(buf[:off])
    with pytest.raises(RawDataError, match=rf"cut\.aedat4 at byte {off}: truncated"):
        aedat4.read_aedat4(cut)


def test_corrupt_packet_and_header(dv_file, tmp_path):
    buf = bytearray(dv_file.read_bytes())
    start = aedat4.read_ioheader(dv_file)["packets_start"]
    off, _, size = _packets(bytes(buf), start)[0]
    buf[off + 8 + 4 : off + 8 + 40] = b"\xff" * 36  # inside the first compressed packet
    bad = tmp_path / "bad.aedat4"
    bad.write_bytes(bytes(buf))
    with pytest.raises(RawDataError, match=r"bad\.aedat4.*decoder"):
        aedat4.read_aedat4(bad)
    head = tmp_path / "head.aedat4"
    head.write_bytes(dv_file.read_bytes()[:200])
    with pytest.raises(RawDataError, match=r"head\.aedat4 at byte 14: truncated IOHeader"):
        aedat4.read_aedat4(head)
    v3 = tmp_path / "v3.aedat4"
    v3.write_bytes(b"#!AER-DAT3.1\r\n" + dv_file.read_bytes()[14:])
    with pytest.raises(RawDataError, match=r"v3\.aedat4 at byte 0: AEDAT version 3.1, not 4.0 \(read it with pipeline.io.aedat3\)"):
        aedat4.read_aedat4(v3)


def test_ioheader_matches_the_file(dv_file):
    ioh = aedat4.read_ioheader(dv_file)
    assert ioh["compression"] == "LZ4"
    assert start_ok(dv_file.read_bytes(), ioh)
    streams = aedat4.stream_table(ioh["description"])
    assert streams[0]["type"] == "EVTS" and (streams[0]["width"], streams[0]["height"]) == (640, 480)


def start_ok(buf: bytes, ioh: dict) -> bool:
    """The data table position points past the packets and inside the file."""
    return ioh["packets_start"] < ioh["data_table_position"] < len(buf)


def test_missing_decoder_names_the_extra(monkeypatch, dv_file):
    monkeypatch.setitem(sys.modules, "aedat", None)  # import aedat now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[aedat4\]'"):
        aedat4.read_aedat4(dv_file)
