"""`pipeline.binning`: bit-identical to tonic's ToFrame and to SpikingJelly's formulas, lossless in exact mode,
batch == per sample, saturation counted, bad input refused.

tonic is called for real (it is a dependency). SpikingJelly is not: `spikingjelly_reference` restates the
formulas documented in ``spikingjelly.datasets.utils.cal_fixed_frames_number_segment_index`` and
``integrate_events_segment_to_frame`` as plainly as possible.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tonic.transforms import ToFrame

from pipeline.binning import SEMANTICS, SaturationWarning, bin_batch, bin_events, to_frames
from pipeline.events import EVENT_DTYPE, make_events

from tests.conftest import run_isolated

SENSORS = [(128, 128), (34, 20), (5, 64), (1, 1)]
BIN_OVERLAPS = [0, 0.0, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9]
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------- event streams


@st.composite
def streams(draw, max_events: int = 400):
    """``(events, sensor_size)``: random and adversarial streams (one event, empty, one timestamp, duplicates,
    gaps that leave bins empty), square and non-square sensors, P = 1 (one or both polarities) and P = 2."""
    width, height = draw(st.sampled_from(SENSORS))
    n_pol = draw(st.sampled_from([1, 2]))
    n = draw(st.sampled_from([0, 1, 2, 3]) | st.integers(0, max_events))
    layout = draw(st.sampled_from(["uniform", "one_timestamp", "duplicates", "gaps", "dense"]))
    t0 = draw(st.sampled_from([0, 1, 12_345, 10**12]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if layout == "uniform":
        t = rng.integers(0, draw(st.integers(0, 10**6)) + 1, n)
    elif layout == "one_timestamp":
        t = np.zeros(n, np.int64)
    elif layout == "duplicates":
        t = rng.choice(rng.integers(0, 10**4, draw(st.integers(1, 4))), n)
    elif layout == "gaps":
        gap = draw(st.integers(1_000, 10**7))
        t = rng.integers(0, 100, n) + gap * rng.integers(0, 2, n)
    else:
        t = rng.integers(0, draw(st.integers(0, 30)) + 1, n)
    t = t0 + np.sort(t)
    if n_pol == 2:
        p = rng.integers(0, 2, n)
    else:
        p = {"off": np.zeros(n), "on": np.ones(n), "mixed": rng.integers(0, 2, n)}[
            draw(st.sampled_from(["off", "on", "mixed"]))
        ]
    events = make_events(rng.integers(0, width, n), rng.integers(0, height, n), t, p)
    return events, (width, height, n_pol)


def _span(events: np.ndarray) -> int:
    return int(events["t"][-1] - events["t"][0]) if len(events) else 0


# ---------------------------------------------------------------------------------------------- references


def tonic_frames(events: np.ndarray, sensor_size, **kwargs) -> np.ndarray:
    """tonic's ToFrame on a copy (it writes ``p = 0`` into its input for P = 1, and raises on mixed polarities
    there: we give it the merged polarity, which is what our P = 1 means)."""
    events = events.copy()
    if sensor_size[2] == 1:
        events["p"] = 0
    return ToFrame(sensor_size, **kwargs)(events)


def assert_matches_tonic(events: np.ndarray, sensor_size, **kwargs) -> None:
    ours = to_frames(events, sensor_size, semantics="tonic", **kwargs)
    theirs = tonic_frames(events, sensor_size, **kwargs)
    width, height, n_pol = sensor_size
    if len(events) == 0:
        # Documented deviation: tonic gives float64 zeros laid out (T, P, W, H); we keep (T, P, H, W) and dtype.
        assert theirs.shape == (theirs.shape[0], n_pol, width, height) and theirs.dtype == np.float64
        assert not theirs.any()
        assert ours.shape == (theirs.shape[0], n_pol, height, width) and ours.dtype == np.int16
        assert not ours.any()
        return
    assert ours.dtype == theirs.dtype == np.int16
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def pool(frames: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Sum-pool ``(T, P, H, W)`` frames to ``out_size`` with the documented map ``x' = x*W'//W`` (monotone and,
    when downsampling, onto: each output column sums a contiguous run of input columns)."""
    out = frames.astype(np.int64)
    for axis, size in ((-2, out_size[0]), (-1, out_size[1])):
        mapped = np.arange(out.shape[axis]) * size // out.shape[axis]
        out = np.add.reduceat(out, np.searchsorted(mapped, np.arange(size)), axis=axis)
    return out


def count_frames(x, y, p, groups, n_frames: int, sensor_size) -> np.ndarray:
    """``(T, P, H, W)`` int64 counts; ``groups[b]`` are the indices of the events in frame ``b``."""
    width, height, n_pol = sensor_size
    frames = np.zeros((n_frames, n_pol, height, width), np.int64)
    for b, idx in enumerate(groups):
        idx = np.asarray(idx, dtype=np.int64)
        np.add.at(frames, (b, p[idx].astype(np.int64) if n_pol == 2 else 0, y[idx], x[idx]), 1)
    return frames


def spikingjelly_reference(events: np.ndarray, split_by: str, frames_num: int, height: int, width: int):
    """SpikingJelly's ``integrate_events_by_fixed_frames_number`` restated: ``(frames_num, 2, H, W)`` float64.

    'number': ``j_l = (N//M)*j``, ``j_r = (N//M)*(j+1)`` (``N`` for the last frame). 'time': ``dt = (t_{N-1} -
    t_0)//M``; ``j_l`` = the first index with ``t >= t_0 + dt*j``, ``j_r`` = 1 + the last index with
    ``t < t_0 + dt*(j+1)``, both taken among the events inside that interval (``N`` for the last frame's
    ``j_r``) -- an interval without events raises IndexError, as SpikingJelly does. Pixel ``(p != 0, y, x)``.
    """
    t, x, y, p = (events[k] for k in ("t", "x", "y", "p"))
    n = len(t)
    j_l = np.zeros(frames_num, dtype=int)
    j_r = np.zeros(frames_num, dtype=int)
    if split_by == "number":
        di = n // frames_num
        for j in range(frames_num):
            j_l[j] = j * di
            j_r[j] = j_l[j] + di
        j_r[-1] = n
    else:
        dt = (t[-1] - t[0]) // frames_num
        for j in range(frames_num):
            t_l = dt * j + t[0]
            t_r = t_l + dt
            inside = np.flatnonzero((t >= t_l) & (t < t_r))
            j_l[j] = inside[0]
            j_r[j] = inside[-1] + 1
        j_r[-1] = n
    frames = np.zeros((frames_num, 2, height, width))
    for j in range(frames_num):
        sl = slice(j_l[j], j_r[j])
        pos = (p[sl] != 0).astype(int) * height * width + y[sl].astype(int) * width + x[sl].astype(int)
        frames[j] = np.bincount(pos, minlength=2 * height * width).reshape(2, height, width)
    return frames


def spikingjelly_continued(events: np.ndarray, split_by: str, frames_num: int, height: int, width: int):
    """Our documented answer where SpikingJelly raises: the same formulas with the index searches read as
    ``searchsorted`` (an empty interval gives an empty frame; the last frame still runs to ``N``)."""
    t, x, y, p = (events[k] for k in ("t", "x", "y", "p"))
    n = len(t)
    assert split_by == "time"
    frames = np.zeros((frames_num, 2, height, width))
    if n == 0:
        return frames
    dt = (t[-1] - t[0]) // frames_num
    for j in range(frames_num):
        lo = np.searchsorted(t, t[0] + dt * j)
        hi = n if j == frames_num - 1 else np.searchsorted(t, t[0] + dt * (j + 1))
        np.add.at(frames, (j, (p[lo:hi] != 0).astype(int), y[lo:hi], x[lo:hi]), 1)
    return frames


def exact_groups(events: np.ndarray, mode: str, value: int, overlap: int = 0) -> list[np.ndarray]:
    """The documented exact-mode rules, written out with Python integers."""
    t = [int(v) for v in events["t"]]
    n = len(t)
    if mode == "n_time_bins":
        if n == 0:
            return [np.array([], int)] * value
        d = t[-1] - t[0] + 1
        which = [(ti - t[0]) * value // d for ti in t]
        return [np.flatnonzero(np.array(which) == b) for b in range(value)]
    if mode == "n_event_bins":
        return [np.arange(b * n // value, (b + 1) * n // value) for b in range(value)]
    stride = value - overlap
    if mode == "time_window":
        if n == 0:
            return [np.array([], int)]
        span = t[-1] - t[0]
        n_windows = 1 + max(0, (span - value) // stride + 1)
        tt = np.array(t) - t[0]
        return [np.flatnonzero((tt >= k * stride) & (tt < k * stride + value)) for k in range(n_windows)]
    n_windows = 1 + max(0, -(-(n - value) // stride))
    return [np.arange(k * stride, min(k * stride + value, n)) for k in range(n_windows)]


# ---------------------------------------------------------------------------------------------- tonic


@FAST
@given(streams(), st.integers(1, 20), st.sampled_from(BIN_OVERLAPS))
def test_tonic_n_time_bins(stream, n_bins, overlap):
    events, sensor = stream
    assert_matches_tonic(events, sensor, n_time_bins=n_bins, overlap=overlap)


@FAST
@given(streams(), st.integers(1, 20), st.sampled_from(BIN_OVERLAPS))
def test_tonic_n_event_bins(stream, n_bins, overlap):
    events, sensor = stream
    assert_matches_tonic(events, sensor, n_event_bins=n_bins, overlap=overlap)


@FAST
@given(streams(), st.data())
def test_tonic_time_window(stream, data):
    events, sensor = stream
    span = _span(events)
    stride = data.draw(st.integers(span // 40 + 1, span // 40 + span + 10))  # at most ~40 frames
    overlap = data.draw(st.sampled_from([0, 1]) | st.integers(0, 3 * stride))
    assert_matches_tonic(events, sensor, time_window=stride + overlap, overlap=overlap)


@FAST
@given(streams(), st.data())
def test_tonic_event_count(stream, data):
    events, sensor = stream
    n = len(events)
    stride = data.draw(st.integers(n // 40 + 1, n // 40 + n + 10))
    overlap = data.draw(st.sampled_from([0, 1]) | st.integers(0, 3 * stride))
    assert_matches_tonic(events, sensor, event_count=stride + overlap, overlap=overlap)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_time_bins=16), dict(n_time_bins=5, overlap=0.3), dict(n_event_bins=7), dict(n_event_bins=3, overlap=0.5),
     dict(time_window=20_000), dict(time_window=20_000, overlap=5_000), dict(event_count=999),
     dict(event_count=999, overlap=100)],
)
def test_tonic_large_stream_and_downsampling(kwargs):
    rng = np.random.default_rng(1)
    n = 100_000
    events = make_events(rng.integers(0, 128, n), rng.integers(0, 128, n), np.sort(rng.integers(0, 10**6, n)),
                         rng.integers(0, 2, n))
    before = events.copy()
    assert_matches_tonic(events, (128, 128, 2), **kwargs)
    np.testing.assert_array_equal(events, before)  # we never write into the caller's events
    full = tonic_frames(events, (128, 128, 2), **kwargs)
    for out_size in [(64, 64), (48, 48), (32, 32), (128, 96), (7, 5)]:
        ours = to_frames(events, (128, 128, 2), semantics="tonic", out_size=out_size, **kwargs)
        np.testing.assert_array_equal(ours, pool(full, out_size))


@pytest.mark.parametrize("kwargs", [dict(n_time_bins=4), dict(n_event_bins=4), dict(time_window=10),
                                    dict(event_count=10)])
@pytest.mark.parametrize("n_pol", [1, 2])
def test_empty_input_deviation_from_tonic(kwargs, n_pol):
    """tonic returns float64 (T, P, W, H) zeros for empty input; we return (T, P, H, W) of our dtype, same T."""
    empty = np.zeros(0, EVENT_DTYPE)
    theirs = ToFrame((34, 20, n_pol), **kwargs)(empty)
    assert theirs.shape[1:] == (n_pol, 34, 20) and theirs.dtype == np.float64
    for semantics in ["tonic", "exact"]:
        ours = to_frames(empty, (34, 20, n_pol), semantics=semantics, **kwargs)
        assert ours.shape == (theirs.shape[0], n_pol, 20, 34) and ours.dtype == np.int16 and not ours.any()


def test_single_polarity_merges_where_tonic_raises():
    events = make_events([1, 2, 3], [0, 0, 1], [0, 5, 10], [0, 1, 1])
    with pytest.raises(ValueError, match="polarit"):
        ToFrame((4, 2, 1), event_count=3)(events.copy())
    frames = to_frames(events, (4, 2, 1), event_count=3, semantics="tonic")
    np.testing.assert_array_equal(frames[0, 0], [[0, 1, 1, 0], [0, 0, 0, 1]])


def test_one_event_and_one_timestamp_follow_tonic():
    one = make_events([3], [2], [77], [1])
    assert not to_frames(one, (4, 4, 2), n_time_bins=3, semantics="tonic").any()  # tonic drops the last event
    assert to_frames(one, (4, 4, 2), time_window=1, semantics="tonic").sum() == 1
    same = make_events([0, 1, 2], [0, 0, 0], [5, 5, 5], [0, 1, 0])
    assert not to_frames(same, (4, 4, 2), n_time_bins=2, semantics="tonic").any()
    assert to_frames(same, (4, 4, 2), n_time_bins=2).sum() == 3  # exact keeps them, in bin 0
    assert to_frames(same, (4, 4, 2), n_time_bins=2)[0].sum() == 3


def test_int16_overflow_saturates_and_is_counted_where_tonic_wraps():
    n = 40_000
    events = make_events(np.zeros(n), np.zeros(n), np.arange(n), np.ones(n))
    theirs = tonic_frames(events, (2, 2, 2), event_count=n)
    assert theirs[0, 1, 0, 0] == n - 65536  # tonic wraps around silently
    frames, lost = bin_events(events, (2, 2, 2), event_count=n, semantics="tonic")
    assert frames[0, 1, 0, 0] == 32767 and lost == n - 32767
    with pytest.warns(SaturationWarning, match=str(n - 32767)):
        to_frames(events, (2, 2, 2), event_count=n, semantics="tonic")


# ---------------------------------------------------------------------------------------------- spikingjelly


@FAST
@given(streams(), st.integers(1, 20), st.sampled_from(["n_time_bins", "n_event_bins"]),
       st.sampled_from([None, (10, 3), (1, 1)]))
def test_spikingjelly(stream, n_bins, mode, out_size):
    events, sensor = stream
    width, height, n_pol = sensor
    split_by = "time" if mode == "n_time_bins" else "number"
    try:
        expected = spikingjelly_reference(events, split_by, n_bins, height, width)
    except IndexError:
        expected = spikingjelly_continued(events, split_by, n_bins, height, width)
    expected = expected.astype(np.int64)
    if n_pol == 1:
        expected = expected.sum(axis=1, keepdims=True)
    if out_size is not None:
        out_size = (min(out_size[0], height), min(out_size[1], width))
        expected = pool(expected, out_size)
    ours = to_frames(events, sensor, semantics="spikingjelly", out_size=out_size, **{mode: n_bins})
    np.testing.assert_array_equal(ours, expected)
    if split_by == "number" or len(events) == 0:  # SpikingJelly keeps every event in these cases
        assert ours.sum() == len(events)


def test_spikingjelly_empty_time_bin_is_documented():
    """SpikingJelly raises IndexError on an empty time bin; we give the empty frame and keep the rest."""
    events = make_events([0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 100, 101], [0, 1, 1, 0])
    with pytest.raises(IndexError):
        spikingjelly_reference(events, "time", 4, 1, 4)
    frames = to_frames(events, (4, 1, 2), n_time_bins=4, semantics="spikingjelly")
    assert frames.reshape(4, -1).sum(axis=1).tolist() == [2, 0, 0, 2]


# ---------------------------------------------------------------------------------------------- exact


@FAST
@given(streams(max_events=300), st.data())
def test_exact_matches_its_rules_and_loses_nothing(stream, data):
    events, sensor = stream
    mode = data.draw(st.sampled_from(["n_time_bins", "n_event_bins", "time_window", "event_count"]))
    overlap = 0
    if mode in ("n_time_bins", "n_event_bins"):
        value = data.draw(st.integers(1, 20))
    else:
        size = _span(events) if mode == "time_window" else len(events)
        stride = data.draw(st.integers(size // 30 + 1, size // 30 + size + 10))
        overlap = data.draw(st.sampled_from([0, 0, 1]) | st.integers(0, 2 * stride))
        value = stride + overlap
    kwargs = {mode: value, "overlap": overlap}
    frames = to_frames(events, sensor, **kwargs)
    groups = exact_groups(events, mode, value, overlap)
    expected = count_frames(events["x"], events["y"], events["p"], groups, len(groups), sensor)
    np.testing.assert_array_equal(frames, expected)
    n = len(events)
    if overlap == 0:
        assert frames.sum() == n  # every event in exactly one frame
    covered = np.zeros(n, bool)
    for g in groups:
        covered[g] = True
    assert covered.all()  # with overlap: every event in at least one frame
    if mode == "n_event_bins":
        sizes = frames.reshape(len(frames), -1).sum(axis=1)
        assert sizes.max() - sizes.min() <= 1
    if mode == "n_time_bins" and n:
        d = int(events["t"][-1] - events["t"][0]) + 1
        edges = [-(-b * d // value) for b in range(value + 1)]
        assert max(np.diff(edges)) - min(np.diff(edges)) <= 1  # equal durations to the µs


@pytest.mark.parametrize("semantics", ["exact", "tonic", "spikingjelly"])
@pytest.mark.parametrize("out_size", [(64, 64), (48, 48), (32, 32), (100, 17)])
def test_downsampling_is_sum_pooling(semantics, out_size):
    rng = np.random.default_rng(2)
    n = 20_000
    events = make_events(rng.integers(0, 128, n), rng.integers(0, 128, n), np.sort(rng.integers(0, 10**5, n)),
                         rng.integers(0, 2, n))
    for kwargs in [dict(n_time_bins=8), dict(n_event_bins=5)]:
        full = to_frames(events, (128, 128, 2), semantics=semantics, **kwargs)
        small = to_frames(events, (128, 128, 2), semantics=semantics, out_size=out_size, **kwargs)
        np.testing.assert_array_equal(small, pool(full, out_size))
        if semantics == "exact":
            assert small.sum() == n  # downsampling preserves the total
        ho, wo = out_size
        if 128 % ho == 0 and 128 % wo == 0:  # integer factor: plain block sums
            blocks = full.reshape(*full.shape[:2], ho, 128 // ho, wo, 128 // wo).sum(axis=(3, 5))
            np.testing.assert_array_equal(small, blocks)


def test_non_standard_field_dtypes_are_accepted():
    dt = np.dtype([("t", "<f8"), ("x", "<i4"), ("y", "<i8"), ("p", "?")])
    events = np.zeros(3, dtype=[("t", "<i4"), ("x", "<i4"), ("y", "<i8"), ("p", "?")])
    events["t"] = [1, 2, 3]
    events["x"] = [0, 1, 2]
    events["p"] = [True, False, True]
    frames = to_frames(events, (3, 1, 2), n_event_bins=1)
    np.testing.assert_array_equal(frames[0, :, 0], [[0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match="integers"):
        to_frames(np.zeros(2, dtype=dt), (3, 1, 2), n_event_bins=1)
    events["x"][1] = -1
    with pytest.raises(ValueError, match=r"events\[1\]: x=-1"):
        to_frames(events, (3, 1, 2), n_event_bins=1)


def test_strided_and_aligned_event_arrays():
    """Field views are used without copying: any layout of the structured array gives the same frames."""
    rng = np.random.default_rng(5)
    n = 5_000
    events = make_events(rng.integers(0, 34, n), rng.integers(0, 20, n), np.sort(rng.integers(0, 10**5, n)),
                         rng.integers(0, 2, n))
    every_other = events[::2]
    expected = to_frames(every_other.copy(), (34, 20, 2), n_time_bins=5, semantics="tonic")
    np.testing.assert_array_equal(to_frames(every_other, (34, 20, 2), n_time_bins=5, semantics="tonic"), expected)
    aligned = np.zeros(len(every_other), np.dtype(EVENT_DTYPE.descr, align=True))
    for name in "xytp":
        aligned[name] = every_other[name]
    np.testing.assert_array_equal(to_frames(aligned, (34, 20, 2), n_time_bins=5, semantics="tonic"), expected)


# ---------------------------------------------------------------------------------------------- other dtypes

#: Event dtypes other libraries hand out: read without conversion (record path) unless noted.
FOREIGN_DTYPES = {
    "tonic DVSGesture": [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")],
    "int8 polarity": [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")],
    "reordered, extra fields": [("p", "u1"), ("t", "<i8"), ("extra", "<f4"), ("y", "<u2"), ("x", "<u2")],
    "tonic int64 (N-MNIST)": [("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")],
    "int16 polarity, int32 t": [("t", "<i4"), ("x", "<i2"), ("y", "<i2"), ("p", "<i2")],
    "big-endian (converted)": [("x", ">i2"), ("y", ">i2"), ("p", "?"), ("t", ">i8")],
    "object field (strided views)": [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8"), ("tag", "O")],
}


def as_dtype(events: np.ndarray, dtype) -> np.ndarray:
    """``events`` (EVENT_DTYPE) copied field by field into a structured array of ``dtype``."""
    out = np.zeros(len(events), dtype)
    for name in "xytp":
        out[name] = events[name]
    return out


def _stream(rng, n: int, width: int = 128, height: int = 128, duration_us: int = 10**6) -> np.ndarray:
    return make_events(rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(0, duration_us, n)),
                       rng.integers(0, 2, n))


@pytest.mark.parametrize("name", list(FOREIGN_DTYPES))
def test_foreign_dtypes_match_tonic_and_our_dtype(name):
    """tonic's ToFrame run on the foreign array itself, and our own-dtype path, give the same frames."""
    rng = np.random.default_rng(11)
    ours = _stream(rng, 20_000)
    theirs = as_dtype(ours, FOREIGN_DTYPES[name])
    before = theirs.copy()
    for kwargs in [dict(n_time_bins=16), dict(n_time_bins=5, overlap=0.3), dict(n_event_bins=7),
                   dict(n_event_bins=3, overlap=0.5), dict(time_window=50_000, overlap=10_000),
                   dict(event_count=999, overlap=100)]:
        expected = tonic_frames(theirs, (128, 128, 2), **kwargs)
        np.testing.assert_array_equal(to_frames(theirs, (128, 128, 2), semantics="tonic", **kwargs), expected)
        np.testing.assert_array_equal(tonic_frames(ours, (128, 128, 2), **kwargs), expected)
        for n_pol in (1, 2):
            np.testing.assert_array_equal(tonic_frames(theirs, (128, 128, n_pol), **kwargs),
                                          to_frames(theirs, (128, 128, n_pol), semantics="tonic", **kwargs))
    for semantics in SEMANTICS:
        modes = [dict(n_time_bins=16), dict(n_event_bins=9)]
        if semantics != "spikingjelly":
            modes += [dict(time_window=70_000, overlap=20_000), dict(event_count=1_234, overlap=234)]
        for kwargs in modes:
            for extra in [dict(), dict(out_size=(48, 40), dtype=np.uint8), dict(dtype=np.float32)]:
                np.testing.assert_array_equal(to_frames(theirs, (128, 128, 2), semantics=semantics, **kwargs, **extra),
                                              to_frames(ours, (128, 128, 2), semantics=semantics, **kwargs, **extra))
    np.testing.assert_array_equal(theirs, before)  # never written into


def test_foreign_dtype_saturation_and_layouts():
    """Saturation is counted the same way; strided and recarray views of a foreign array read the same."""
    rng = np.random.default_rng(12)
    ours = _stream(rng, 30_000, 4, 3)
    theirs = as_dtype(ours, FOREIGN_DTYPES["tonic DVSGesture"])
    assert bin_events(theirs, (4, 3, 2), n_time_bins=2, dtype=np.uint8)[1] == bin_events(
        ours, (4, 3, 2), n_time_bins=2, dtype=np.uint8)[1] > 0
    expected = to_frames(ours[1::3], (4, 3, 2), n_event_bins=4)
    np.testing.assert_array_equal(to_frames(theirs[1::3], (4, 3, 2), n_event_bins=4), expected)
    np.testing.assert_array_equal(to_frames(theirs.view(np.recarray)[1::3], (4, 3, 2), n_event_bins=4), expected)


@FAST
@given(streams(max_events=300), st.sampled_from(list(FOREIGN_DTYPES)), st.sampled_from(SEMANTICS), st.data())
def test_foreign_dtypes_property(stream, name, semantics, data):
    """Any stream, in any of the foreign dtypes: the same frames (and saturation count) as in ours, for every
    semantics, mode and option."""
    events, sensor = stream
    modes = ["n_time_bins", "n_event_bins"] + (["time_window", "event_count"] if semantics != "spikingjelly" else [])
    mode = data.draw(st.sampled_from(modes))
    overlap = 0
    if mode in ("n_time_bins", "n_event_bins"):
        value = data.draw(st.integers(1, 20))
        if semantics == "tonic":
            overlap = data.draw(st.sampled_from(BIN_OVERLAPS))
    else:
        size = _span(events) if mode == "time_window" else len(events)
        stride = data.draw(st.integers(size // 30 + 1, size // 30 + size + 10))
        overlap = data.draw(st.sampled_from([0, 1]) | st.integers(0, 2 * stride))
        value = stride + overlap
    width, height = sensor[:2]
    out_size = data.draw(st.sampled_from([None, (height, width), (max(1, height // 3), max(1, width // 2))]))
    kwargs = {mode: value, "overlap": overlap, "semantics": semantics, "out_size": out_size,
              "dtype": data.draw(st.sampled_from([np.int16, np.uint8, np.float32]))}
    frames, n_saturated = bin_events(as_dtype(events, FOREIGN_DTYPES[name]), sensor, **kwargs)
    expected, expected_saturated = bin_events(events, sensor, **kwargs)
    np.testing.assert_array_equal(frames, expected)
    assert n_saturated == expected_saturated


@pytest.mark.parametrize("name", ["tonic DVSGesture", "int8 polarity", "int16 polarity, int32 t",
                                  "big-endian (converted)", "object field (strided views)"])
@pytest.mark.parametrize(
    "field,value,message",
    [("x", -1, r"events\[2\]: x=-1 is outside the sensor width 4 \(valid 0..3\)"),
     ("x", 4, r"events\[2\]: x=4 is outside the sensor width 4"),
     ("y", -32768, r"events\[2\]: y=-32768 is outside the sensor height 5 \(valid 0..4\)"),
     ("p", -1, r"events\[2\]: p=-1 is not a polarity \(valid 0, 1\)"),
     ("p", 2, r"events\[2\]: p=2 is not a polarity"),
     ("t", 5, r"events\[2\]: t=5 µs is earlier than the previous event's t=10")],
)
def test_foreign_dtypes_refuse_bad_events(good, name, field, value, message):
    events = as_dtype(good, FOREIGN_DTYPES[name])
    if events.dtype[field].kind == "b":  # a bool polarity is always 0 or 1
        return
    events[field][2] = value
    for semantics in SEMANTICS:
        for kwargs in [dict(n_time_bins=2), dict(n_event_bins=9)] + (
                [dict(time_window=1), dict(event_count=100)] if semantics != "spikingjelly" else []):
            with pytest.raises(ValueError, match=message):
                to_frames(events, (4, 5, 2), semantics=semantics, **kwargs)


def test_foreign_dtypes_are_not_copied():
    """The kernels get the caller's record array itself where Numba reads its fields (the point: no copy), else
    views of it; only another byte order is converted."""
    from pipeline.binning import _columns, _event_source

    for name, dtype in FOREIGN_DTYPES.items():
        events = np.zeros(10, dtype)
        source = _event_source(events, _columns(events))
        if name.endswith("(converted)"):  # the multi-byte fields; p (one byte) is viewed as it is
            assert [np.shares_memory(col, events) for col in source] == [False, False, False, True]
        elif name.endswith("(strided views)"):
            assert all(np.shares_memory(col, events) and col.base is not None for col in source)
        else:
            assert all(col is events for col in source)
    with pytest.raises(ValueError, match=r"events\['x'\] must be integers \(uint16\), one per event"):
        to_frames(np.zeros(3, [("x", "<i2", (2,)), ("y", "<i2"), ("t", "<i8"), ("p", "?")]), (4, 4, 2),
                  n_time_bins=1)


@pytest.mark.parametrize("name", ["tonic DVSGesture", "object field (strided views)"])
def test_serial_and_parallel_kernels_agree(monkeypatch, name):
    """Small samples are binned on the calling thread, large ones in parallel: the same frames, saturation
    counts and first invalid event either way."""
    from pipeline import binning

    rng = np.random.default_rng(13)
    events = as_dtype(_stream(rng, 30_000, 6, 5), FOREIGN_DTYPES[name])
    cases = [dict(n_time_bins=7, semantics="tonic"), dict(n_event_bins=1, dtype=np.uint8),
             dict(time_window=100_000, overlap=30_000, out_size=(2, 3), dtype=np.uint8)]
    results = {}
    for threshold in (0, 10**9):
        monkeypatch.setattr(binning, "_PARALLEL_MIN_EVENTS", threshold)
        results[threshold] = [bin_events(events, (6, 5, 2), **kwargs) for kwargs in cases]
        bad = events.copy()
        bad["y"][20_000] = 5
        bad["x"][29_999] = -3  # later, and the last event, which tonic's n_time_bins drops
        for kwargs in cases:
            with pytest.raises(ValueError, match=r"events\[20000\]: y=5"):
                bin_events(bad, (6, 5, 2), **kwargs)
        bad["y"][20_000] = 0
        with pytest.raises(ValueError, match=r"events\[29999\]: x=-3"):
            bin_events(bad, (6, 5, 2), **cases[0])
    for (serial, lost_serial), (parallel, lost_parallel) in zip(results[10**9], results[0]):
        np.testing.assert_array_equal(serial, parallel)
        assert lost_serial == lost_parallel
    assert results[0][1][1] > 0  # saturation was exercised


def test_to_frames_from_several_threads():
    """Numba's workqueue layer aborts the process on concurrent parallel launches: to_frames and bin_batch from
    many threads at once (parallel kernel forced for every size) must give the right frames, not kill the
    interpreter."""
    code = (
        "import threading, numpy as np\n"
        "from pipeline import binning\n"
        "from pipeline.events import make_events\n"
        "binning._PARALLEL_MIN_EVENTS = 0\n"
        "rng = np.random.default_rng(0)\n"
        "ev = make_events(rng.integers(0, 34, 20000), rng.integers(0, 20, 20000),\n"
        "                 np.sort(rng.integers(0, 10**6, 20000)), rng.integers(0, 2, 20000))\n"
        "ref = binning.to_frames(ev, (34, 20, 2), n_time_bins=8)\n"
        "ok = []\n"
        "def work():\n"
        "    for _ in range(200):\n"
        "        ok.append(np.array_equal(binning.to_frames(ev, (34, 20, 2), n_time_bins=8), ref))\n"
        "off = np.array([0, 5000, 12000, 20000])\n"
        "bref, _ = binning.bin_batch(ev['x'], ev['y'], ev['t'], ev['p'], off, (34, 20, 2), n_time_bins=8)\n"
        "def batch():\n"
        "    for _ in range(100):\n"
        "        got, _ = binning.bin_batch(ev['x'], ev['y'], ev['t'], ev['p'], off, (34, 20, 2), n_time_bins=8)\n"
        "        ok.append(np.array_equal(got, bref))\n"
        "threads = [threading.Thread(target=f) for f in (work, work, work, batch, batch)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert len(ok) == 800 and all(ok)\n"
    )
    run_isolated(code)


def test_uint64_fields():
    """uint64 coordinates are read as they are (a huge one is refused); uint64 timestamps are converted after a
    check that they fit int64."""
    events = as_dtype(make_events([0, 1, 2], [0, 0, 0], [0, 5, 9], [0, 1, 1]),
                      [("x", "<u8"), ("y", "<u8"), ("t", "<u8"), ("p", "<u8")])
    np.testing.assert_array_equal(to_frames(events, (3, 1, 2), n_event_bins=1)[0, :, 0], [[1, 0, 0], [0, 1, 1]])
    events["x"][1] = 2**64 - 1
    with pytest.raises(ValueError, match=r"events\[1\]: x=18446744073709551615 is outside the sensor width 3"):
        to_frames(events, (3, 1, 2), n_event_bins=1)
    events["x"][1] = 1
    events["t"][2] = 2**63
    with pytest.raises(ValueError, match=r"events\[2\]: t=9223372036854775808 does not fit int64"):
        to_frames(events, (3, 1, 2), n_event_bins=1)


# ---------------------------------------------------------------------------------------------- batch


def _split(rng, n_samples: int, width=34, height=20, max_events=3_000):
    sizes = rng.integers(0, max_events, n_samples)
    sizes[rng.random(n_samples) < 0.2] = rng.integers(0, 3)  # empty and tiny samples
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(offsets[-1])
    t = np.concatenate([np.sort(rng.integers(0, rng.integers(1, 10**6), s)) for s in sizes]).astype(np.int64)
    x = rng.integers(0, width, total).astype(np.uint16)
    y = rng.integers(0, height, total).astype(np.uint16)
    p = rng.integers(0, 2, total).astype(np.uint8)
    return x, y, t, p, offsets


@pytest.mark.parametrize("semantics", ["exact", "tonic", "spikingjelly"])
@pytest.mark.parametrize("mode", ["n_time_bins", "n_event_bins"])
@pytest.mark.parametrize("dtype,n_pol,out_size", [(np.uint8, 2, None), (np.int16, 1, (10, 17)),
                                                  (np.float32, 2, (20, 1))])
def test_batch_equals_per_sample(semantics, mode, dtype, n_pol, out_size):
    rng = np.random.default_rng(3)
    x, y, t, p, offsets = _split(rng, 40)
    sensor = (34, 20, n_pol)
    overlap = 0.25 if semantics == "tonic" else 0.0
    kwargs = {mode: 6, "semantics": semantics, "out_size": out_size, "dtype": dtype, "overlap": overlap}
    frames, lost = bin_batch(x, y, t, p, offsets, sensor, **kwargs)
    assert frames.dtype == dtype and lost.shape == (40,) and not lost.any()
    for i in range(40):
        sl = slice(offsets[i], offsets[i + 1])
        one = to_frames(make_events(x[sl], y[sl], t[sl], p[sl]), sensor, **kwargs)
        np.testing.assert_array_equal(frames[i], one)
    # chunk by chunk into one preallocated buffer gives the same bytes
    buffer = np.full_like(frames, 7)
    for a in range(0, 40, 16):
        b = min(a + 16, 40)
        lo = offsets[a]
        rows = slice(lo, offsets[b])
        out, _ = bin_batch(x[rows], y[rows], t[rows], p[rows], offsets[a : b + 1] - lo, sensor, out=buffer[a:b],
                           **kwargs)
        assert np.shares_memory(out, buffer)
    np.testing.assert_array_equal(buffer, frames)


def test_batch_samples_need_not_be_sorted_across_samples():
    t = np.array([10, 20, 0, 5], np.int64)
    z = np.zeros(4, np.uint16)
    frames, _ = bin_batch(z, z, t, np.zeros(4, np.uint8), np.array([0, 2, 4]), (1, 1, 1), n_time_bins=2)
    assert frames.reshape(2, 2).tolist() == [[1, 1], [1, 1]]


def test_uint8_saturation_is_counted():
    n = 300
    x = np.full(n + 10, 1, np.uint16)
    x[n:] = 0
    y = np.zeros(n + 10, np.uint16)
    t = np.arange(n + 10, dtype=np.int64)
    p = np.ones(n + 10, np.uint8)
    offsets = np.array([0, 5, n + 10])
    frames, lost = bin_batch(x, y, t, p, offsets, (2, 1, 2), n_event_bins=1)
    assert lost.tolist() == [0, n - 5 - 255]
    assert frames[1, 0, 1, 0].tolist() == [10, 255]
    events = make_events(x, y, t, p)
    frames, lost = bin_events(events, (2, 1, 2), n_event_bins=1, dtype=np.uint8)
    assert lost == n - 255 and frames[0, 1, 0].tolist() == [10, 255]
    with pytest.warns(SaturationWarning):
        to_frames(events, (2, 1, 2), n_event_bins=1, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_frames(events, (2, 1, 2), n_event_bins=1, dtype=np.int16)[0, 1, 0, 1] == n


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def good():
    return make_events([0, 1, 2, 3], [0, 1, 2, 3], [0, 10, 20, 30], [0, 1, 0, 1])


@pytest.mark.parametrize(
    "field,value,message",
    [("x", 4, r"events\[2\]: x=4 is outside the sensor width 4 \(valid 0..3\)"),
     ("y", 9, r"events\[2\]: y=9 is outside the sensor height 5"),
     ("p", 2, r"events\[2\]: p=2 is not a polarity"),
     ("t", 5, r"events\[2\]: t=5 µs is earlier than the previous event's t=10")],
)
@pytest.mark.parametrize("semantics", ["exact", "tonic"])
def test_invalid_events_are_named(good, field, value, message, semantics):
    good[field][2] = value
    for kwargs in [dict(n_time_bins=2), dict(n_event_bins=9), dict(time_window=1), dict(event_count=100)]:
        with pytest.raises(ValueError, match=message):
            to_frames(good, (4, 5, 2), semantics=semantics, **kwargs)


def test_invalid_event_in_dropped_tail_is_still_found(good):
    good["x"][3] = 99  # tonic's n_time_bins drops the last event: it is validated all the same
    with pytest.raises(ValueError, match=r"events\[3\]"):
        to_frames(good, (4, 4, 2), n_time_bins=3, semantics="tonic")


def test_batch_invalid_event_names_sample_and_row():
    rng = np.random.default_rng(4)
    x, y, t, p, offsets = _split(rng, 10)
    i = int(np.flatnonzero(np.diff(offsets) > 5)[3])
    row = int(offsets[i] + 3)
    y[row] = 20
    with pytest.raises(ValueError, match=rf"sample {i}, row {row}: y=20"):
        bin_batch(x, y, t, p, offsets, (34, 20, 2), n_time_bins=4)
    y[row] = 0
    t[row] = t[row - 1] - 1
    with pytest.raises(ValueError, match=rf"sample {i}, row {row}: t="):
        bin_batch(x, y, t, p, offsets, (34, 20, 2), n_event_bins=4)


@pytest.mark.parametrize(
    "kwargs,message",
    [({}, "exactly one of n_time_bins, n_event_bins, time_window, event_count; got none"),
     (dict(n_time_bins=2, event_count=3), "exactly one of"),
     (dict(n_time_bins=0), "n_time_bins must be a positive integer"),
     (dict(time_window=1.5), "time_window must be a positive integer"),
     (dict(n_event_bins=True), "positive integer"),
     (dict(n_time_bins=2, semantics="foo"), "valid choices: 'exact', 'tonic', 'spikingjelly'"),
     (dict(time_window=10, semantics="spikingjelly"), "supports only n_time_bins"),
     (dict(n_time_bins=2, overlap=1.0), r"fraction of a bin in \[0, 1\)"),
     (dict(n_time_bins=2, overlap=0.5), "only for semantics='tonic'"),
     (dict(n_event_bins=2, overlap=0.5, semantics="spikingjelly"), "only for semantics='tonic'"),
     (dict(time_window=10, overlap=10), r"in \[0, 10\)"),
     (dict(event_count=10, overlap=0.5), "integer number of events"),
     (dict(n_time_bins=2, dtype=np.int32), "valid choices: int16, uint8, float32"),
     (dict(n_time_bins=2, out_size=(8, 4)), "out_size must be"),
     (dict(n_time_bins=2, out_size=(0, 4)), "out_size must be"),
     (dict(n_time_bins=2, out_size=4), "out_size must be")],
)
def test_bad_arguments(good, kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_frames(good, (4, 4, 2), **kwargs)


def test_bad_events_and_sensor(good):
    with pytest.raises(ValueError, match="fields x, y, t, p"):
        to_frames(np.zeros(3), (4, 4, 2), n_time_bins=2)
    with pytest.raises(ValueError, match="lack field"):
        to_frames(np.zeros(3, dtype=[("x", "u2"), ("t", "i8")]), (4, 4, 2), n_time_bins=2)
    with pytest.raises(ValueError, match="sensor_size"):
        to_frames(good, (4, 4, 3), n_time_bins=2)


def test_batch_bad_arguments():
    x = np.zeros(4, np.uint16)
    t = np.arange(4, dtype=np.int64)
    p = np.zeros(4, np.uint8)
    ok = np.array([0, 2, 4])
    with pytest.raises(ValueError, match="t must be a 1-D int64 array"):
        bin_batch(x, x, t.astype(np.int32), p, ok, (2, 2, 2), n_time_bins=2)
    with pytest.raises(ValueError, match="equal lengths"):
        bin_batch(x, x[:3], t, p, ok, (2, 2, 2), n_time_bins=2)
    with pytest.raises(ValueError, match=r"offsets\[2\]=2 breaks"):
        bin_batch(x, x, t, p, np.array([0, 3, 2, 4]), (2, 2, 2), n_time_bins=2)
    with pytest.raises(ValueError, match=r"within \[0, 4\]"):
        bin_batch(x, x, t, p, np.array([0, 5]), (2, 2, 2), n_time_bins=2)
    with pytest.raises(ValueError, match="exactly one of n_time_bins, n_event_bins; got none"):
        bin_batch(x, x, t, p, ok, (2, 2, 2))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2, 2, 2\)"):
        bin_batch(x, x, t, p, ok, (2, 2, 2), n_time_bins=2, out=np.zeros((2, 2, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        bin_batch(x, x, t, p, ok, (2, 2, 2), n_time_bins=2, out=np.zeros((2, 2, 2, 2, 2), np.int16))
    frames, lost = bin_batch(x, x, t, p, np.array([0]), (2, 2, 2), n_time_bins=2)
    assert frames.shape == (0, 2, 2, 2, 2) and lost.shape == (0,)
