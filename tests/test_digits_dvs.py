"""digits_dvs: its recordings obey the emulator's model (the model itself: tests/test_emulator.py), determinism,
the DVS-Gesture on-disk layout, and the generate -> ingest -> event store round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig, load_params, load_section
from pipeline.datasets import digits_dvs as D
from pipeline.datasets.digits_dvs import Condition, DigitsDVSConfig
from pipeline.generate import main as generate_main
from pipeline.generate import run as generate
from pipeline.ingest import ingest
from pipeline.store import open_event_store
from tests.test_emulator import per_pixel_min_gap

SMALL = dict(n_samples=24, users=4, test_users=1)  # 8 recordings of 3 digits


def small(**kw) -> DigitsDVSConfig:
    return DigitsDVSConfig(**{**SMALL, **kw})


def quiet(**kw) -> DigitsDVSConfig:
    """No shot noise in any condition."""
    return small(conditions={"lab": Condition(0.1, 0.0), "natural": Condition(0.25, 0.0)}, **kw)


# ------------------------------------------------------------------------------------------ recordings
def test_recording_obeys_the_model():
    cfg = small()
    th = D.draw_thresholds(cfg)
    for rec in list(D.synthesize(cfg))[:2]:
        ev = rec.events
        assert np.all(np.diff(ev["t"]) >= 0)
        assert ev["x"].max() < cfg.sensor and ev["y"].max() < cfg.sensor and ev["t"].min() >= 0
        assert per_pixel_min_gap(ev, cfg.sensor) >= cfg.refractory_us
        for w in rec.windows:
            sel = ev[(ev["t"] >= w.start_us) & (ev["t"] < w.end_us)]
            assert len(sel) > 1000
            assert 0.3 < sel["p"].mean() < 0.7  # both polarities, balanced (the digit comes and goes)
        assert th[0].shape == (cfg.sensor, cfg.sensor) and th[0].min() >= cfg.threshold_min


def test_without_noise_events_outside_windows_are_only_the_digit_swaps():
    cfg = quiet()
    rec = next(iter(D.synthesize(cfg)))
    sched = D.schedule(len(rec.windows), cfg)
    t = rec.events["t"]
    inside = np.zeros(len(t), bool)
    for a, b in sched.windows_us:
        inside |= (t >= a) & (t < b)
    flash = np.zeros(len(t), bool)
    for a in sched.appear_us:
        flash |= (t > a) & (t <= a + cfg.dt_us)
    assert inside.sum() > 0 and flash.sum() > 0
    assert np.all(inside | flash)
    assert [(w.start_us, w.end_us) for w in rec.windows] == [tuple(x) for x in sched.windows_us.tolist()]


def test_no_motion_and_no_noise_leaves_every_window_empty():
    cfg = quiet(saccade_px=0.0)
    for rec in list(D.synthesize(cfg))[:2]:
        t = rec.events["t"]
        assert len(t) > 0  # the swaps flash
        for w in rec.windows:
            assert np.count_nonzero((t >= w.start_us) & (t < w.end_us)) == 0


def test_plan_partitions_digits_among_whole_users():
    cfg = DigitsDVSConfig()
    plans = D.plan_recordings(cfg)
    assert len(plans) == cfg.users * len(cfg.conditions)
    sources = np.concatenate([p.sources for p in plans])
    assert len(sources) == len(set(sources.tolist())) == 1797
    test_users = {p.user for p in plans if p.split == "test"}
    assert test_users == set(range(cfg.users - cfg.test_users + 1, cfg.users + 1))
    labels = D.load_source()[1]
    hist = np.bincount(labels[np.concatenate([p.sources for p in plans if p.split == "test"])], minlength=10)
    assert hist.min() >= 30  # class-balanced across users
    sub = D.plan_recordings(small())
    assert sorted(np.bincount(labels[np.concatenate([p.sources for p in sub])], minlength=10).tolist()) \
        == [2] * 6 + [3] * 4
    assert [p.name for p in sub[:3]] == ["user01_lab", "user01_natural", "user02_lab"]


# ------------------------------------------------------------------------------------------ files
def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_generation_is_deterministic_and_seeded(tmp_path):
    cfg = small()
    generate(cfg, tmp_path / "a", workers=1, progress=False)
    generate(cfg, tmp_path / "b", workers=2, progress=False)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b
    assert {"trials_to_train.txt", "trials_to_test.txt", "user01_lab.aedat", "user01_lab_labels.csv",
            "user04_natural.aedat", "digits_dvs.json"} <= set(a)
    assert (tmp_path / "a" / "trials_to_test.txt").read_bytes() == b"user04_lab.aedat\r\nuser04_natural.aedat\r\n"
    other = next(iter(D.synthesize(small(seed=1)))).events
    first = next(iter(D.synthesize(cfg))).events
    assert len(other) != len(first) or not np.array_equal(other, first)


def test_generate_ingest_round_trip(tmp_path):
    cfg = small(seed=3)
    raw, store_path = tmp_path / "raw", tmp_path / "digits.zarr"
    (raw).mkdir()
    (raw / "stale.txt").write_text("replaced atomically")
    counts = generate(cfg, raw, workers=2, progress=False)
    assert not (raw / "stale.txt").exists() and not list(tmp_path.glob("raw.tmp-*"))
    attrs = ingest(D.spec_for(cfg), raw, store_path, IngestConfig(chunk_events=4096, shard_events=65536),
                   progress=False)
    store = open_event_store(store_path)
    assert store.attrs["dataset"] == "digits_dvs" and store.attrs["classes"] == list(D.CLASSES)
    assert store.attrs["sensor_size"] == [32, 32, 2]
    assert store.attrs["validation"]["users"] == [3]  # ceil(0.15 x 3 training users) = 1: the last one
    assert sum(len(store[s]) for s in ("train", "val", "test")) == cfg.n_samples == sum(counts["samples"].values())
    assert attrs["counts"]["events_read"] == counts["events"]
    assert attrs["counts"]["stored"] == counts["events_in_windows"]
    labels = D.load_source()[1]
    idx = {"train": 0, "val": 0, "test": 0}
    for rec in D.synthesize(cfg):
        name = "val" if rec.plan.user == 3 else rec.plan.split  # carved at ingest; the generator knows train/test
        split = store[name]
        for w, src in zip(rec.windows, rec.plan.sources):
            got, label = split[idx[name]]
            idx[name] += 1
            assert label == w.label == labels[src]
            want = rec.events[(rec.events["t"] >= w.start_us) & (rec.events["t"] < w.end_us)]
            for f in "xytp":
                np.testing.assert_array_equal(got[f], want[f])
    assert idx == {"train": 12, "val": 6, "test": 6}
    meta = store["test"].attrs["recordings"][0]
    assert meta == {"name": "user04_lab.aedat", "user": 4, "lighting": "lab"}


def test_generate_cli(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  raw_root: {tmp_path / 'raw'}\ndigits_dvs:\n  n_samples: 24\n  users: 4\n")
    rc = generate_main(["digits_dvs", "--params", str(params), "--set", "digits_dvs.test_users=2",
                        "--no-progress", "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "samples    train 12, test 12" in out and "per sample" in out
    assert (tmp_path / "raw" / "digits_dvs" / "user04_natural.aedat").is_file()
    assert generate_main(["digits_dvs", "--params", str(params), "--set", "digits_dvs.users=1"]) == 2


# ------------------------------------------------------------------------------------------ config + spec
def test_config_loading_and_validation():
    full = {"digits_dvs": dataclasses.asdict(DigitsDVSConfig())}
    cfg = load_section("digits_dvs", DigitsDVSConfig, full, ["digits_dvs.conditions.lab.noise_hz=0", "digits_dvs.seed=4"])
    assert cfg.seed == 4 and cfg.conditions["lab"] == Condition(DigitsDVSConfig().conditions["lab"].background, 0.0)
    assert cfg.conditions["natural"] == DigitsDVSConfig().conditions["natural"]
    bad = [{"digits_dvs": {"colour": 1}}, {"digits_dvs": {"n_samples": 2000}}, {"digits_dvs": {"dt_us": 300}},
           {"digits_dvs": {"conditions": {"Lab Room": {"background": 0.1}}}},
           {"digits_dvs": {"conditions": {"lab": {"background": 1.5}}}}, {"digits_dvs": {"digit_px": 30}},
           {"digits_dvs": {"test_users": 30}}, {"digits_dvs": {"refractory_us": 0.5}}]
    for params in bad:
        with pytest.raises(ConfigError):
            load_section("digits_dvs", DigitsDVSConfig, params)


def test_params_yaml_section_equals_the_defaults():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    if "digits_dvs" not in params:
        pytest.skip("params.yaml has no digits_dvs section yet")
    assert load_section("digits_dvs", DigitsDVSConfig, params) == DigitsDVSConfig()


def test_spec():
    assert D.SPEC.name == "digits_dvs" and len(D.SPEC.classes) == 10 and D.SPEC.sensor_size == (32, 32, 2)
    assert D.spec_for(dataclasses.replace(DigitsDVSConfig(), sensor=48, digit_px=30)).sensor_size == (48, 48, 2)
    with pytest.raises(FileNotFoundError, match="pipeline.generate digits_dvs"):
        D.SPEC.recordings(Path("/nonexistent/digits"))
