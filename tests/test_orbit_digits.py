"""orbit_digits: the direction physics (cw is ccw played backwards; whole-orbit frames hide the direction,
quarter-orbit frames show it), 20 balanced classes, determinism, and generate -> ingest through the real reader."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig, load_params, load_section
from pipeline.datasets import get_spec
from pipeline.datasets import orbit_digits as O
from pipeline.datasets.digits_dvs import Condition, load_source
from pipeline.generate import main as generate_main
from pipeline.generate import run as generate
from pipeline.ingest import ingest
from pipeline.store import open_event_store
from tests.test_emulator import per_pixel_min_gap

SMALL = dict(n_samples=40, users=2, test_users=1, n_orbits=1.0)  # 4 recordings of 10 digits, one revolution each


def small(**kw) -> O.OrbitDigitsConfig:
    return O.OrbitDigitsConfig(**{**SMALL, **kw})


# ------------------------------------------------------------------------------------------ physics
def test_ccw_is_cw_played_backwards_in_the_scene():
    cfg = small(n_orbits=2.0)
    sched = O.schedule(2, cfg)
    phases = np.array([1.1, 1.1])
    image, dx, dy = O.orbit_steps(sched, phases, np.array([1, -1]), cfg)
    k = sched.windows_us // cfg.dt_us  # the two windows as step ranges; step b is the next digit's first
    cw = slice(k[0, 0], k[0, 1] + 1)
    ccw = slice(k[1, 0], k[1, 1] + 1)
    np.testing.assert_allclose(dx[ccw], dx[cw][::-1], atol=1e-9)
    np.testing.assert_allclose(dy[ccw], dy[cw][::-1], atol=1e-9)
    np.testing.assert_allclose(np.hypot(dx[cw], dy[cw]), cfg.radius_px)
    # clockwise on the screen (y down): the angle grows; a quarter period later the digit is a quarter turn on
    q = cfg.orbit_us // 4 // cfg.dt_us
    a0, a1 = np.arctan2(dy[k[0, 0]], dx[k[0, 0]]), np.arctan2(dy[k[0, 0] + q], dx[k[0, 0] + q])
    assert np.isclose(np.mod(a1 - a0, 2 * np.pi), np.pi / 2)
    assert np.all(image[cw][:-1] == 1) and np.all(image[ccw][:-1] == 2)


def _window_frames(direction: int, T: int, phi: float, cfg: O.OrbitDigitsConfig) -> np.ndarray:
    """Events of one noiseless digit's window binned into T equal time bins: float (T, P, H, W)."""
    img = load_source()[0][:1]
    ev, sched = O.emulate_recording(img, np.array([direction]), np.array([phi]), Condition(0.3, 0.0), (0.2, 0.2),
                                    cfg, None)
    a, b = sched.windows_us[0]
    ev = ev[(ev["t"] >= a) & (ev["t"] < b)]
    k = ((ev["t"] - a) * T // (b - a)).astype(np.int64)
    f = np.zeros((T, 2, cfg.sensor, cfg.sensor))
    np.add.at(f, (k, ev["p"].astype(np.int64), ev["y"], ev["x"]), 1)
    return f


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum() / (a + b).sum())


@pytest.mark.parametrize("phi", [0.3, 4.5])
def test_whole_orbit_frames_hide_the_direction_and_quarter_orbit_frames_show_it(phi):
    cfg = small()  # one revolution per sample: T = 1 is a whole one, T = 4 quarters
    whole = _dist(_window_frames(0, 1, phi, cfg), _window_frames(1, 1, phi, cfg))
    cw, ccw = _window_frames(0, 4, phi, cfg), _window_frames(1, 4, phi, cfg)
    quarter = _dist(cw, ccw)
    assert whole < 0.1 < 0.4 < quarter  # measured: ~0.04 vs ~0.5-0.57
    # the time reversal at the event level: ccw's bins in reverse order, ON <-> OFF, are cw's bins
    assert _dist(cw, ccw[::-1, ::-1]) < 0.15
    # inside one quarter the leading (ON) and trailing (OFF) edges are apart: the motion is visible
    assert _dist(cw[:, 0], cw[:, 1]) > 0.4


# ------------------------------------------------------------------------------------------ classes + files
def test_twenty_classes_balanced_in_every_split():
    labels = O.class_labels(O.OrbitDigitsConfig())
    digits = load_source()[1]
    assert np.array_equal(labels // 2, digits)
    per_class = Counter(labels.tolist())
    assert len(per_class) == 20 and min(per_class.values()) == 87  # digit 8: 174 images, 87 per direction
    plans, labels = O.plan(O.OrbitDigitsConfig())
    for split, n in (("train", 69), ("test", 18)):
        got = Counter(int(labels[s]) for p in plans if p.split == split for s in p.sources)
        assert sorted(got) == list(range(20)) and set(got.values()) == {n}
    assert O.CLASSES[:3] == ("zero_cw", "zero_ccw", "one_cw") and len(O.CLASSES) == 20


def test_recording_obeys_the_model_and_generation_is_deterministic(tmp_path):
    cfg = small()
    rec = next(iter(O.synthesize(cfg)))
    ev = rec.events
    assert np.all(np.diff(ev["t"]) >= 0) and per_pixel_min_gap(ev, cfg.sensor) >= cfg.refractory_us
    for w in rec.windows:
        assert w.end_us - w.start_us == cfg.orbit_us
        sel = ev[(ev["t"] >= w.start_us) & (ev["t"] < w.end_us)]
        assert len(sel) > 1000 and 0.4 < sel["p"].mean() < 0.6
    generate(cfg, tmp_path / "a", workers=1, progress=False)
    generate(cfg, tmp_path / "b", workers=2, progress=False)
    a = {p.name: p.read_bytes() for p in sorted((tmp_path / "a").iterdir())}
    assert a == {p.name: p.read_bytes() for p in sorted((tmp_path / "b").iterdir())}
    assert {"orbit_digits.json", "user02_natural.aedat", "user02_natural_labels.csv"} <= set(a)
    other = next(iter(O.synthesize(small(seed=1)))).events
    assert len(other) != len(ev) or not np.array_equal(other, ev)


def test_generate_cli_and_ingest_through_the_real_reader(tmp_path, capsys):
    three = dict(n_samples=60, users=3, test_users=1)  # train side: users 1, 2; the last one (2) is validation
    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  raw_root: {tmp_path / 'raw'}\norbit_digits:\n" +
                      "".join(f"  {k}: {v}\n" for k, v in three.items()))
    assert generate_main(["orbit_digits", "--params", str(params), "--no-progress", "--workers", "1"]) == 0
    assert "orbit_digits raw files" in capsys.readouterr().out
    assert generate_main(["orbit_digits", "--params", str(params), "--set", "orbit_digits.radius_px=20"]) == 2
    raw, store_path = tmp_path / "raw" / "orbit_digits", tmp_path / "orbit.zarr"
    ingest(get_spec("orbit_digits"), raw, store_path, IngestConfig(chunk_events=4096, shard_events=65536),
           progress=False)
    store = open_event_store(store_path)
    assert store.attrs["dataset"] == "orbit_digits" and store.attrs["classes"] == list(O.CLASSES)
    assert {r["user"] for r in store["val"].attrs["recordings"]} == {2}
    plans, labels = O.plan(O.OrbitDigitsConfig(**three))
    idx = {"train": 0, "val": 0, "test": 0}
    for rec in O.synthesize(O.OrbitDigitsConfig(**three)):
        split = "val" if rec.plan.user == 2 else rec.plan.split
        for w, src in zip(rec.windows, rec.plan.sources):
            got, label = store[split][idx[split]]
            idx[split] += 1
            assert label == w.label == labels[src]
            want = rec.events[(rec.events["t"] >= w.start_us) & (rec.events["t"] < w.end_us)]
            np.testing.assert_array_equal(got["t"], want["t"])
    assert idx == {"train": 20, "val": 20, "test": 20}


# ------------------------------------------------------------------------------------------ config
def test_config_validation_and_params_section():
    for bad in ({"radius_px": 10.0}, {"n_orbits": 0.0}, {"n_orbits": 1.0000001}, {"orbit_us": 200_500},
                {"users": 1}, {"colour": 1}):
        with pytest.raises(ConfigError, match="orbit_digits"):
            load_section("orbit_digits", O.OrbitDigitsConfig, {"orbit_digits": bad})
    assert small(n_orbits=1.25).motion_us == 250_000
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert load_section("orbit_digits", O.OrbitDigitsConfig, params) == O.OrbitDigitsConfig()
    assert O.spec_for(dataclasses.replace(small(), sensor=48)).sensor_size == (48, 48, 2)
    with pytest.raises(FileNotFoundError, match="pipeline.generate orbit_digits"):
        O.SPEC.recordings(Path("/nonexistent/orbit"))
