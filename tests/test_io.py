"""Raw readers: exact round trips through the real formats, strict errors, fuzzed bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.io.aedat2 import decode_aedat20, read_aedat20, to_raw_address, write_aedat20
from pipeline.io.aedat3 import (
    POLARITY_EVENT,
    decode_aedat31,
    encode_packet,
    polarity_payload,
    read_aedat31,
    write_aedat31,
)
from pipeline.io.errors import RawDataError

# the header of a real DVS128-Gesture recording (cAER), byte for byte
HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-16 16:15:36 (TZ+0100)\r\n#!END-HEADER\r\n"


def _events(rng, n, t0=0, t_span=5_000_000):
    t = np.sort(rng.integers(t0, t0 + t_span, n)).astype(np.int64)
    return rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n)


def test_aedat31_round_trip_packets_overflow_invalid_and_special_packets(tmp_path):
    rng = np.random.default_rng(1)
    x, y, t, p = _events(rng, 10_000, t0=(1 << 31) - 2_000_000, t_span=4_000_000)  # crosses 2^31 µs
    valid = rng.random(10_000) > 0.1
    a, b = 0, 4_000
    body = [
        encode_packet(POLARITY_EVENT, polarity_payload(x[a:b], y[a:b], t[a:b], p[a:b], valid[a:b]), event_size=8),
        encode_packet(0, b"\x00" * 8 * 5, event_size=8),  # a special-event packet: skipped, counted
        encode_packet(3, b"\x00" * 36 * 2, event_size=36, ts_offset=32),  # an IMU6 packet
    ]
    for lo, hi in ((4_000, 10_000),):
        over = t[lo:hi] >> 31
        for ov in np.unique(over):
            sel = np.flatnonzero(over == ov) + lo
            body.append(encode_packet(POLARITY_EVENT, polarity_payload(x[sel], y[sel], t[sel], p[sel], valid[sel]),
                                      event_size=8, ts_overflow=int(ov)))
    path = tmp_path / "rec.aedat"
    path.write_bytes(HEADER + b"".join(body))
    d = read_aedat31(path)
    np.testing.assert_array_equal(d.t, t[valid])
    np.testing.assert_array_equal(d.x, x[valid])
    np.testing.assert_array_equal(d.y, y[valid])
    np.testing.assert_array_equal(d.p, p[valid])
    assert d.t.max() >= 1 << 31 and d.t.dtype == np.int64
    assert d.counts["events_read"] == 10_000
    assert d.counts["invalid_dropped"] == int((~valid).sum())
    assert d.counts["nonpolarity_skipped"] == 7
    assert len(d.t) + d.counts["invalid_dropped"] == d.counts["events_read"]


def test_aedat31_writer_reader_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x, y, t, p = _events(rng, 5_000, t0=(1 << 32) - 1000)
    write_aedat31(tmp_path / "a.aedat", x, y, t, p, events_per_packet=300)
    d = read_aedat31(tmp_path / "a.aedat")
    assert d.counts["packets"] >= 5_000 // 300
    for got, want in zip(d[:4], (x, y, t, p)):
        np.testing.assert_array_equal(got, want)


def test_aedat31_capacity_larger_than_number_skips_unused_slots(tmp_path):
    rng = np.random.default_rng(3)
    x, y, t, p = _events(rng, 10)
    payload = polarity_payload(x, y, t, p) + polarity_payload([1], [1], [0], [1])  # one slot past eventNumber
    data = HEADER + encode_packet(POLARITY_EVENT, payload, event_size=8, capacity=11, number=10)
    d = decode_aedat31(data)
    np.testing.assert_array_equal(d.t, t)
    assert d.counts["unused_slots"] == 1


@pytest.mark.parametrize(
    "mutate, match, offset",
    [
        (lambda good: good[:-5], "truncated packet", len(HEADER)),
        (lambda good: b"#!AEDAT-3.1\r\n" + good[len(b"#!AER-DAT3.1\r\n"):], "'#!AER-DAT3.1' first line", 0),
        (lambda good: b"#!AER-DAT2.0\r\n" + good[len(b"#!AER-DAT3.1\r\n"):], "version 2.0, not 3.1", 0),
        (lambda good: good.replace(b"#!END-HEADER\r\n", b"#!END-HEADR\r\n"), "END-HEADER", None),
        (lambda good: good + b"\x01\x00\x01\x00", "truncated packet header", len(HEADER) + 28 + 80),
    ],
    ids=["truncated-packet", "made-up-magic", "other-version", "no-end-header", "truncated-header"],
)
def test_aedat31_bad_input_names_file_and_offset(tmp_path, mutate, match, offset):
    rng = np.random.default_rng(4)
    good = HEADER + encode_packet(POLARITY_EVENT, polarity_payload(*_events(rng, 10)), event_size=8)
    path = tmp_path / "bad.aedat"
    path.write_bytes(mutate(good))
    with pytest.raises(RawDataError, match=match) as info:
        read_aedat31(path)
    assert str(path) in str(info.value)
    if offset is not None:
        assert info.value.offset == offset and f"at byte {offset}" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(event_size=16), "eventSize 16 is inconsistent"),
        (dict(event_size=8, ts_offset=0), "eventTSOffset 0"),
        (dict(event_size=8, capacity=10, number=11), "eventNumber exceeds eventCapacity"),
    ],
)
def test_aedat31_inconsistent_headers(kwargs, match):
    payload = b"\x00" * 160
    with pytest.raises(RawDataError, match=match) as info:
        decode_aedat31(HEADER + encode_packet(POLARITY_EVENT, payload, **kwargs), "x.aedat")
    assert info.value.offset is not None and info.value.offset >= len(HEADER)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.booleans())
def test_aedat31_arbitrary_bytes_only_raise_raw_data_error(data, with_header):
    try:
        decode_aedat31((HEADER if with_header else b"") + data, "fuzz.aedat")
    except RawDataError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(0, 3), st.integers(0, 3),
                          st.integers(0, 1 << 31)), max_size=6), st.binary(max_size=64))
def test_aedat31_fuzzed_packet_headers(packets, tail):
    """Structurally plausible packets with random fields: decode or RawDataError, never anything else."""
    body = b"".join(struct.pack("<HHIIIIII", et, 1, sz, 4, ov, cap, num, num) + tail[: sz * cap]
                    for et, sz, cap, num, ov in packets)
    try:
        d = decode_aedat31(HEADER + body, "fuzz.aedat")
    except RawDataError:
        return
    assert len(d.t) + d.counts["invalid_dropped"] == d.counts["events_read"]


# ------------------------------------------------------------------------------------------ AEDAT 2.0
def test_aedat20_round_trip_orientation_and_address_layout(tmp_path):
    rng = np.random.default_rng(5)
    x, y, t, p = _events(rng, 3_000, t0=10_000_000)
    path = tmp_path / "cifar10_cat_0.aedat"
    write_aedat20(path, x, y, t, p)
    d = read_aedat20(path)
    for got, want in zip(d[:4], (x, y, t, p)):
        np.testing.assert_array_equal(got, want)
    # the documented SpikingJelly orientation, checked against the raw address bits directly
    raw = np.frombuffer(path.read_bytes()[-8:], dtype=">u4")
    addr = int(raw[0])
    assert (127 - ((addr & 0x7F00) >> 8), 127 - ((addr & 0xFE) >> 1), 1 - (addr & 1)) == (x[-1], y[-1], p[-1])
    assert to_raw_address([x[0]], [y[0]], [p[0]])[0] <= 0x7FFF


def test_aedat20_without_end_mark_and_hash_like_first_word(tmp_path):
    # first address byte 0x23 == '#': must still be read as data, not as a header line
    y_r = 0x23
    x = np.array([127 - y_r]); y = np.array([5]); t = np.array([7]); p = np.array([0])
    path = tmp_path / "a.aedat"
    write_aedat20(path, x, y, t, p, end_mark=False)
    d = read_aedat20(path)
    assert (d.x[0], d.y[0], d.t[0], d.p[0]) == (x[0], y[0], t[0], p[0])


def test_aedat20_unwraps_32bit_timestamps():
    words = np.array([[0, (1 << 32) - 10], [0, 5]], dtype=">u4")
    d = decode_aedat20(b"#!AER-DAT2.0\r\n" + words.tobytes())
    assert list(d.t) == [(1 << 32) - 10, (1 << 32) + 5]


@pytest.mark.parametrize("extra, match", [(b"\x00" * 4, "odd number"), (b"\x00" * 3, "stray bytes")])
def test_aedat20_partial_pairs_name_offset(tmp_path, extra, match):
    path = tmp_path / "a.aedat"
    write_aedat20(path, [1], [2], [3], [1])
    good = path.read_bytes()
    path.write_bytes(good + extra)
    with pytest.raises(RawDataError, match=match) as info:
        read_aedat20(path)
    assert info.value.offset == len(good) and str(path) in str(info.value)


@pytest.mark.parametrize("head, match", [
    (b"#!AER-DAT3.1\r\n", "version 3.1, not 2.0"),
    (b"#!AER-DAT1.0\r\n", "version 1.0, not 2.0"),
    (b"#!AER-DATx\r\n", "'#!AER-DAT2.0' first line"),
    (b"\x00\x00\x00\x01", "no '#!AER-DAT2.0' or '#' header"),
])
def test_aedat20_other_versions_name_themselves(head, match):
    with pytest.raises(RawDataError, match=match) as info:
        decode_aedat20(head + b"\x00" * 8, "x.aedat")
    assert info.value.offset == 0 and "x.aedat" in str(info.value)


def test_aedat20_comment_header_without_version_line_is_read_as_2_0():
    """SpikingJelly and tonic accept any '#' header; we do too and record that no version line was there."""
    words = np.array([[to_raw_address([3], [4], [1])[0], 10]], dtype=">u4")
    d = decode_aedat20(b"# jAER recording without a version line\r\n" + words.tobytes())
    assert (d.x[0], d.y[0], d.t[0], d.p[0]) == (3, 4, 10, 1)
    assert d.header == {"format": "AEDAT 2.0", "version_line": False}
    assert decode_aedat20(b"#!AER-DAT2.0\n" + words.tobytes()).header["version_line"] is True


def test_aedat31_header_fields_line_ends_and_format(tmp_path):
    rng = np.random.default_rng(6)
    body = encode_packet(POLARITY_EVENT, polarity_payload(*_events(rng, 10)), event_size=8)
    d = decode_aedat31(HEADER + body)
    assert d.header == {"format": "AEDAT 3.1", "source": "DVS128", "start_time": "2017-01-16 16:15:36 (TZ+0100)"}
    lf = decode_aedat31(HEADER.replace(b"\r\n", b"\n") + body)  # '\n' line ends (some tools write them)
    np.testing.assert_array_equal(lf.t, d.t)
    minimal = decode_aedat31(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n" + body)  # cAER's file output
    np.testing.assert_array_equal(minimal.t, d.t)
    with pytest.raises(RawDataError, match="'#Format: SerializedTS' is not supported"):
        decode_aedat31(HEADER.replace(b"RAW", b"SerializedTS") + body, "c.aedat")
    write_aedat31(tmp_path / "w.aedat", [1], [2], [3], [1])
    assert (tmp_path / "w.aedat").read_bytes().startswith(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_aedat20_arbitrary_bytes_only_raise_raw_data_error(data, with_header):
    try:
        decode_aedat20((b"#!AER-DAT2.0\r\n" if with_header else b"") + data, "fuzz.aedat")
    except RawDataError:
        pass


def test_aedat31_decode_from_several_threads():
    """Numba's workqueue layer aborts the process when two threads launch parallel kernels at once; the AEDAT 3.1
    decoder's parallel passes hold pipeline.runtime.PARALLEL_LOCK, so threads can decode files side by side."""
    from tests.conftest import run_isolated

    code = (
        "import threading, numpy as np\n"
        "from pipeline.io.aedat3 import decode_aedat31, encode_packet, polarity_payload, POLARITY_EVENT\n"
        "rng = np.random.default_rng(0)\n"
        "n = 20000\n"
        "t = np.sort(rng.integers(0, 10**6, n))\n"
        "payload = polarity_payload(rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n))\n"
        "head = b'#!AER-DAT3.1\\r\\n#Format: RAW\\r\\n#!END-HEADER\\r\\n'\n"
        "data = head + b''.join(encode_packet(POLARITY_EVENT, payload[i:i + 8000], event_size=8)\n"
        "                       for i in range(0, len(payload), 8000))\n"
        "ref = decode_aedat31(data).t\n"
        "ok = []\n"
        "def work():\n"
        "    for _ in range(200):\n"
        "        ok.append(np.array_equal(decode_aedat31(data).t, ref))\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "[th.start() for th in threads]; [th.join() for th in threads]\n"
        "assert len(ok) == 800 and all(ok)\n"
    )
    run_isolated(code)
