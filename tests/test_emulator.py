"""The DVS emulator (`pipeline.emulator`): its pixel model against a slow per-microsecond reference, and the
physics on a scene that is not a digit (a moving bar)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import emulator as E


def per_pixel_min_gap(ev: np.ndarray, width: int) -> int:
    """Smallest time between two events of the same pixel (a large number when no pixel fires twice)."""
    pix = ev["y"].astype(np.int64) * width + ev["x"]
    order = np.lexsort((ev["t"], pix))
    same = pix[order][1:] == pix[order][:-1]
    gaps = np.diff(ev["t"][order])[same]
    return int(gaps.min()) if len(gaps) else 1 << 62


def reference_events(L: np.ndarray, dt_us: int, th_on, th_off, refractory_us: int, noise) -> set:
    """The model stepped tick by tick (1 µs), the obvious way. L (n_steps, P); noise: per pixel [(t, p)]."""
    n_steps, n_pix = L.shape
    out = set()
    for i in range(n_pix):
        ref, release = L[0, i], -1
        pending = {}
        for t, p in noise[i]:
            pending.setdefault(t, []).append(p)
        for t in range(1, (n_steps - 1) * dt_us + 1):
            k = -(-t // dt_us)
            t0 = (k - 1) * dt_us
            lt = L[k - 1, i] + (L[k, i] - L[k - 1, i]) / dt_us * (t - t0)
            if t < release:  # held in reset: the reference follows, nothing fires
                ref = lt
                continue
            if t == release:
                ref = lt
            if lt - ref >= th_on[i] or ref - lt >= th_off[i]:
                out.add((i, t, int(lt > ref)))
                ref, release = lt, t + refractory_us
            for p in pending.get(t, []):
                if t >= release:
                    out.add((i, t, int(p)))
                    ref, release = lt, t + refractory_us
    return out


@pytest.mark.parametrize("seed,refractory_us", [(0, 300), (1, 0), (2, 1000), (3, 50)])
def test_pixel_model_matches_microsecond_reference(seed, refractory_us):
    rng = np.random.default_rng(seed)
    n_steps, h, w, dt_us = 30, 2, 3, 200
    L = np.cumsum(rng.normal(0, 0.35, (n_steps, h, w)), axis=0)
    th_on = rng.uniform(0.1, 0.3, (h, w))
    th_off = rng.uniform(0.1, 0.3, (h, w))
    ptr, nt, npol = E.shot_noise(np.random.default_rng(seed + 100), h * w, (n_steps - 1) * dt_us, 1500.0)
    got = E.emulate_log(L, dt_us, th_on, th_off, refractory_us, 1500.0, np.random.default_rng(seed + 100))
    noise = [list(zip(nt[ptr[i]:ptr[i + 1]].tolist(), npol[ptr[i]:ptr[i + 1]].tolist())) for i in range(h * w)]
    want = reference_events(L.reshape(n_steps, -1), dt_us, th_on.ravel(), th_off.ravel(), refractory_us, noise)
    got_set = {(int(y) * w + int(x), int(t), int(p)) for x, y, t, p in got[["x", "y", "t", "p"]].tolist()}
    assert len(got) == len(got_set) == len(want) > 20
    assert got_set == want
    assert np.all(np.diff(got["t"]) >= 0)
    assert per_pixel_min_gap(got, w) >= max(refractory_us, 1)


def test_static_scene_without_noise_emits_nothing():
    L = np.full((500, 8, 8), np.log(0.3))
    L[:, 2:5, 3:6] = 0.0  # a static pattern
    assert len(E.emulate_log(L, 500, 0.2, 0.2, 1000)) == 0


def test_change_spanning_several_thresholds_gives_several_events_in_one_step():
    L = np.zeros((3, 1, 1))
    L[2:] = 1.0  # +1.0 during the second step (1024, 2048]; thresholds 0.25 -> 4 ON events in that step
    ev = E.emulate_log(L, 1024, 0.25, 0.25, refractory_us=0)
    assert np.all(ev["p"] == 1)
    np.testing.assert_array_equal(ev["t"], [1280, 1536, 1792, 2048])
    # a 300 µs refractory period loses the change during each reset: ref = L(1580), next crossing 256 µs later
    ev = E.emulate_log(L, 1024, 0.25, 0.25, refractory_us=300)
    np.testing.assert_array_equal(ev["t"], [1280, 1836])




# ------------------------------------------------------------------------------------------ a scene that is not a digit
W, H, DT_US, STEPS = 24, 8, 500, 80
BG, V_PX_PER_US = 0.25, 16 / (80 * 500)  # a bright bar on a darker background, 16 px in 40 ms
BAR_X, BAR_ROWS = (2.0, 6.0), (2, 6)  # at t = 0 the bar covers x in [2, 6), rows 2..5


def bar_scene() -> E.Scene:
    """The bar as moving images: one canvas (4 samples per pixel), translated right at constant speed."""
    s = 4
    c = (np.arange(W * s) + 0.5) / s
    r = (np.arange(H * s) + 0.5) / s
    inside = ((r >= BAR_ROWS[0]) & (r < BAR_ROWS[1]))[:, None] & ((c >= BAR_X[0]) & (c < BAR_X[1]))[None, :]
    canvas = np.where(inside, 0.0, np.log(BG))[None]
    t = np.arange(STEPS + 1) * DT_US
    return E.Scene(canvas, np.zeros(STEPS + 1, np.int32), V_PX_PER_US * t, np.zeros(STEPS + 1), 4, DT_US)


def bar_frame(t_us: int) -> np.ndarray:
    """The bar as a callable: each pixel's log of its mean intensity (the bar's coverage of the pixel's area)."""
    a, b = BAR_X[0] + V_PX_PER_US * t_us, BAR_X[1] + V_PX_PER_US * t_us
    x = np.arange(W)
    cover = np.clip(np.minimum(x + 1, b) - np.maximum(x, a), 0, 1)
    rows = ((np.arange(H) >= BAR_ROWS[0]) & (np.arange(H) < BAR_ROWS[1])).astype(float)
    return np.log(BG + (1 - BG) * rows[:, None] * cover[None, :])


@pytest.mark.parametrize("how", ["scene", "frames"])
def test_a_moving_bar_gives_on_at_its_leading_edge_and_off_at_its_trailing_edge(how):
    if how == "scene":
        ev = E.emulate_scene(bar_scene(), W, H, 0.2, 0.2, refractory_us=100)
    else:
        ev = E.emulate_log(E.sample(bar_frame, STEPS * DT_US, DT_US), DT_US, 0.2, 0.2, refractory_us=100)
    on, off = ev[ev["p"] == 1], ev[ev["p"] == 0]
    # brightening where the bar arrives, darkening where it leaves: each event's pixel centre is within a pixel
    # of that edge at the event's time (the scene is sampled every 0.4 px of travel)
    lead = BAR_X[1] + V_PX_PER_US * on["t"]
    trail = BAR_X[0] + V_PX_PER_US * off["t"]
    assert np.abs(on["x"] + 0.5 - lead).max() <= 1.0
    assert np.abs(off["x"] + 0.5 - trail).max() <= 1.0
    # only the bar's rows see it; the leading edge sweeps x in (6, 22) and the trailing one (2, 18)
    rows = set(range(*BAR_ROWS))
    assert {(int(x), int(y)) for x, y in on[["x", "y"]].tolist()} == {(x, y) for x in range(6, 22) for y in rows}
    assert {(int(x), int(y)) for x, y in off[["x", "y"]].tolist()} == {(x, y) for x in range(2, 18) for y in rows}
    # a pixel the whole bar passes over gets as many ON as OFF events (the same log contrast, up then down;
    # several per edge, fewer than log(1/BG) / 0.2 = 6.9 as the refractory period loses part of each ramp)
    for x in (8, 12, 16):
        at = ev[(ev["x"] == x) & (ev["y"] == 3)]
        assert 2 <= np.count_nonzero(at["p"] == 1) == np.count_nonzero(at["p"] == 0) <= 6
        assert at["t"][at["p"] == 1].max() < at["t"][at["p"] == 0].min()  # it lights up, then goes dark
