"""orbit_digits: the embedded temporal benchmark -- real digits circling clockwise or counter-clockwise.

digits_dvs is the static-shape control: its class is a digit's shape, which every time bin already holds.
Here the class is digit x direction (20 classes): scikit-learn's real 8x8 digits (the same source, partition,
rendering, sensor and DVS emulator as `pipeline.datasets.digits_dvs`) move along a circular orbit, clockwise or
counter-clockwise. Counter-clockwise is clockwise played backwards, so the direction is invisible in a frame that
integrates whole orbits and explicit in frames of a fraction of one: a network that sees more, finer time bins
knows more -- the premise of temporal self-distillation. Flips must stay off in training (a mirror image swaps the
directions).

Raw layout (``python -m pipeline.generate orbit_digits`` into ``data_cache/raw/orbit_digits/``): exactly
digits_dvs's (DVS128-Gesture's) -- ``trials_to_train.txt``, ``trials_to_test.txt``, ``userNN_<condition>.aedat``
(AEDAT 3.1), ``userNN_<condition>_labels.csv`` (``class,startTime_usec,endTime_usec``, class 1-based in the order
of `CLASSES`: 1 = zero_cw, 2 = zero_ccw, 3 = one_cw, ...) and ``orbit_digits.json`` (config and counts).

Classes. Label ``2 * digit + direction`` with direction 0 = clockwise (``cw``), 1 = counter-clockwise (``ccw``).
Each source digit is used once: within each digit class, a ``default_rng([seed, 3])`` permutation alternates the
directions (so every digit class splits evenly, +-1), and the partition of digits_dvs (class-interleaved order
over the 20 classes, the first ``n_samples``, ``users * len(conditions)`` consecutive recordings, the last
``test_users`` users held out) keeps the 20 classes balanced in every split.

Physics (positions in sensor pixels, x right, y down; time in µs; angles in radians).
  * The digit (``digit_px`` square, rendered as in digits_dvs: ink 1.0 on the condition's ``background``, log
    intensity, ``oversample`` canvas samples per pixel) is centred on the sensor when its offset is (0, 0); its
    top-left corner is at ``(sensor - digit_px) / 2``. During its motion its offset is
        ``(dx, dy)(tau) = R * (cos theta(tau), sin theta(tau))``,   ``theta(tau) = phi + s * 2 pi * tau / P``
    with ``R = radius_px`` (px), ``P = orbit_us`` (µs per revolution), ``tau`` the time into the motion (µs),
    ``s = +1`` clockwise (on the screen, y pointing down), ``s = -1`` counter-clockwise, and ``phi`` the start
    phase, uniform on [0, 2 pi) per sample (``default_rng([seed, 3, recording])``), so neither the position at any
    instant nor its distribution over a sample tells the direction. Speed ``2 pi R / P`` px/µs (the defaults,
    R = 4 px and P = 200 ms: 126 px/s; one ``dt_us`` = 1 ms step moves the digit 0.13 px).
  * Timeline: digits_dvs's `schedule` with ``motion_us = n_orbits * P``: blank for ``gap_us``; digit ``i`` appears
    at rest at its start position, rests ``gap_us`` (its flash settles), then circles ``n_orbits`` revolutions;
    its csv window is the motion ``[appear + gap_us, next appearance)``; the next digit replaces it.
  * Time reversal. Over a whole number of revolutions (``n_orbits * P``), the counter-clockwise path with phase phi
    is the clockwise one with the same phi run backwards: ``theta_ccw(tau) = theta_cw(D - tau) mod 2 pi``,
    ``D = n_orbits * P`` (tested). Reversing time turns a brightening into a darkening, so it swaps the ON and OFF
    events; but over one whole revolution every pixel returns to its start intensity and emits as many ON as OFF
    events (to within one per threshold), so a frame binned over whole revolutions is the same for both
    directions (tested: 4 % apart). A frame of a quarter revolution holds the digit's leading edge (ON for bright
    ink) on one side and its trailing edge (OFF) on the other, on one arc of the circle: the direction is explicit
    (tested: 50-57 % apart).
  * What a time bin shows. The sample's ``T`` time bins cover ``f = n_orbits / T`` revolutions each. A bin's
    net ON - OFF map is the digit at the bin's end minus the digit at its start, displaced by the chord
    ``2 R sin(pi f)`` and rotated by ``+-2 pi f``: the sign says which end is which, the rotation the direction.
    At ``f = 1`` the chord is 0 (direction hidden: at best half the digit accuracy); at ``f = 1/2`` both
    directions join the same two points (only the covered arc tells them apart); near 1/4 and 3/4 the chord is
    ``sqrt(2) R``. Calibrated (README, baseline only, validation): the default ``n_orbits = 1.625`` with
    ``T_s = 2`` gives bins of 13/16 revolution (chord 0.38 R = 1.5 px: the direction is faint), ``T_t = 4``
    bins of 13/32 revolution (chord 1.92 R = 7.7 px: explicit).
  * Camera: `pipeline.emulator` with digits_dvs's sensor choices (one sensor per dataset: thresholds
    ``N(threshold_mean, threshold_std)`` clipped at ``threshold_min`` from ``default_rng([seed, 1])``; shot noise
    at the condition's ``noise_hz`` from ``default_rng([seed, 2, recording])``; ``refractory_us``).

Parameters (`OrbitDigitsConfig`, the ``orbit_digits:`` section of params.yaml): seed, n_samples, users,
test_users, conditions {name: {background, noise_hz}}, sensor, digit_px, oversample, radius_px, orbit_us,
n_orbits, gap_us, dt_us, threshold_mean, threshold_std, threshold_min, refractory_us.

Everything is deterministic by seed and independent of the number of worker threads.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from pipeline import emulator
from pipeline.config import ConfigError
from pipeline.datasets.base import Window
from pipeline.datasets.digits_dvs import (Condition, DigitsDVS, RecordingPlan, Schedule, SynthRecording,
                                          default_conditions, check_common, check_images8, draw_thresholds, load_source,
                                          plan_recordings, render_digits, run_plans, schedule)
from pipeline.datasets.digits_dvs import CLASSES as DIGITS
from pipeline.events import SensorSize

__all__ = ["SPEC", "CLASSES", "DIRECTIONS", "GENERATOR_VERSION", "OrbitDigitsConfig", "OrbitDigits", "spec_for",
           "class_labels", "plan", "draw_phases", "orbit_steps", "emulate_recording", "synthesize"]

DIRECTIONS = ("cw", "ccw")  # s = +1, -1 in theta(tau) = phi + s * 2 pi tau / P
CLASSES = tuple(f"{d}_{r}" for d in DIGITS for r in DIRECTIONS)
GENERATOR_VERSION = "orbit-digits-emulator/1"


@dataclasses.dataclass(frozen=True)
class OrbitDigitsConfig:
    """The ``orbit_digits:`` section of params.yaml (see the module docstring for the model and units)."""

    seed: int = 0
    n_samples: int = 1740  # digits used: 87 per class (digit 8 has 174 images: every class complete)
    users: int = 29  # recordings per user = len(conditions); 30 digits per recording
    test_users: int = 6  # the last test_users users are the test split (360 samples)
    conditions: dict[str, Condition] = dataclasses.field(default_factory=default_conditions)
    sensor: int = 32  # square sensor, pixels per side
    digit_px: int = 14  # digit size on the sensor, pixels
    oversample: int = 4  # canvas samples per sensor pixel
    radius_px: float = 4.0  # orbit radius R, pixels
    orbit_us: int = 200_000  # one revolution P, µs
    n_orbits: float = 1.625  # revolutions per sample (the window); n_orbits * orbit_us is a multiple of dt_us
    gap_us: int = 20_000  # rest after each digit appears (and blank lead/tail)
    dt_us: int = 1000  # scene sampling step
    threshold_mean: float = 0.2  # log-intensity contrast threshold
    threshold_std: float = 0.03  # per-pixel mismatch
    threshold_min: float = 0.05
    refractory_us: int = 1000

    def __post_init__(self) -> None:
        if not (self.radius_px >= 0 and self.n_orbits > 0):
            raise ConfigError(f"orbit_digits: radius_px ({self.radius_px}) must be >= 0 and n_orbits "
                              f"({self.n_orbits}) > 0")
        motion = self.n_orbits * self.orbit_us
        if motion != round(motion):
            raise ConfigError(f"orbit_digits: n_orbits * orbit_us = {motion} µs must be a whole number of µs")
        check_common(self, "orbit_digits", 2 * self.radius_px,
                     {"orbit_us": self.orbit_us, "n_orbits * orbit_us": self.motion_us})

    @property
    def sensor_size(self) -> SensorSize:
        return SensorSize(self.sensor, self.sensor, 2)

    @property
    def motion_us(self) -> int:
        """A sample's window: ``n_orbits`` revolutions, µs."""
        return int(round(self.n_orbits * self.orbit_us))


class OrbitDigits(DigitsDVS):
    """Reads orbit_digits as digits_dvs is read (DVS-Gesture's reader); 20 classes, `CLASSES`."""

    name = "orbit_digits"
    classes = CLASSES


def spec_for(cfg: OrbitDigitsConfig) -> OrbitDigits:
    """The spec matching a config (its sensor size); `SPEC` is the one for the default config."""
    return OrbitDigits(cfg.sensor_size)


SPEC = OrbitDigits()


# ------------------------------------------------------------------------------------------ plan
def class_labels(cfg: OrbitDigitsConfig, digits: np.ndarray | None = None) -> np.ndarray:
    """The 20-class label int64 (n_source,) of every source digit: ``2 * digit + direction``, the directions
    alternating within each digit class in a ``default_rng([seed, 3])`` permutation."""
    digits = load_source()[1] if digits is None else np.asarray(digits, np.int64)
    perm = np.random.default_rng([cfg.seed, 3]).permutation(len(digits))
    direction = np.empty(len(digits), np.int64)
    for c in np.unique(digits):
        members = perm[digits[perm] == c]
        direction[members] = np.arange(len(members)) % 2
    return 2 * digits + direction


def plan(cfg: OrbitDigitsConfig) -> tuple[list[RecordingPlan], np.ndarray]:
    """The recordings (digits_dvs's partition over the 20 classes) and the 20-class label of every source digit."""
    labels = class_labels(cfg)
    return plan_recordings(cfg, labels), labels


def draw_phases(cfg: OrbitDigitsConfig, rec: RecordingPlan) -> np.ndarray:
    """Start phases phi float64 (n,) in [0, 2 pi), one per presented digit of recording ``rec``."""
    return np.random.default_rng([cfg.seed, 3, rec.index]).uniform(0.0, 2.0 * np.pi, len(rec.sources))


# ------------------------------------------------------------------------------------------ scene
def orbit_steps(sched: Schedule, phases: np.ndarray, signs: np.ndarray,
                cfg: OrbitDigitsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scene sample ``k`` (time ``k * dt_us``): canvas index int32 (0 = blank, i + 1 = digit i) and offsets
    float64 (dx, dy) in pixels: ``R (cos theta, sin theta)``, ``theta = phi_i + s_i 2 pi tau / P`` (``tau`` the
    time into digit i's motion, clipped to [0, motion_us]: at rest before and after). ``signs``: +1 cw, -1 ccw."""
    n = len(sched.appear_us) - 1
    t = np.arange(sched.duration_us // cfg.dt_us + 1, dtype=np.int64) * cfg.dt_us
    seg = np.searchsorted(sched.appear_us, t, side="left")  # number of appearances strictly before t
    image = np.where((seg >= 1) & (seg <= n), seg, 0).astype(np.int32)
    i = np.clip(seg - 1, 0, n - 1)
    tau = np.clip(t - (sched.appear_us[i] + cfg.gap_us), 0, cfg.motion_us).astype(np.float64)
    theta = np.asarray(phases, np.float64)[i] + np.asarray(signs, np.float64)[i] * (2.0 * np.pi / cfg.orbit_us) * tau
    dx, dy = cfg.radius_px * np.cos(theta), cfg.radius_px * np.sin(theta)
    dx[image == 0] = 0.0
    dy[image == 0] = 0.0
    return image, dx, dy


def emulate_recording(images8: np.ndarray, directions: np.ndarray, phases: np.ndarray, condition: Condition,
                      thresholds: tuple[np.ndarray, np.ndarray], cfg: OrbitDigitsConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, Schedule]:
    """One recording presenting ``images8`` (n, 8, 8) in [0, 1] in order, digit i circling in ``directions[i]``
    (0 cw, 1 ccw) from phase ``phases[i]``. Returns (sorted events, schedule)."""
    images8 = check_images8(images8)
    directions = np.asarray(directions)
    if directions.shape != (len(images8),) or np.shape(phases) != (len(images8),) or not np.isin(directions, (0, 1)).all():
        raise ValueError(f"directions (in {{0, 1}}) and phases must be ({len(images8)},) each")
    sched = schedule(len(images8), cfg)
    image, dx, dy = orbit_steps(sched, phases, 1 - 2 * directions, cfg)
    origin = (cfg.sensor - cfg.digit_px) / 2.0
    canvases = render_digits(images8, condition.background, cfg.sensor, cfg.digit_px, cfg.oversample, origin)
    scene = emulator.Scene(canvases, image, dx, dy, cfg.oversample, cfg.dt_us)
    events = emulator.emulate_scene(scene, cfg.sensor, cfg.sensor, thresholds[0], thresholds[1], cfg.refractory_us,
                                    condition.noise_hz, rng)
    return events, sched


def _synth_one(rec: RecordingPlan, cfg: OrbitDigitsConfig, labels: np.ndarray, thresholds) -> SynthRecording:
    images = load_source()[0]
    src = np.asarray(rec.sources)
    label = labels[src]
    rng = np.random.default_rng([cfg.seed, 2, rec.index])
    events, sched = emulate_recording(images[src], label % 2, draw_phases(cfg, rec), cfg.conditions[rec.condition],
                                      thresholds, cfg, rng)
    windows = [Window(int(c), int(a), int(b), row=r + 2) for r, (c, (a, b)) in enumerate(zip(label, sched.windows_us))]
    return SynthRecording(rec, events, windows)


def synthesize(cfg: OrbitDigitsConfig, workers: int = 1) -> Iterator[SynthRecording]:
    """Every recording of the dataset, in plan order, on ``workers`` threads (the result does not depend on it)."""
    plans, labels = plan(cfg)
    thresholds = draw_thresholds(cfg)  # digits_dvs's: the same seed stream and threshold model
    return run_plans(plans, lambda rec: _synth_one(rec, cfg, labels, thresholds), workers)
