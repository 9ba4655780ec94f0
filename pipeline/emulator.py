"""A DVS (dynamic vision sensor) camera emulator: a scene's log intensity over time -> polarity events.

Pure and scene-agnostic: it knows nothing of digits, files or config files. The inputs are a scene and the
sensor's pixel parameters; the output is a sorted ``EVENT_DTYPE`` array (`pipeline.events`). `pipeline.datasets.
digits_dvs` builds its scenes (digits on saccades) on top of it; any other scene works the same way.

Two ways to describe a scene (positions in sensor pixels, x right, y down, pixel ``(x, y)``'s centre at
``(x + 0.5, y + 0.5)``; time in µs from t = 0):
  * frames -- `emulate_log`: ``log_intensity`` float (n_steps, H, W), pixel ``(x, y)``'s log intensity at
    ``t = k * dt_us`` is ``log_intensity[k, y, x]``. `sample` builds these frames from a callable ``f(t_us)``.
  * moving images -- `emulate_scene` on a `Scene`: ``K`` log-intensity canvases sampled ``oversample`` times per
    sensor pixel; at step ``k`` the sensor sees canvas ``canvas[k]`` translated by ``(dx[k], dy[k])`` pixels. A
    pixel sees the canvas bilinearly interpolated at its centre; beyond the canvas it sees the nearest edge
    sample. A moving object then needs one canvas, not one frame per step.

Pixel model (every pixel independent; its log intensity ``L(t)`` is linear between the scene samples):
  * The pixel keeps a reference ``ref`` (initially ``L(0)``). It emits ON (p = 1) when ``L(t) - ref >= theta_on``
    and OFF (p = 0) when ``ref - L(t) >= theta_off``. The timestamp is the first whole microsecond at which the
    interpolated ``L`` reaches the threshold (events fall anywhere inside a step, not on the step grid); a
    change spanning several thresholds inside one step gives several events, each at its own crossing time,
    whenever the refractory period allows it. After an event ``ref`` is set to ``L`` at the event's time.
  * Refractory period: after an event at ``t_e`` the pixel is held in reset until ``t_e + refractory_us``: no
    event (signal or noise) can occur in ``[t_e, t_e + refractory_us)`` and the reference follows the log
    intensity, ending at ``ref = L(t_e + refractory_us)`` (changes during the reset are lost, as on the chip).
  * Shot noise: a Poisson process of ``noise_hz`` events per second per pixel, uniform integer timestamps in
    ``[1, duration_us]``, polarity ON/OFF with probability 1/2, drawn from the caller's ``rng``. A noise event
    is a spurious reset: it obeys and restarts the refractory period (noise falling inside one is dropped) and
    sets ``ref`` like any event.
  * A static scene without noise therefore emits nothing; no pixel ever fires twice within ``refractory_us``.

Parameters (units):
  * ``dt_us`` (int, µs): the scene's sampling step, >= 1; ``duration_us = (n_steps - 1) * dt_us``.
  * ``theta_on``, ``theta_off`` (float, natural-log intensity units, > 0): contrast thresholds, a scalar or
    one per pixel ``(H, W)`` (mismatch: `draw_thresholds`).
  * ``refractory_us`` (int, µs, >= 0): the reset hold after every event.
  * ``noise_hz`` (float, events per second per pixel, >= 0) and ``rng`` (a ``numpy.random.Generator``, needed
    when ``noise_hz > 0``): the shot noise.
  * ``canvases`` (float64 (K, Hc, Wc), log intensity), ``oversample`` (canvas samples per sensor pixel),
    ``canvas`` (int (n_steps,), an index into ``canvases``), ``dx``, ``dy`` (float (n_steps,), sensor pixels):
    a `Scene`, with its ``dt_us``.

Kernels (`_pixel_events`, `_emulate_scene`, `_emulate_log`) are Numba, pure array -> array, and release the GIL
(callers may run scenes on threads); the result is deterministic given the inputs and the ``rng``'s state.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numba as nb
import numpy as np

from pipeline.events import make_events

__all__ = ["Scene", "draw_thresholds", "shot_noise", "sample", "emulate_log", "emulate_scene"]


class Scene(NamedTuple):
    """Moving images (see the module docstring): step ``k`` (time ``k * dt_us``) shows ``canvases[canvas[k]]``
    translated by ``(dx[k], dy[k])`` sensor pixels."""

    canvases: np.ndarray  # float64 (K, Hc, Wc): log intensity, oversample samples per sensor pixel
    canvas: np.ndarray  # int32 (n_steps,): index into canvases per step
    dx: np.ndarray  # float64 (n_steps,): translation right, sensor pixels
    dy: np.ndarray  # float64 (n_steps,): translation down, sensor pixels
    oversample: float  # canvas samples per sensor pixel
    dt_us: int  # sampling step, µs


def draw_thresholds(rng: np.random.Generator, shape: tuple[int, int], mean: float, std: float,
                    minimum: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (ON, OFF) contrast thresholds, float64 ``shape`` each: ``N(mean, std)`` clipped below at
    ``minimum`` (log-intensity units), ON drawn first, then OFF."""
    on = rng.normal(mean, std, shape)
    off = rng.normal(mean, std, shape)
    return np.maximum(on, minimum), np.maximum(off, minimum)


def shot_noise(rng: np.random.Generator, n_pixels: int, duration_us: int, rate_hz: float):
    """Poisson candidate noise per pixel: CSR (ptr int64 (n_pixels + 1,), t int64 µs sorted per pixel in
    [1, duration_us], p uint8)."""
    counts = rng.poisson(rate_hz * duration_us * 1e-6, n_pixels)
    total = int(counts.sum())
    pix = np.repeat(np.arange(n_pixels), counts)
    t = rng.integers(1, duration_us + 1, total, dtype=np.int64)
    p = rng.integers(0, 2, total).astype(np.uint8)
    order = np.lexsort((t, pix))
    ptr = np.zeros(n_pixels + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, np.ascontiguousarray(t[order]), np.ascontiguousarray(p[order])


def sample(f: Callable[[int], np.ndarray], duration_us: int, dt_us: int) -> np.ndarray:
    """Frames for `emulate_log` from a scene given as a callable: ``f(t_us)`` -> log intensity (H, W) at
    ``t_us = 0, dt_us, ..., duration_us``. Returns float64 (duration_us // dt_us + 1, H, W)."""
    if dt_us < 1 or duration_us < 0 or duration_us % dt_us:
        raise ValueError(f"duration_us ({duration_us}) must be a non-negative multiple of dt_us ({dt_us} >= 1)")
    return np.stack([np.asarray(f(k * dt_us), np.float64) for k in range(duration_us // dt_us + 1)])


# ------------------------------------------------------------------------------------------ kernels
@nb.njit(cache=True, nogil=True)
def _pixel_events(L, dt_us, theta_on, theta_off, refractory_us, noise_t, noise_p, out_t, out_p):
    """One pixel's events from its log intensity ``L`` (n_steps,) sampled every ``dt_us`` µs (linear between
    samples), plus its sorted candidate noise times/polarities. Writes times (int64 µs) and polarities into
    ``out_t``/``out_p``; returns the count, or -1 when the buffers are too small."""
    n = 0
    ref = L[0]
    release = np.int64(-1)  # the pixel is held in reset while t < release
    ni = 0
    nn = noise_t.shape[0]
    cap = out_t.shape[0]
    for k in range(1, L.shape[0]):
        t0 = np.int64(k - 1) * dt_us
        t1 = t0 + dt_us
        L0 = L[k - 1]
        L1 = L[k]
        slope = (L1 - L0) / dt_us
        ts = t0
        while True:
            if release >= t1:  # held through the whole rest of the step: the reference follows
                ref = L1
                break
            if release > ts:  # the hold ends inside this step
                ts = release
                ref = L0 + slope * (ts - t0)
            while ni < nn and noise_t[ni] < ts:  # noise candidates that fell inside a hold are dropped
                ni += 1
            te = np.int64(-1)
            pol = 0
            if L1 - ref >= theta_on:
                tc = t0 + (ref + theta_on - L0) / slope
                te = np.int64(np.ceil(tc))
                pol = 1
            elif ref - L1 >= theta_off:
                tc = t0 + (ref - theta_off - L0) / slope
                te = np.int64(np.ceil(tc))
                pol = 0
            if te >= 0:
                te = min(max(te, ts + 1), t1)  # guard float rounding: a crossing lies in (ts, t1]
            if ni < nn and noise_t[ni] <= t1 and (te < 0 or noise_t[ni] < te):
                te = noise_t[ni]
                pol = noise_p[ni]
                ni += 1
            elif te < 0:
                break
            if n == cap:
                return -1
            out_t[n] = te
            out_p[n] = pol
            n += 1
            ts = te
            ref = L0 + slope * (te - t0)
            release = te + refractory_us
    return n


@nb.njit(cache=True, nogil=True)
def _interp_axis(f, size):
    """Left sample index and weight of the right one for bilinear interpolation at ``f``, clamped to the edge."""
    if f <= 0.0:
        return 0, 0.0
    if f >= size - 1:
        return size - 2, 1.0
    i = int(f)
    return i, f - i


@nb.njit(cache=True, nogil=True)
def _render_pixel(canvases, image, dx, dy, oversample, x, y, out):
    """Bilinear sample of the log canvases at pixel (x, y)'s centre for every scene step; clamps at the edge."""
    hc = canvases.shape[1]
    wc = canvases.shape[2]
    for k in range(image.shape[0]):
        fx = (x + 0.5 - dx[k]) * oversample - 0.5
        fy = (y + 0.5 - dy[k]) * oversample - 0.5
        ix, ax = _interp_axis(fx, wc)
        iy, ay = _interp_axis(fy, hc)
        c = canvases[image[k]]
        top = (1.0 - ax) * c[iy, ix] + ax * c[iy, ix + 1]
        bot = (1.0 - ax) * c[iy + 1, ix] + ax * c[iy + 1, ix + 1]
        out[k] = (1.0 - ay) * top + ay * bot


@nb.njit(cache=True, nogil=True)
def _run_pixel(L, dt_us, th_on, th_off, refractory_us, nt, npol):
    """Allocate a buffer that provably fits (each signal event needs a log change >= its threshold since the
    last release) and run `_pixel_events`."""
    tv = 0.0
    for k in range(1, L.shape[0]):
        tv += abs(L[k] - L[k - 1])
    bound = int(tv / min(th_on, th_off)) + nt.shape[0] + 4
    buf_t = np.empty(bound, np.int64)
    buf_p = np.empty(bound, np.uint8)
    m = _pixel_events(L, dt_us, th_on, th_off, refractory_us, nt, npol, buf_t, buf_p)
    if m < 0:
        raise RuntimeError("dvs emulator: event buffer bound violated")
    return buf_t[:m], buf_p[:m]


@nb.njit(cache=True, nogil=True)
def _append(out_t, out_p, out_pix, n, bt, bp, pix):
    """Append one pixel's events to growable outputs (capacity doubles); returns the (possibly new) arrays."""
    m = bt.shape[0]
    if n + m > out_t.shape[0]:
        cap = out_t.shape[0]
        while n + m > cap:
            cap *= 2
        grown_t, grown_p, grown_pix = np.empty(cap, np.int64), np.empty(cap, np.uint8), np.empty(cap, np.int32)
        grown_t[:n] = out_t[:n]
        grown_p[:n] = out_p[:n]
        grown_pix[:n] = out_pix[:n]
        out_t, out_p, out_pix = grown_t, grown_p, grown_pix
    out_t[n:n + m] = bt
    out_p[n:n + m] = bp
    out_pix[n:n + m] = pix
    return out_t, out_p, out_pix


@nb.njit(cache=True, nogil=True)
def _emulate_scene(canvases, image, dx, dy, oversample, width, height, dt_us, theta_on, theta_off,
                   refractory_us, noise_ptr, noise_t, noise_p):
    """All pixels of a rendered scene -> events (t int64, p uint8, pixel index int32 = y * width + x), pixel-major.

    canvases: log intensity (K, Hc, Wc); image int32 (n_steps,) canvas per step; dx, dy (n_steps,) offsets;
    theta_on/off (height, width); noise as CSR per pixel (ptr (width*height + 1,), t sorted, p)."""
    L = np.empty(image.shape[0], np.float64)
    out_t, out_p, out_pix = np.empty(1 << 16, np.int64), np.empty(1 << 16, np.uint8), np.empty(1 << 16, np.int32)
    n = 0
    for y in range(height):
        for x in range(width):
            pix = y * width + x
            _render_pixel(canvases, image, dx, dy, oversample, x, y, L)
            a, b = noise_ptr[pix], noise_ptr[pix + 1]
            bt, bp = _run_pixel(L, dt_us, theta_on[y, x], theta_off[y, x], refractory_us, noise_t[a:b], noise_p[a:b])
            out_t, out_p, out_pix = _append(out_t, out_p, out_pix, n, bt, bp, pix)
            n += bt.shape[0]
    return out_t[:n], out_p[:n], out_pix[:n]


@nb.njit(cache=True, nogil=True)
def _emulate_log(L, dt_us, theta_on, theta_off, refractory_us, noise_ptr, noise_t, noise_p):
    """Like `_emulate_scene` for given log intensities ``L`` (n_pixels, n_steps) and thresholds (n_pixels,)."""
    out_t, out_p, out_pix = np.empty(1 << 10, np.int64), np.empty(1 << 10, np.uint8), np.empty(1 << 10, np.int32)
    n = 0
    for pix in range(L.shape[0]):
        a, b = noise_ptr[pix], noise_ptr[pix + 1]
        bt, bp = _run_pixel(L[pix], dt_us, theta_on[pix], theta_off[pix], refractory_us, noise_t[a:b], noise_p[a:b])
        out_t, out_p, out_pix = _append(out_t, out_p, out_pix, n, bt, bp, pix)
        n += bt.shape[0]
    return out_t[:n], out_p[:n], out_pix[:n]


# ------------------------------------------------------------------------------------------ wrappers
def _to_events(t: np.ndarray, p: np.ndarray, pix: np.ndarray, width: int) -> np.ndarray:
    order = np.argsort(t, kind="stable")  # ties keep pixel order: deterministic
    t, p, pix = t[order], p[order], pix[order]
    return make_events(pix % width, pix // width, t, p)


def _pixel_params(theta_on, theta_off, refractory_us: int, dt_us: int, noise_hz: float, rng, h: int, w: int):
    """Validated thresholds float64 (H, W) each, and the rng to draw noise from."""
    th_on = np.array(np.broadcast_to(np.asarray(theta_on, np.float64), (h, w)), order="C")  # a writable copy
    th_off = np.array(np.broadcast_to(np.asarray(theta_off, np.float64), (h, w)), order="C")
    if np.any(th_on <= 0) or np.any(th_off <= 0):
        raise ValueError("thresholds must be positive")
    if int(dt_us) < 1 or int(refractory_us) < 0:
        raise ValueError(f"dt_us ({dt_us}) must be >= 1 and refractory_us ({refractory_us}) >= 0")
    if noise_hz < 0 or (noise_hz > 0 and rng is None):
        raise ValueError(f"noise_hz = {noise_hz!r} must be >= 0, and > 0 needs an rng")
    return th_on, th_off, rng if rng is not None else np.random.default_rng(0)


def emulate_log(log_intensity: np.ndarray, dt_us: int, theta_on, theta_off, refractory_us: int,
                noise_hz: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The pixel model on frames: ``log_intensity`` float (n_steps, H, W), sampled every ``dt_us`` µs from t = 0;
    thresholds scalars or (H, W). Returns sorted ``EVENT_DTYPE`` events (t in µs)."""
    L = np.asarray(log_intensity, np.float64)
    if L.ndim != 3 or L.shape[0] < 1:
        raise ValueError(f"log_intensity must be (n_steps, H, W), got shape {L.shape}")
    n_steps, h, w = L.shape
    th_on, th_off, rng = _pixel_params(theta_on, theta_off, refractory_us, dt_us, noise_hz, rng, h, w)
    ptr, nt, npol = shot_noise(rng, h * w, (n_steps - 1) * dt_us, noise_hz)
    pix_major = np.ascontiguousarray(L.reshape(n_steps, h * w).T)
    t, p, pix = _emulate_log(pix_major, np.int64(dt_us), th_on.ravel(), th_off.ravel(), np.int64(refractory_us),
                             ptr, nt, npol)
    return _to_events(t, p, pix, w)


def emulate_scene(scene: Scene, width: int, height: int, theta_on, theta_off, refractory_us: int,
                  noise_hz: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The pixel model on moving images (a `Scene`) seen by a ``width`` x ``height`` sensor; thresholds scalars
    or (height, width). Returns sorted ``EVENT_DTYPE`` events (t in µs, over ``(n_steps - 1) * dt_us``)."""
    canvases = np.ascontiguousarray(scene.canvases, np.float64)
    canvas = np.ascontiguousarray(scene.canvas, np.int32)
    dx = np.ascontiguousarray(scene.dx, np.float64)
    dy = np.ascontiguousarray(scene.dy, np.float64)
    n_steps = canvas.shape[0]
    if canvases.ndim != 3 or min(canvases.shape[1:]) < 2 or len(canvases) == 0:
        raise ValueError(f"canvases must be (K >= 1, Hc >= 2, Wc >= 2), got shape {canvases.shape}")
    if canvas.ndim != 1 or n_steps < 1 or dx.shape != (n_steps,) or dy.shape != (n_steps,):
        raise ValueError(f"canvas, dx, dy must be (n_steps >= 1,) each, got {canvas.shape}, {dx.shape}, {dy.shape}")
    if canvas.min() < 0 or canvas.max() >= len(canvases):
        raise ValueError(f"canvas indices must be in 0..{len(canvases) - 1}")
    if not scene.oversample > 0 or width < 1 or height < 1:
        raise ValueError(f"oversample ({scene.oversample}), width ({width}), height ({height}) must be positive")
    th_on, th_off, rng = _pixel_params(theta_on, theta_off, refractory_us, scene.dt_us, noise_hz, rng, height, width)
    ptr, nt, npol = shot_noise(rng, width * height, (n_steps - 1) * scene.dt_us, noise_hz)
    t, p, pix = _emulate_scene(canvases, canvas, dx, dy, np.float64(scene.oversample), width, height,
                               np.int64(scene.dt_us), th_on, th_off, np.int64(refractory_us), ptr, nt, npol)
    return _to_events(t, p, pix, width)
