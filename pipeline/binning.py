"""Event-to-frame binning: one sample (`to_frames`, `bin_events`) or a whole split (`bin_batch`).

Events follow the project contract (`pipeline.events`): fields ``x, y`` (pixel, ``u2``), ``t`` (µs, ``i8``,
sorted), ``p`` (0=OFF, 1=ON, ``u1``); frames come out as ``(T, P, H, W)`` and batches as ``(N, T, P, H, W)``.

Slicing -- exactly one of (tonic's vocabulary):

* ``n_time_bins=T``   T frames along time,
* ``n_event_bins=T``  T frames along the event index,
* ``time_window=W``   frames of ``W`` µs each (the number of frames depends on the recording),
* ``event_count=C``   frames of ``C`` events each (ditto).

Semantics -- how the slices are cut (``t0``/``tl`` = first/last timestamp, ``N`` = number of events, ``d`` = span):

``"exact"`` (default, lossless)
    * ``n_time_bins``: with ``D = tl - t0 + 1`` an event goes to bin ``(t - t0) * T // D`` (exact integer
      arithmetic), i.e. bin ``b`` holds ``t0 + ceil(b*D/T) <= t < t0 + ceil((b+1)*D/T)``: every
      event lands in exactly one frame and the bins are equally long (``D/T`` µs, rounded to whole µs, so
      their lengths differ by at most 1 µs). Bin edges are found by binary search, computed without int64
      overflow.
    * ``n_event_bins``: frame ``b`` holds events ``b*N//T <= i < (b+1)*N//T``: every event in exactly one
      frame, frame sizes differ by at most one (frames are empty only when ``N < T``).
    * ``time_window=W, overlap=o`` (µs, ``0 <= o < W``): window ``k`` is ``[t0 + k*s, t0 + k*s + W)`` with
      stride ``s = W - o``, for ``k < K = 1 + max(0, (d - W)//s + 1)`` -- the fewest windows that reach the last
      event, so the last window may be incomplete. With ``o = 0`` every event is in exactly one frame; with
      ``o > 0`` every event is in at least one frame (events in an overlap are counted in each of its frames).
    * ``event_count=C, overlap=o`` (events, ``0 <= o < C``): window ``k`` is events ``[k*s, min(k*s + C, N))``,
      ``s = C - o``, for ``k < K = 1 + max(0, ceil((N - C)/s))``; the last window may hold fewer than ``C``
      events. Lossless in the same sense as ``time_window``.
    * Empty input: ``T`` zero frames for the bin modes, one zero frame for the window modes.

``"tonic"``
    Bit-identical to ``tonic.transforms.ToFrame(sensor_size, <same argument>, overlap=overlap)(events)``
    (tonic 1.7.0, ``include_incomplete=False``), including its lossy edge rules: ``n_time_bins`` uses the
    floored bin width ``(tl - t0)//T`` and so always drops the last event (and the remainder of the span);
    ``n_event_bins`` drops the ``N % T`` tail; incomplete ``time_window``/``event_count`` windows are dropped;
    overlap is a fraction of a bin (bin modes) or µs / events (window modes), computed with tonic's float64
    arithmetic. Deviations, all on input tonic mishandles:

    * empty input: tonic returns float64 zeros laid out ``(T, P, W, H)``; we return zeros of the requested
      dtype laid out ``(T, P, H, W)`` (same ``T``: ``n_time_bins``/``n_event_bins`` frames, else 1);
    * ``sensor_size`` with ``P = 1`` and events of both polarities: tonic raises ``ValueError``; we merge the
      polarities (tonic itself merges when all events share one polarity -- identical there);
    * a pixel count beyond the dtype's range: tonic's int16 wraps around silently; we saturate and count;
    * tonic sets ``events["p"] = 0`` in the caller's array for ``P = 1``; we never write into ``events``.

    Arguments are stricter than tonic's: ``time_window``, ``event_count`` and their ``overlap`` are integers
    (µs, events) with ``0 <= overlap < window``, bin-mode overlaps lie in [0, 1).

``"spikingjelly"``
    Bit-identical (as counts) to SpikingJelly's ``integrate_events_by_fixed_frames_number``:
    ``n_event_bins=T`` is ``split_by='number'`` (frame ``b`` holds events ``[b*(N//T), (b+1)*(N//T))``, the
    last frame runs to ``N``); ``n_time_bins=T`` is ``split_by='time'`` (``dt = (tl - t0)//T``, frame ``b``
    holds ``t0 + b*dt <= t < t0 + (b+1)*dt``, the last frame runs to the last event). Polarity ``p != 0`` is
    ON. Deviations: where SpikingJelly raises ``IndexError`` (a time bin without events -- always the case
    when ``tl - t0 < T`` -- or empty input) we return the frames its formulas define when the index searches
    are read as ``searchsorted``: empty time bins give empty frames and the last frame still takes every
    event from ``t0 + (T-1)*dt`` on; empty input gives ``T`` zero frames. Only the bin modes exist there.

Other options (every semantics): ``out_size=(H', W')`` downsamples while binning (``x' = x*W'//W``,
``y' = y*H'//H``, counts summed -- the same as binning at full size and then sum-pooling); ``P = 1`` in
``sensor_size`` merges the polarities. ``dtype`` is ``int16`` (tonic's), ``uint8`` or ``float32``; counts
saturate at 32767, 255 or 2**24 (beyond which float32 cannot count) and every increment lost to saturation
is counted: `bin_events` and `bin_batch` return the count, `to_frames` emits a `SaturationWarning`.

Every event is validated, in the same pass that bins it (events a semantics drops are checked too):
coordinates outside the sensor, polarities other than 0/1 and decreasing timestamps raise ``ValueError``
naming the first bad event, and no frames are returned.

Event dtypes: any structured array with (at least) the fields ``x, y, t, p``, in any order and of any integer
or bool type -- ours, tonic's (DVSGesture: ``x, y`` int16, ``p`` bool, ``t`` int64; N-MNIST: all int64), or
another library's with extra fields -- is read as it is, without a copy or a conversion; negative
coordinates and polarities other than 0/1 are refused like any other invalid event. Only fields in another
byte order and uint64 timestamps are converted first (after a range check).

Performance notes: the kernels read each event once, and validate it in the same pass; `to_frames` hands
them the structured array itself (Numba compiles one specialisation per event dtype, cached on disk) --
converting four columns first would take longer than binning -- and bins the frames of one sample in
parallel when it has at least 2 M events (smaller ones on the calling thread: see `_PARALLEL_MIN_EVENTS`);
`bin_batch` runs in parallel over samples, each writing only its own ``out[i]``. `to_frames` may be called
from several threads at once.

Why one file of ~870 lines: every slicing mode and semantics shares the bin-edge rules, and each kernel has a
serial and a parallel twin (separate Numba functions, so their on-disk caches never collide); a change to the
edges must be read against every kernel that uses them, behind the same thin validated wrappers.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import numpy as np
import numpy.typing as npt
from numba import njit, prange
from numba.core import types
from numba.core.errors import NumbaError
from numba.extending import overload
from numba.np.numpy_support import from_dtype

from pipeline.events import SensorSize
from pipeline.runtime import PARALLEL_LOCK  # the workqueue threading layer and its one-launch-at-a-time rule

__all__ = ["SEMANTICS", "DTYPES", "DTYPE_NAMES", "SaturationWarning", "to_frames", "bin_events", "bin_batch"]

#: Accepted values of ``semantics``.
SEMANTICS = ("exact", "tonic", "spikingjelly")
#: Accepted output dtypes and the count at which each saturates.
DTYPES = {np.dtype(np.int16): 32767, np.dtype(np.uint8): 255, np.dtype(np.float32): 2**24}
#: Their names, as configs and command lines spell them.
DTYPE_NAMES = tuple(dt.name for dt in DTYPES)

# Integer codes the kernels switch on (numba folds these module globals into constants).
_EXACT, _TONIC, _SPIKINGJELLY = 0, 1, 2
_TIME_BINS, _EVENT_BINS, _TIME_WINDOW, _EVENT_COUNT = 0, 1, 2, 3
_MODE_NAMES = ("n_time_bins", "n_event_bins", "time_window", "event_count")
_FIELDS = {"x": np.dtype("<u2"), "y": np.dtype("<u2"), "t": np.dtype("<i8"), "p": np.dtype("u1")}
#: `bin_events` bins a sample with fewer events on the calling thread (`_bin_sample_serial`), a larger one in
#: parallel over its frames (`_bin_sample`). Measured on 2 shared cores (tonic semantics, 128x128, median):
#: 4 k events 0.012 ms serially vs 0.21 ms in parallel (waking the workers), 1 M events 2.9 vs 3.2 ms, 4 M 12.7
#: vs 10.1 ms, 16 M 38.6 vs 24.5 ms. Per-sample calls usually run where every core is already busy (one
#: DataLoader worker per core), which is where the parallel kernel gains least.
_PARALLEL_MIN_EVENTS = 2_000_000


class SaturationWarning(UserWarning):
    """`to_frames` dropped counts because a pixel reached the output dtype's maximum."""


# ----------------------------------------------------------------------------------------------------------
# Kernels: plain 1-D arrays and ints in, nothing but arithmetic inside.
# ----------------------------------------------------------------------------------------------------------
#
# The per-event kernels take the events as ``x, y, t, p`` and read event ``j`` through `_event`, which Numba
# specialises on the argument types: either four 1-D integer (or bool) arrays of any layout -- the columns of
# the event store, or zero-copy strided field views of a structured array -- or, for a structured array whose
# fields Numba reads directly, that record array itself passed four times (``x is y is t is p``), read as
# ``x[j].x, x[j].y, ...`` (one address per event instead of four strided ones: measured ~25% faster than
# strided views, and no copy). Either way every field is widened to int64 on load, so one kernel serves
# uint16 and tonic's int16 coordinates, bool/int8/uint8/int16 polarities, int32/int64 timestamps.


def _event(x, y, t, p, j):
    """Event ``j`` as int64 ``(x, y, t, p)``; see the note above (compiled only, through the overload below)."""
    if x is y is t is p:
        e = x[j]
        return int(e["x"]), int(e["y"]), int(e["t"]), int(e["p"])
    return int(x[j]), int(y[j]), int(t[j]), int(p[j])


@overload(_event, jit_options={"nogil": True})
def _event_overload(x, y, t, p, j):
    if isinstance(x, types.Array) and isinstance(x.dtype, types.Record):

        def read_record(x, y, t, p, j):
            e = x[j]
            return np.int64(e.x), np.int64(e.y), np.int64(e.t), np.int64(e.p)

        return read_record

    def read_columns(x, y, t, p, j):
        return np.int64(x[j]), np.int64(y[j]), np.int64(t[j]), np.int64(p[j])

    return read_columns


@njit(cache=True, nogil=True)
def _first_invalid(x, y, t, p, lo, start, stop, width, height):
    """First index ``j`` in ``[start, stop)`` with ``x[j]`` outside ``[0, width)``, ``y[j]`` outside ``[0,
    height)``, ``p[j]`` not 0/1 or ``t[j] < t[j-1]`` (timestamps are compared from ``j = lo + 1`` on: ``lo`` is the
    sample's first row), else -1.

    Signed values are compared as uint64 (a negative one becomes huge), so one unsigned comparison per field
    checks both ends. Branch-free passes (unsigned indices, so no negative-index checks: they vectorize over
    columns) decide; only when they find something does a third pass look for the index."""
    if start >= stop:
        return -1
    one = np.uint64(1)
    uwidth = np.uint64(width)
    uheight = np.uint64(height)
    bad = False
    for j in range(np.uint64(start), np.uint64(stop)):
        x_j, y_j, _, p_j = _event(x, y, t, p, j)
        bad |= (np.uint64(x_j) >= uwidth) | (np.uint64(y_j) >= uheight) | (np.uint64(p_j) > one)
    for j in range(np.uint64(max(start, lo + 1)), np.uint64(stop)):
        bad |= _event(x, y, t, p, j)[2] < _event(x, y, t, p, j - one)[2]
    if not bad:
        return -1
    t_prev = _event(x, y, t, p, max(start - 1, lo))[2]
    for j in range(start, stop):
        x_j, y_j, t_j, p_j = _event(x, y, t, p, j)
        if (np.uint64(x_j) >= uwidth) | (np.uint64(y_j) >= uheight) | (np.uint64(p_j) > one) | (t_j < t_prev):
            return j
        t_prev = t_j
    return -1


@njit(cache=True, nogil=True)
def _search_int(t, lo, hi, value):
    """First ``k`` in ``[lo, hi)`` with ``t[k] >= value`` (``hi`` if none); ``t[lo:hi]`` sorted, int64 value."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if t[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _search_float(t, lo, hi, value):
    """As `_search_int` for a float64 ``value``, comparing ``float64(t[k])`` as ``np.searchsorted`` does."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(t[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _fixed_ranges(t, lo, hi, mode, semantics, n_bins, overlap, starts, ends):
    """Event index ranges ``[starts[b], ends[b])`` (absolute, within ``[lo, hi)``) of the ``n_bins`` frames of
    the sample ``t[lo:hi]`` for ``mode`` in (_TIME_BINS, _EVENT_BINS); ``overlap`` is a fraction of a bin."""
    n = hi - lo
    if n == 0:
        for b in range(n_bins):
            starts[b] = lo
            ends[b] = lo
        return
    t0 = t[lo]
    if mode == _TIME_BINS:
        if semantics == _EXACT:
            # bin b starts at t0 + ceil(b*D/T); split D = q*T + r so that nothing overflows int64.
            span = t[hi - 1] - t0 + 1
            q = span // n_bins
            r = span - q * n_bins
            k = lo
            for b in range(n_bins):
                k = _search_int(t, k, hi, t0 + b * q + (b * r + n_bins - 1) // n_bins)
                starts[b] = k
            for b in range(n_bins - 1):
                ends[b] = starts[b + 1]
            ends[n_bins - 1] = hi
        elif semantics == _TONIC:
            dt = (t[hi - 1] - t0) // n_bins
            if overlap == 0.0:
                for b in range(n_bins):
                    first = t0 + b * dt
                    starts[b] = _search_int(t, lo, hi, first)
                    ends[b] = _search_int(t, lo, hi, first + dt)
            else:  # tonic's float64 expressions, operation for operation
                window_f = np.float64(dt) * (1.0 + overlap)
                stride_f = window_f * (1.0 - overlap)
                for b in range(n_bins):
                    first_f = np.float64(b) * stride_f + np.float64(t0)
                    starts[b] = _search_float(t, lo, hi, first_f)
                    ends[b] = _search_float(t, lo, hi, first_f + window_f)
        else:  # spikingjelly split_by='time'
            dt = (t[hi - 1] - t0) // n_bins
            for b in range(n_bins):
                first = dt * b + t0
                starts[b] = _search_int(t, lo, hi, first)
                ends[b] = _search_int(t, lo, hi, first + dt)
            ends[n_bins - 1] = hi
    else:  # _EVENT_BINS
        if semantics == _EXACT:
            for b in range(n_bins):
                starts[b] = lo + b * n // n_bins
                ends[b] = lo + (b + 1) * n // n_bins
        elif semantics == _TONIC:
            q = n // n_bins
            if overlap == 0.0:
                count = q
                stride = q
            else:
                count = np.int64(np.float64(q) * (1.0 + overlap))
                stride = np.int64(np.float64(count) * (1.0 - overlap))
            for b in range(n_bins):
                starts[b] = lo + min(b * stride, n)
                ends[b] = lo + min(b * stride + count, n)
        else:  # spikingjelly split_by='number'
            q = n // n_bins
            for b in range(n_bins):
                starts[b] = lo + b * q
                ends[b] = lo + (b + 1) * q
            ends[n_bins - 1] = hi


@njit(cache=True, nogil=True)
def _window_count(t, lo, hi, mode, semantics, window, overlap):
    """Number of frames for ``mode`` in (_TIME_WINDOW, _EVENT_COUNT); ``window``/``overlap`` in µs or events."""
    n = hi - lo
    if n == 0:
        return 1
    stride = window - overlap
    if mode == _TIME_WINDOW:
        span = t[hi - 1] - t[lo]
        if semantics == _TONIC:  # floor((span - W) / stride) + 1 in float64, at least one window
            return max(np.int64(math.floor(np.float64(span - window) / np.float64(stride))) + 1, 1)
        return 1 + max(0, (span - window) // stride + 1)
    if semantics == _TONIC:
        count = min(window, n)
        return np.int64(math.floor(np.float64(n - count) / np.float64(stride))) + 1
    return 1 + max(0, (n - window + stride - 1) // stride)


@njit(cache=True, nogil=True)
def _window_ranges(t, lo, hi, mode, semantics, window, overlap, starts, ends):
    """Event index ranges of the ``len(starts)`` windows of ``t[lo:hi]`` (see `_window_count`)."""
    n = hi - lo
    n_frames = starts.shape[0]
    if n == 0:
        for k in range(n_frames):
            starts[k] = lo
            ends[k] = lo
        return
    stride = window - overlap
    if mode == _TIME_WINDOW:
        t0 = t[lo]
        for k in range(n_frames):
            first = t0 + k * stride
            starts[k] = _search_int(t, lo, hi, first)
            ends[k] = _search_int(t, lo, hi, first + window)
    else:
        count = min(window, n) if semantics == _TONIC else window
        for k in range(n_frames):
            starts[k] = lo + min(k * stride, n)
            ends[k] = lo + min(k * stride + count, n)


@njit(cache=True, nogil=True)
def _accumulate(x, y, t, p, lo, start, stop, width, height, identity, xmap, yoff, pstride, base, maxval, out):
    """Check events ``[start, stop)`` as `_first_invalid` does and add each into the flat frame starting at
    ``out[base]``, at ``base + p*pstride + y*width + x`` (``identity``) or ``base + p*pstride + yoff[y] +
    xmap[x]`` (downsampling); a count at ``maxval`` stays there.

    One pass does both, so each event is read from memory once (measured faster than validating first), and
    the loop index is unsigned (no negative-index wraparound code: ~1.5x faster). Stops at the first invalid
    event, before writing anything for it. Returns ``(increments lost to saturation, first invalid index or
    -1)``."""
    lost = 0
    if start >= stop:
        return lost, np.int64(-1)
    one = np.uint64(1)
    uwidth = np.uint64(width)
    uheight = np.uint64(height)
    t_prev = _event(x, y, t, p, start - 1 if start > lo else start)[2]
    if identity:
        for j in range(np.uint64(start), np.uint64(stop)):
            x_j, y_j, t_j, p_j = _event(x, y, t, p, j)
            if (np.uint64(x_j) >= uwidth) | (np.uint64(y_j) >= uheight) | (np.uint64(p_j) > one) | (t_j < t_prev):
                return lost, np.int64(j)
            t_prev = t_j
            k = np.uint64(base + p_j * pstride + y_j * width + x_j)
            v = out[k]
            if v < maxval:
                out[k] = v + 1
            else:
                lost += 1
    else:
        for j in range(np.uint64(start), np.uint64(stop)):
            x_j, y_j, t_j, p_j = _event(x, y, t, p, j)
            if (np.uint64(x_j) >= uwidth) | (np.uint64(y_j) >= uheight) | (np.uint64(p_j) > one) | (t_j < t_prev):
                return lost, np.int64(j)
            t_prev = t_j
            k = np.uint64(base + p_j * pstride + yoff[np.uint64(y_j)] + xmap[np.uint64(x_j)])
            v = out[k]
            if v < maxval:
                out[k] = v + 1
            else:
                lost += 1
    return lost, np.int64(-1)


@njit(cache=True, nogil=True)
def _gaps(lo, hi, starts, ends, gap_starts, gap_ends):
    """The parts of ``[lo, hi)`` that no frame range covers (events a semantics drops, which must still be
    validated), written to ``gap_starts/gap_ends`` (room for ``len(starts) + 1``). Returns their number."""
    n_gaps = 0
    covered = lo
    for b in np.argsort(starts, kind="mergesort"):
        if ends[b] <= starts[b]:
            continue
        if starts[b] > covered:
            gap_starts[n_gaps] = covered
            gap_ends[n_gaps] = starts[b]
            n_gaps += 1
        covered = max(covered, ends[b])
    if covered < hi:
        gap_starts[n_gaps] = covered
        gap_ends[n_gaps] = hi
        n_gaps += 1
    return n_gaps


@njit(cache=True, nogil=True)
def _min_index(indices):
    """Smallest non-negative entry of ``indices``, or -1."""
    best = -1
    for j in indices:
        if j >= 0 and (best < 0 or j < best):
            best = j
    return best


@njit(cache=True, nogil=True, parallel=True)
def _bin_sample(x, y, t, p, starts, ends, width, height, identity, xmap, yoff, pstride, maxval, out):
    """Frames of one sample (all of ``x, y, t, p``): frame ``b`` of the flat ``out`` (``(T*P*H'*W',)``)
    counts events ``[starts[b], ends[b])``; frames (and the uncovered gaps, only validated) are processed in
    parallel, each by one thread. Returns ``(increments lost to saturation, first invalid index or -1)``."""
    n_frames = starts.shape[0]
    n = t.shape[0]
    frame_size = out.shape[0] // max(n_frames, 1)
    gap_starts = np.empty(n_frames + 1, np.int64)
    gap_ends = np.empty(n_frames + 1, np.int64)
    n_gaps = _gaps(0, n, starts, ends, gap_starts, gap_ends)
    lost = np.zeros(n_frames, np.int64)
    bad = np.full(n_frames + n_gaps, -1, np.int64)
    for task in prange(n_frames + n_gaps):
        if task < n_frames:
            base = task * frame_size
            out[base : base + frame_size] = 0
            lost[task], bad[task] = _accumulate(
                x, y, t, p, 0, starts[task], ends[task], width, height, identity, xmap, yoff, pstride, base,
                maxval, out,
            )
        else:
            g = task - n_frames
            bad[task] = _first_invalid(x, y, t, p, 0, gap_starts[g], gap_ends[g], width, height)
    return lost.sum(), _min_index(bad)


@njit(cache=True, nogil=True)
def _bin_sample_serial(x, y, t, p, starts, ends, width, height, identity, xmap, yoff, pstride, maxval, out):
    """`_bin_sample` on the calling thread, frame after frame (for small samples: see `_PARALLEL_MIN_EVENTS`)."""
    n_frames = starts.shape[0]
    n = t.shape[0]
    frame_size = out.shape[0] // max(n_frames, 1)
    gap_starts = np.empty(n_frames + 1, np.int64)
    gap_ends = np.empty(n_frames + 1, np.int64)
    n_gaps = _gaps(0, n, starts, ends, gap_starts, gap_ends)
    lost = 0
    first_bad = -1
    for b in range(n_frames):
        base = b * frame_size
        out[base : base + frame_size] = 0
        n_lost, j = _accumulate(
            x, y, t, p, 0, starts[b], ends[b], width, height, identity, xmap, yoff, pstride, base, maxval, out
        )
        lost += n_lost
        if j >= 0 and (first_bad < 0 or j < first_bad):
            first_bad = j
    for g in range(n_gaps):
        j = _first_invalid(x, y, t, p, 0, gap_starts[g], gap_ends[g], width, height)
        if j >= 0 and (first_bad < 0 or j < first_bad):
            first_bad = j
    return lost, first_bad


@njit(cache=True, nogil=True, parallel=True)
def _bin_batch_kernel(
    x, y, t, p, offsets, width, height, mode, semantics, n_bins, overlap, identity, xmap, yoff, pstride, maxval,
    out, lost, bad,
):
    """Bin samples ``offsets[i]:offsets[i+1]`` into row ``i`` of ``out`` (``(N, T*P*H'*W')``), in parallel over
    samples. Writes per-sample ``lost`` increments and the first invalid row (``bad``, -1 if none)."""
    n_samples = offsets.shape[0] - 1
    frame_size = out.shape[1] // n_bins
    for i in prange(n_samples):
        lo = offsets[i]
        hi = offsets[i + 1]
        row = out[i]
        starts = np.empty(n_bins, np.int64)
        ends = np.empty(n_bins, np.int64)
        _fixed_ranges(t, lo, hi, mode, semantics, n_bins, overlap, starts, ends)
        gap_starts = np.empty(n_bins + 1, np.int64)
        gap_ends = np.empty(n_bins + 1, np.int64)
        n_gaps = _gaps(lo, hi, starts, ends, gap_starts, gap_ends)
        total = 0
        first_bad = -1
        for b in range(n_bins):
            row[b * frame_size : (b + 1) * frame_size] = 0  # zeroed just before use: stays in L1
            n_lost, j = _accumulate(
                x, y, t, p, lo, starts[b], ends[b], width, height, identity, xmap, yoff, pstride, b * frame_size,
                maxval, row,
            )
            total += n_lost
            if j >= 0 and (first_bad < 0 or j < first_bad):
                first_bad = j
        for g in range(n_gaps):
            j = _first_invalid(x, y, t, p, lo, gap_starts[g], gap_ends[g], width, height)
            if j >= 0 and (first_bad < 0 or j < first_bad):
                first_bad = j
        bad[i] = first_bad
        lost[i] = total


# ----------------------------------------------------------------------------------------------------------
# Argument checking (the boundary).
# ----------------------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _slicing(**given) -> tuple[int, int]:
    """The one slicing argument that is not None, as ``(mode code, positive int value)``."""
    chosen = [(name, value) for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise ValueError(
            f"give exactly one of {', '.join(given)}; got "
            + (", ".join(f"{name}={value!r}" for name, value in chosen) or "none")
        )
    name, value = chosen[0]
    if not _is_int(value) or value < 1:
        unit = {"time_window": " (µs)"}.get(name, "")
        raise ValueError(f"{name} must be a positive integer{unit}, got {value!r}")
    return _MODE_NAMES.index(name), int(value)


def _semantics(semantics: str, mode: int) -> int:
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r}; valid choices: {', '.join(map(repr, SEMANTICS))}")
    code = SEMANTICS.index(semantics)
    if code == _SPIKINGJELLY and mode not in (_TIME_BINS, _EVENT_BINS):
        raise ValueError(
            f"semantics='spikingjelly' supports only n_time_bins (split_by='time') and n_event_bins "
            f"(split_by='number'), not {_MODE_NAMES[mode]}"
        )
    return code


def _overlap(overlap, mode: int, semantics: int, window: int) -> float | int:
    """Check ``overlap``: a fraction in [0, 1) of a bin (bin modes, tonic only) or an int in [0, window)."""
    if mode in (_TIME_BINS, _EVENT_BINS):
        if not isinstance(overlap, numbers.Real) or isinstance(overlap, bool) or not 0 <= overlap < 1:
            raise ValueError(f"overlap for {_MODE_NAMES[mode]} is a fraction of a bin in [0, 1), got {overlap!r}")
        if overlap != 0 and semantics != _TONIC:
            raise ValueError(
                f"overlap with {_MODE_NAMES[mode]} is defined only for semantics='tonic', "
                f"not {SEMANTICS[semantics]!r}; use overlap=0"
            )
        return float(overlap)
    unit = "µs" if mode == _TIME_WINDOW else "events"
    if not _is_int(overlap) or not 0 <= overlap < window:
        raise ValueError(
            f"overlap for {_MODE_NAMES[mode]}={window} is an integer number of {unit} in [0, {window}), "
            f"got {overlap!r}"
        )
    return int(overlap)


def _out_dtype(dtype) -> tuple[np.dtype, np.generic]:
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPE_NAMES)}") from err
    if dt not in DTYPES:
        raise ValueError(f"unsupported dtype {dt}; valid choices: {', '.join(DTYPE_NAMES)}")
    return dt, dt.type(DTYPES[dt])


def _geometry(sensor: SensorSize, out_size) -> tuple[int, int, np.ndarray, np.ndarray, int]:
    """Output ``(H', W')``, the column and row-offset lookup tables, and the polarity stride."""
    if out_size is None:
        height, width = sensor.height, sensor.width
    else:
        try:
            height, width = out_size
        except (TypeError, ValueError) as err:
            raise ValueError(f"out_size must be (height, width), got {out_size!r}") from err
        if not (_is_int(height) and _is_int(width) and 1 <= height <= sensor.height and 1 <= width <= sensor.width):
            raise ValueError(
                f"out_size must be (height, width) with 1 <= height <= {sensor.height} and "
                f"1 <= width <= {sensor.width} (it downsamples), got {out_size!r}"
            )
        height, width = int(height), int(width)
    xmap = np.arange(sensor.width, dtype=np.int64) * width // sensor.width
    yoff = (np.arange(sensor.height, dtype=np.int64) * height // sensor.height) * width
    pstride = height * width if sensor.polarities == 2 else 0
    return height, width, xmap, yoff, pstride


def _describe_invalid(j: int, x, y, t, p, sensor: SensorSize) -> str:
    """What is wrong with event ``j``, which a kernel reported invalid (checks in the kernels' order); ``x, y,
    t, p`` are 1-D arrays of any integer (or bool) type."""
    if not 0 <= x[j] < sensor.width:
        return f"x={int(x[j])} is outside the sensor width {sensor.width} (valid 0..{sensor.width - 1})"
    if not 0 <= y[j] < sensor.height:
        return f"y={int(y[j])} is outside the sensor height {sensor.height} (valid 0..{sensor.height - 1})"
    if not 0 <= p[j] <= 1:
        return f"p={int(p[j])} is not a polarity (valid 0, 1)"
    return f"t={int(t[j])} µs is earlier than the previous event's t={int(t[j - 1])} (events must be sorted by t)"


def _readable(name: str, dtype: np.dtype) -> bool:
    """Whether the kernels read field ``name`` of this dtype as it is: native-order integers or bool, except
    uint64 timestamps (which int64 arithmetic cannot hold; they are converted after a range check)."""
    if dtype.kind not in "biu" or not dtype.isnative:
        return False
    return not (name == "t" and dtype.kind == "u" and dtype.itemsize == 8)


@functools.lru_cache(maxsize=64)
def _record_typed(dtype: np.dtype) -> bool:
    """Whether Numba types an array of this structured dtype as records (every field of a type it knows:
    not so with object fields or another byte order). Cached: asking Numba takes ~30 µs."""
    try:
        from_dtype(dtype)
    except NumbaError:
        return False
    return True


def _columns(events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero-copy field views ``x, y, t, p`` of a structured event array, each of its own integer (or bool)
    type; a field the kernels cannot read as it is (`_readable`) is converted: another byte order to the native
    one, uint64 ``t`` to int64 after a range check."""
    if not isinstance(events, np.ndarray) or events.dtype.names is None or events.ndim != 1:
        raise ValueError("events must be a 1-D structured array with fields x, y, t, p (see pipeline.events)")
    missing = [name for name in _FIELDS if name not in events.dtype.names]
    if missing:
        raise ValueError(f"events lack field(s) {', '.join(missing)}; found {', '.join(events.dtype.names)}")
    cols = []
    for name, want in _FIELDS.items():
        col = events[name]
        if col.dtype.kind not in "biu" or col.ndim != 1:
            raise ValueError(f"events[{name!r}] must be integers ({want}), one per event, got "
                             f"{events.dtype.fields[name][0]}")
        if not _readable(name, col.dtype):
            if name == "t" and col.dtype.kind == "u" and col.dtype.itemsize == 8:
                bad = np.flatnonzero(col > np.iinfo(np.int64).max)
                if bad.size:
                    j = int(bad[0])
                    raise ValueError(f"events[{j}]: t={col[j]} does not fit int64 (µs)")
                col = col.astype(np.int64)
            else:
                col = col.astype(col.dtype.newbyteorder("="))
        cols.append(col)
    return tuple(cols)


def _event_source(events: np.ndarray, cols: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """What the per-event kernels get for ``events`` (see the note on `_event`): the record array itself (as a
    plain ndarray view, for subclasses such as ``np.recarray`` or ``np.memmap``), four times, when Numba reads
    all four fields from it as they are; else the columns from `_columns`."""
    if all(_readable(name, events.dtype.fields[name][0]) for name in _FIELDS) and _record_typed(events.dtype):
        records = events if type(events) is np.ndarray else events.view(np.ndarray)
        return records, records, records, records
    return cols


# ----------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------


def bin_events(
    events: np.ndarray,
    sensor_size: SensorSize | tuple[int, int, int],
    *,
    n_time_bins: int | None = None,
    n_event_bins: int | None = None,
    time_window: int | None = None,
    event_count: int | None = None,
    overlap: float | int = 0,
    semantics: str = "exact",
    out_size: tuple[int, int] | None = None,
    dtype: npt.DTypeLike = np.int16,
) -> tuple[np.ndarray, int]:
    """Bin one sample into frames and count the increments lost to saturation.

    Parameters:
        events: ``(N,)`` structured array with fields ``x, y`` (pixels), ``t`` (µs, sorted), ``p`` (0/1) --
            ``pipeline.events.EVENT_DTYPE``, tonic's dtypes, or any integer/bool fields in any order, extra
            fields allowed (see the module docstring); read without a copy, never modified.
        sensor_size: ``(W, H, P)`` as tonic; ``P = 1`` merges the polarities.
        n_time_bins, n_event_bins, time_window, event_count: exactly one, a positive int (``time_window`` in µs).
        overlap: bin modes: fraction of a bin in [0, 1) (``semantics="tonic"`` only);
            ``time_window``: µs, ``event_count``: events, an int in [0, window).
        semantics: ``"exact"`` (lossless), ``"tonic"`` or ``"spikingjelly"`` -- see the module docstring.
        out_size: ``(H', W')`` to downsample while binning (``x' = x*W'//W``, ``y' = y*H'//H``), or None.
        dtype: ``int16``, ``uint8`` or ``float32``.

    Returns:
        ``(frames, n_saturated)``: frames ``(T, P, H', W')`` of ``dtype`` (event counts) and the number of event
        increments dropped because a pixel was already at the dtype's maximum (32767, 255, 2**24).

    Raises:
        ValueError: bad arguments (the message lists the valid choices) or an invalid event (the message
            names its index): coordinate outside the sensor, polarity not 0/1, timestamp decreasing.
    """
    sensor = SensorSize.of(sensor_size)
    mode, amount = _slicing(
        n_time_bins=n_time_bins, n_event_bins=n_event_bins, time_window=time_window, event_count=event_count
    )
    sem = _semantics(semantics, mode)
    ov = _overlap(overlap, mode, sem, amount)
    out_dtype, maxval = _out_dtype(dtype)
    height, width, xmap, yoff, pstride = _geometry(sensor, out_size)
    x, y, t, p = cols = _columns(events)
    n = t.shape[0]

    if mode in (_TIME_BINS, _EVENT_BINS):
        n_frames = amount
        starts = np.empty(n_frames, np.int64)
        ends = np.empty(n_frames, np.int64)
        _fixed_ranges(t, 0, n, mode, sem, n_frames, ov, starts, ends)
    else:
        n_frames = int(_window_count(t, 0, n, mode, sem, amount, ov))
        starts = np.empty(n_frames, np.int64)
        ends = np.empty(n_frames, np.int64)
        _window_ranges(t, 0, n, mode, sem, amount, ov, starts, ends)

    # The ranges assume sorted t; on unsorted input they are wrong but in bounds, and the pass below -- which
    # checks every event before it is counted -- reports the first bad one.
    frames = np.empty((n_frames, sensor.polarities, height, width), dtype=out_dtype)
    args = (*_event_source(events, cols), starts, ends, sensor.width, sensor.height, out_size is None, xmap, yoff,
            pstride, maxval, frames.reshape(-1))
    if n >= _PARALLEL_MIN_EVENTS and PARALLEL_LOCK.acquire(blocking=False):
        try:
            lost, bad = _bin_sample(*args)
        finally:
            PARALLEL_LOCK.release()
    else:
        lost, bad = _bin_sample_serial(*args)
    if bad >= 0:
        raise ValueError(f"events[{int(bad)}]: {_describe_invalid(int(bad), x, y, t, p, sensor)}")
    return frames, int(lost)


def to_frames(
    events: np.ndarray,
    sensor_size: SensorSize | tuple[int, int, int],
    *,
    n_time_bins: int | None = None,
    n_event_bins: int | None = None,
    time_window: int | None = None,
    event_count: int | None = None,
    overlap: float | int = 0,
    semantics: str = "exact",
    out_size: tuple[int, int] | None = None,
    dtype: npt.DTypeLike = np.int16,
) -> np.ndarray:
    """Frames ``(T, P, H', W')`` of one sample: `bin_events` without the saturation count.

    Same arguments as `bin_events` (tonic's ToFrame vocabulary; see the module docstring for the three
    semantics). If any count saturated, a `SaturationWarning` says how many increments were dropped.
    """
    frames, n_saturated = bin_events(
        events,
        sensor_size,
        n_time_bins=n_time_bins,
        n_event_bins=n_event_bins,
        time_window=time_window,
        event_count=event_count,
        overlap=overlap,
        semantics=semantics,
        out_size=out_size,
        dtype=dtype,
    )
    if n_saturated:
        warnings.warn(
            f"{n_saturated} event increments dropped: pixel counts saturated at {DTYPES[frames.dtype]} "
            f"({frames.dtype}); use bin_events to get the count or a wider dtype",
            SaturationWarning,
            stacklevel=2,
        )
    return frames


def bin_batch(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    offsets: np.ndarray,
    sensor_size: SensorSize | tuple[int, int, int],
    *,
    n_time_bins: int | None = None,
    n_event_bins: int | None = None,
    overlap: float = 0.0,
    semantics: str = "exact",
    out_size: tuple[int, int] | None = None,
    dtype: npt.DTypeLike = np.uint8,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bin a whole split (or a chunk of one) at once, in parallel over samples.

    Sample ``i`` is rows ``offsets[i]:offsets[i+1]`` of the columnar arrays (the event-store layout). Each
    sample's frames are exactly ``to_frames`` of that sample with the same arguments; every sample writes only
    its own ``out[i]``, so the result does not depend on the number of threads.

    Parameters:
        x, y: ``(E,)`` uint16 pixel coordinates; t: ``(E,)`` int64 µs, sorted within each sample;
            p: ``(E,)`` uint8 polarity 0/1.
        offsets: ``(N+1,)`` int64, non-decreasing, within ``[0, E]``.
        sensor_size: ``(W, H, P)``.
        n_time_bins, n_event_bins: exactly one (the fixed-``T`` modes; window modes give ragged output).
        overlap, semantics, out_size: as in `bin_events`.
        dtype: ``uint8`` (default), ``int16`` or ``float32``.
        out: optional C-contiguous ``(N, T, P, H', W')`` array of ``dtype`` to write into (e.g. one chunk of a
            larger buffer); it is overwritten completely. On a ValueError about an event its content is
            unspecified.

    Returns:
        ``(frames, n_saturated)``: frames ``(N, T, P, H', W')`` (``out`` itself when given) and ``(N,)`` int64
        increments dropped to saturation per sample.

    Raises:
        ValueError: bad arguments, or an invalid event (message names its row in the columnar arrays and its
            sample).
    """
    sensor = SensorSize.of(sensor_size)
    mode, n_bins = _slicing(n_time_bins=n_time_bins, n_event_bins=n_event_bins)
    sem = _semantics(semantics, mode)
    ov = _overlap(overlap, mode, sem, n_bins)
    out_dtype, maxval = _out_dtype(dtype)
    height, width, xmap, yoff, pstride = _geometry(sensor, out_size)

    for name, arr in (("x", x), ("y", y), ("t", t), ("p", p)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != _FIELDS[name]:
            raise ValueError(
                f"{name} must be a 1-D {_FIELDS[name]} array, got "
                + (f"{arr.ndim}-D {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__)
            )
    n_rows = t.shape[0]
    if not (x.shape[0] == y.shape[0] == p.shape[0] == n_rows):
        raise ValueError(f"x, y, t, p must have equal lengths, got {x.shape[0]}, {y.shape[0]}, {n_rows}, {p.shape[0]}")
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets.dtype.kind not in "iu":
        raise ValueError(f"offsets must be a 1-D integer array of length N+1 >= 1, got {offsets.dtype} {offsets.shape}")
    offsets = offsets.astype(np.int64, copy=False)
    steps = np.diff(offsets)
    if offsets[0] < 0 or offsets[-1] > n_rows or (steps < 0).any():
        bad = int(np.flatnonzero(steps < 0)[0]) + 1 if (steps < 0).any() else (0 if offsets[0] < 0 else offsets.size - 1)
        raise ValueError(
            f"offsets must be non-decreasing within [0, {n_rows}]; offsets[{bad}]={int(offsets[bad])} breaks that"
        )
    n_samples = offsets.shape[0] - 1
    shape = (n_samples, n_bins, sensor.polarities, height, width)
    if out is None:
        out = np.empty(shape, dtype=out_dtype)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == shape
        and out.dtype == out_dtype
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"out must be a writeable C-contiguous {out_dtype} array of shape {shape}, got "
            + (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__)
        )

    lost = np.zeros(n_samples, np.int64)
    bad = np.full(n_samples, -1, np.int64)
    if n_samples:
        with PARALLEL_LOCK:  # one parallel launch at a time (pipeline.runtime); a second caller waits its turn
            _bin_batch_kernel(
                x, y, t, p, offsets, sensor.width, sensor.height, mode, sem, n_bins, ov, out_size is None, xmap,
                yoff, pstride, maxval, out.reshape(n_samples, -1), lost, bad,
            )
    failed = np.flatnonzero(bad >= 0)
    if failed.size:
        i = int(failed[0])
        j = int(bad[i])
        raise ValueError(f"sample {i}, row {j}: {_describe_invalid(j, x, y, t, p, sensor)}")
    return out, lost
