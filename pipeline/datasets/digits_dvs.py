"""digits_dvs: the embedded dataset -- scikit-learn's 1797 real handwritten digits seen by an emulated DVS.

Nothing is downloaded: the source images are ``sklearn.datasets.load_digits()`` (1797 real 8x8 scans of
handwritten digits, 10 classes, bundled with scikit-learn). A pure, seeded DVS emulator moves each digit along
N-MNIST-like saccades in front of a small sensor and writes the events in DVS128-Gesture's exact on-disk format,
so the real AEDAT 3.1 reader, label-csv parser and `pipeline.ingest` run on it unchanged.

Raw layout (written by ``python -m pipeline.generate digits_dvs`` into ``data_cache/raw/digits_dvs/``)::

    data_cache/raw/digits_dvs/
        trials_to_train.txt                 one recording file name per line (users 1 .. users - test_users)
        trials_to_test.txt                  (the last ``test_users`` users: whole users are held out)
                                            (validation: the last ceil(ingest.val.digits_dvs x training users)
                                            training users, carved at ingest; the raw files do not change)
        user01_lab.aedat                    AEDAT 3.1 polarity events, see pipeline.io.aedat3
        user01_lab_labels.csv               class,startTime_usec,endTime_usec   (class is 1-based: 1 = "zero")
        user01_natural.aedat
        user01_natural_labels.csv
        ...
        digits_dvs.json                     the generator's config and counts (provenance; not read by ingest)

Partition. A ``default_rng([seed, 0])`` permutation of the 1797 digits is reordered class-interleaved (the
first digit of every class, then the second of every class, ...), the first ``n_samples`` are kept (a class-
balanced subset), and they are cut into ``users * len(conditions)`` consecutive chunks: user ``u`` records one
recording per condition, in the order the conditions are listed. Each recording presents its digits in a
seeded random order; the last ``test_users`` users form the test split.

Scene (per recording; positions in sensor pixels, x right, y down, pixel centres at ``i + 0.5``).
  * A digit (8x8, values 0..16 scaled to ``d`` in [0, 1]) is upsampled by cubic B-spline interpolation to
    ``digit_px`` x ``digit_px`` (clipped to [0, 1]) on a canvas of ``oversample`` samples per sensor pixel.
    Intensity is ``I = background + (1 - background) * d`` (bright ink on a darker monitor; ``background`` is
    the condition's, so it sets the contrast); the canvas holds ``log I``. A pixel sees the canvas bilinearly
    interpolated at its centre; outside the canvas it sees the background.
  * Timeline: the screen is blank (``I = background``) for ``gap_us``; digit ``i`` appears at
    ``a_i = gap_us + i * (gap_us + n_saccades * saccade_us)`` and rests for ``gap_us`` (the flash of its
    appearance settles), then moves along ``n_saccades`` straight sweeps of ``saccade_us`` each, at constant
    speed, through the triangle (0, A) -> (A/2, 0) -> (A, A) -> (0, A) -> ... with ``A = saccade_px`` (three
    sweeps close the triangle, like N-MNIST's three 100 ms saccades). The csv window of digit ``i`` is the
    motion, ``[a_i + gap_us, a_{i+1})``. The next digit replaces it at ``a_{i+1}``; after the last one the
    screen is blank again for ``gap_us``. The appear/replace flashes fall outside every window (ingest counts
    them as ``outside_windows``), as the real DVS-Gesture recordings have events between their windows.
  * The digit's rest position is centred: its top-left corner is at ``(sensor - digit_px - A) / 2`` plus the
    sweep offset.

Camera: `pipeline.emulator` (its docstring states the pixel model: log intensity, ON/OFF contrast thresholds,
refractory period, shot noise). Each recording is one emulator `Scene`: canvas 0 blank, canvas ``i + 1`` digit
``i``, translated by the saccade offsets, sampled every ``dt_us``. The dataset's choices on top of the model:
  * One sensor for the whole dataset: per-pixel ON and OFF thresholds are drawn once,
    ``theta ~ N(threshold_mean, threshold_std)`` clipped below at ``threshold_min`` (``default_rng([seed, 1])``).
  * Shot noise at the condition's ``noise_hz``, drawn from ``default_rng([seed, 2, recording])``.

Parameters (`DigitsDVSConfig`, the ``digits_dvs:`` section of params.yaml): seed, n_samples, users,
test_users, conditions {name: {background, noise_hz}}, sensor, digit_px, oversample, saccade_px, saccade_us,
n_saccades, gap_us, dt_us, threshold_mean, threshold_std, threshold_min, refractory_us.

Everything is deterministic by seed and independent of the number of worker threads.

Why ~430 lines: the dataset's config, layout and splits plus the scene and recording plans that
`orbit_digits` reuses; the pixel model itself lives in `pipeline.emulator`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
from scipy import ndimage

from pipeline import emulator
from pipeline.config import ConfigError
from pipeline.datasets.base import MissingRawDataError, Recording, Window
from pipeline.datasets.dvs_gesture import DVSGesture
from pipeline.events import SensorSize
from pipeline.io.errors import RawDataError

__all__ = [
    "SPEC",
    "CLASSES",
    "GENERATOR_VERSION",
    "Condition",
    "DigitsDVSConfig",
    "DigitsDVS",
    "spec_for",
    "load_source",
    "RecordingPlan",
    "plan_recordings",
    "draw_thresholds",
    "Schedule",
    "schedule",
    "emulate_recording",
    "SynthRecording",
    "synthesize",
    "check_common",
    "render_digits",
    "check_images8",
    "run_plans",
]

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GENERATOR_VERSION = "digits-dvs-emulator/1"
N_SOURCE = 1797  # sklearn.datasets.load_digits()
_CONDITION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class Condition:
    """One recording condition: the monitor's background intensity (digit ink is 1.0) and the noise rate."""

    background: float = 0.1  # relative intensity in (0, 1): log contrast of the ink is -log(background)
    noise_hz: float = 0.1  # shot-noise events per second per pixel

    def __post_init__(self) -> None:
        if not 0.0 < self.background < 1.0:
            raise ConfigError(f"condition background = {self.background!r}; must be in (0, 1)")
        if self.noise_hz < 0:
            raise ConfigError(f"condition noise_hz = {self.noise_hz!r}; must be >= 0")


def default_conditions() -> dict[str, Condition]:
    return {"lab": Condition(background=0.3, noise_hz=5.0), "natural": Condition(background=0.5, noise_hz=15.0)}


def check_common(cfg, section: str, travel_px: float, motion_steps_us: dict[str, int]) -> None:
    """The checks every emulated-digits config shares (digits_dvs, orbit_digits): users and splits, the digit
    partition, the sensor, the scene timeline and the pixel model. ``travel_px`` is how far the digit moves from
    its rest corner (the digit plus it must fit the sensor); ``motion_steps_us`` names the motion's durations,
    each a positive multiple of ``dt_us``. Raises ConfigError ``"<section>: ..."``."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{section}: {msg}")

    need(len(cfg.conditions) >= 1, "conditions must name at least one condition")
    for name, cond in cfg.conditions.items():
        need(isinstance(name, str) and bool(_CONDITION_NAME.match(name)),
             f"condition name {name!r} must match {_CONDITION_NAME.pattern} (it is part of file names)")
        need(isinstance(cond, Condition), f"conditions.{name} must be a Condition")
    need(2 <= cfg.users <= 999, f"users = {cfg.users}; must be in 2..999")
    need(1 <= cfg.test_users < cfg.users, f"test_users = {cfg.test_users}; must be in 1..users-1")
    n_rec = cfg.users * len(cfg.conditions)
    need(n_rec <= cfg.n_samples <= N_SOURCE,
         f"n_samples = {cfg.n_samples}; must be in {n_rec}..{N_SOURCE} (one digit per recording at least)")
    need(cfg.sensor >= 8, f"sensor = {cfg.sensor}; must be >= 8")
    need(cfg.digit_px >= 4, f"digit_px = {cfg.digit_px}; must be >= 4")
    need(cfg.digit_px + travel_px <= cfg.sensor,
         f"digit_px + {travel_px} px of travel = {cfg.digit_px + travel_px} exceeds the sensor ({cfg.sensor})")
    need(cfg.oversample >= 1, f"oversample = {cfg.oversample}; must be >= 1")
    steps = ", ".join(f"{k} ({v})" for k, v in motion_steps_us.items())
    need(cfg.dt_us >= 1 and all(v % cfg.dt_us == 0 for v in motion_steps_us.values()) and cfg.gap_us % cfg.dt_us == 0,
         f"{steps} and gap_us ({cfg.gap_us}) must be multiples of dt_us ({cfg.dt_us})")
    need(all(v > 0 for v in motion_steps_us.values()), f"{steps} must be positive")
    need(cfg.refractory_us >= 0, f"refractory_us = {cfg.refractory_us}; must be >= 0")
    need(cfg.gap_us > cfg.dt_us + cfg.refractory_us,
         f"gap_us ({cfg.gap_us}) must exceed dt_us + refractory_us so a digit's flash settles before motion")
    need(cfg.threshold_mean > 0 and cfg.threshold_std >= 0 and cfg.threshold_min > 0,
         "threshold_mean and threshold_min must be > 0, threshold_std >= 0")


@dataclasses.dataclass(frozen=True)
class DigitsDVSConfig:
    """The ``digits_dvs:`` section of params.yaml (see the module docstring for the model)."""

    seed: int = 0
    n_samples: int = 1797  # digits used (a class-balanced subset when < 1797)
    users: int = 30  # recordings per user = len(conditions)
    test_users: int = 6  # the last test_users users are the test split
    conditions: dict[str, Condition] = dataclasses.field(default_factory=default_conditions)
    sensor: int = 32  # square sensor, pixels per side
    digit_px: int = 18  # digit size on the sensor, pixels
    oversample: int = 4  # canvas samples per sensor pixel
    saccade_px: float = 4.0  # triangle side A, pixels
    saccade_us: int = 100_000  # duration of one sweep
    n_saccades: int = 3
    gap_us: int = 20_000  # rest after each digit appears (and blank lead/tail)
    dt_us: int = 500  # scene sampling step
    threshold_mean: float = 0.2  # log-intensity contrast threshold
    threshold_std: float = 0.03  # per-pixel mismatch
    threshold_min: float = 0.05
    refractory_us: int = 1000

    def __post_init__(self) -> None:
        check_common(self, "digits_dvs", self.saccade_px, {"saccade_us": self.saccade_us})
        if not (self.digit_px >= 4 and self.saccade_px >= 0):
            raise ConfigError("digits_dvs: digit_px must be >= 4 and saccade_px >= 0")
        if self.n_saccades < 1:
            raise ConfigError("digits_dvs: saccade_us and n_saccades must be positive")

    @property
    def sensor_size(self) -> SensorSize:
        return SensorSize(self.sensor, self.sensor, 2)

    @property
    def motion_us(self) -> int:
        return self.n_saccades * self.saccade_us


# ------------------------------------------------------------------------------------------ spec
class DigitsDVS(DVSGesture):
    """Reads digits_dvs through DVS-Gesture's reader: same file names, AEDAT 3.1 decoder and label csv.

    Recording metadata is ``{"user": N, "lighting": <condition>}`` (DVS-Gesture's key for the condition).
    """

    name = "digits_dvs"
    classes = CLASSES
    sensor_size = SensorSize(32, 32, 2)
    downloads = ()

    def __init__(self, sensor_size: SensorSize = SensorSize(32, 32, 2)):
        self.sensor_size = SensorSize.of(sensor_size)

    def raw_layout(self, raw_dir: Path) -> str:
        return (f"{raw_dir}/trials_to_train.txt, trials_to_test.txt, userNN_<condition>.aedat and "
                f"userNN_<condition>_labels.csv -- generate them with `python -m pipeline.generate {self.name}`")

    @staticmethod
    def _root(raw_dir: Path) -> Path:
        return Path(raw_dir)

    def recordings(self, raw_dir: Path, split: str = "official", val: float | None = None
                   ) -> dict[str, list[Recording]]:
        """DVS-Gesture's rule: the trials lists give train / test, then the last training users (``val``, default
        0.15: ceil(0.15 x 24) = 4, users 21..24 of the default 24 training users) become the validation split."""
        if split not in self.split_schemes:
            raise ValueError(f"{self.name} has one split scheme, 'official' (users held out); got {split!r}")
        if not (Path(raw_dir) / "trials_to_train.txt").is_file():
            raise MissingRawDataError(f"{raw_dir} holds no generated {self.name}. Expected {self.raw_layout(raw_dir)}.")
        return super().recordings(raw_dir, split, val)


    def for_raw(self, raw_dir: Path) -> DigitsDVS:
        """The spec of the dataset generated in ``raw_dir``: its sensor size is read from ``<name>.json``
        (so a `--set digits_dvs.sensor=48` generation is ingested at 48x48, not rejected as out of sensor)."""
        meta = Path(raw_dir) / f"{self.name}.json"
        if not meta.is_file():
            return self
        try:
            sensor = int(json.loads(meta.read_text())["config"]["sensor"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise RawDataError(meta, f"malformed generator record, no integer config.sensor ({type(err).__name__}: "
                                     f"{err}); regenerate with `python -m pipeline.generate {self.name}`") from None
        if sensor <= 0:
            raise RawDataError(meta, f"config.sensor = {sensor} must be a positive pixel count")
        return type(self)(SensorSize(sensor, sensor, 2))


def spec_for(cfg: DigitsDVSConfig) -> DigitsDVS:
    """The spec matching a config (its sensor size); `SPEC` is the one for the default config."""
    return DigitsDVS(cfg.sensor_size)


SPEC = DigitsDVS()


# ------------------------------------------------------------------------------------------ source + plan
@functools.lru_cache(maxsize=1)
def load_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images float64 (1797, 8, 8) in [0, 1] (ink = 1), labels int64 (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, np.float64) / 16.0
    labels = np.asarray(d.target, np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


class RecordingPlan(NamedTuple):
    """One recording to synthesise: ``sources`` are indices into `load_source`, in presentation order."""

    index: int  # position in the dataset's recording order (seeds its noise)
    name: str  # file stem, e.g. "user07_lab"
    user: int
    condition: str
    split: str  # "train" | "test"
    sources: tuple[int, ...]


def plan_recordings(cfg: DigitsDVSConfig, labels: np.ndarray | None = None) -> list[RecordingPlan]:
    """Partition the digits among users and conditions (see the module docstring), deterministically by seed."""
    labels = load_source()[1] if labels is None else np.asarray(labels)
    rng = np.random.default_rng([cfg.seed, 0])
    perm = rng.permutation(len(labels))
    # rank of each digit within its class in permutation order -> class-interleaved order
    rank = np.empty(len(perm), np.int64)
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    order = perm[np.lexsort((labels[perm], rank[perm]))][: cfg.n_samples]
    conditions = list(cfg.conditions)
    chunks = np.array_split(order, cfg.users * len(conditions))
    first_test = cfg.users - cfg.test_users + 1
    plans = []
    for k, chunk in enumerate(chunks):
        user, cond = k // len(conditions) + 1, conditions[k % len(conditions)]
        shown = rng.permutation(chunk)
        plans.append(RecordingPlan(k, f"user{user:02d}_{cond}", user, cond, "test" if user >= first_test else "train",
                                   tuple(int(i) for i in shown)))
    return plans


def draw_thresholds(cfg: DigitsDVSConfig) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's per-pixel (ON, OFF) contrast thresholds, float64 (H, W) each, shared by every recording."""
    return emulator.draw_thresholds(np.random.default_rng([cfg.seed, 1]), (cfg.sensor, cfg.sensor),
                                    cfg.threshold_mean, cfg.threshold_std, cfg.threshold_min)


# ------------------------------------------------------------------------------------------ scene
class Schedule(NamedTuple):
    """A recording's timeline in µs: digit ``i`` appears at ``appear_us[i]`` (``appear_us[n]``: the screen goes
    blank), its window is ``windows_us[i] = [start, end)``, the recording lasts ``duration_us``."""

    appear_us: np.ndarray  # int64 (n + 1,)
    windows_us: np.ndarray  # int64 (n, 2)
    duration_us: int


def schedule(n: int, cfg: DigitsDVSConfig) -> Schedule:
    """The timeline of a recording presenting ``n`` digits."""
    period = cfg.gap_us + cfg.motion_us
    appear = cfg.gap_us + period * np.arange(n + 1, dtype=np.int64)
    windows = np.stack([appear[:-1] + cfg.gap_us, appear[1:]], axis=1)
    return Schedule(appear, windows, int(appear[-1] + cfg.gap_us))


def _triangle(cfg: DigitsDVSConfig) -> np.ndarray:
    a = float(cfg.saccade_px)
    return np.array([[0.0, a], [a / 2, 0.0], [a, a]])


def _scene_steps(sched: Schedule, cfg: DigitsDVSConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scene sample ``k`` (time ``k * dt_us``): canvas index (0 = blank, i + 1 = digit i) and offsets (dx, dy)."""
    n = len(sched.appear_us) - 1
    t = np.arange(sched.duration_us // cfg.dt_us + 1, dtype=np.int64) * cfg.dt_us
    seg = np.searchsorted(sched.appear_us, t, side="left")  # number of appearances strictly before t
    image = np.where((seg >= 1) & (seg <= n), seg, 0).astype(np.int32)
    tau = t - (sched.appear_us[np.clip(seg - 1, 0, n)] + cfg.gap_us)  # time into the motion (<= 0: at rest)
    tau = np.clip(tau, 0, cfg.motion_us).astype(np.float64)
    sweep = np.minimum((tau // cfg.saccade_us).astype(np.int64), cfg.n_saccades - 1)
    frac = (tau - sweep * cfg.saccade_us) / cfg.saccade_us
    tri = _triangle(cfg)
    start, end = tri[sweep % 3], tri[(sweep + 1) % 3]
    pos = start + (end - start) * frac[:, None]
    pos[image == 0] = tri[0]
    return image, np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1])


def render_digits(images8: np.ndarray, background: float, sensor: int, digit_px: int, oversample: int,
                  origin: float) -> np.ndarray:
    """Log-intensity canvases float64 (n + 1, S*sensor, S*sensor), ``S = oversample``: index 0 blank, i + 1 digit
    i, its top-left corner at ``(origin, origin)`` sensor pixels (see the module docstring for the ink model)."""
    s, side = oversample, sensor * oversample
    scale = digit_px / 8.0
    c = (np.arange(side) + 0.5) / s  # canvas sample positions, sensor pixels
    u = (c - origin) / scale - 0.5 + 2  # source pixel coordinate in the 2-padded 8x8 image
    uu, vv = np.meshgrid(u, u, indexing="ij")  # (row, col)
    out = np.empty((len(images8) + 1, side, side))
    out[0] = np.log(background)
    for i, img in enumerate(images8):
        padded = np.pad(img, 2)
        d = ndimage.map_coordinates(padded, [uu.ravel(), vv.ravel()], order=3, mode="nearest")
        d = np.clip(d, 0.0, 1.0).reshape(side, side)
        out[i + 1] = np.log(background + (1.0 - background) * d)
    return out


def _canvases(images8: np.ndarray, background: float, cfg: DigitsDVSConfig) -> np.ndarray:
    """`render_digits` with the digit's top-left at rest offset (0, 0)."""
    origin = (cfg.sensor - cfg.digit_px - cfg.saccade_px) / 2.0
    return render_digits(images8, background, cfg.sensor, cfg.digit_px, cfg.oversample, origin)


def check_images8(images8: np.ndarray) -> np.ndarray:
    """``images8`` as float64 (n >= 1, 8, 8); ValueError otherwise."""
    images8 = np.asarray(images8, np.float64)
    if images8.ndim != 3 or images8.shape[1:] != (8, 8) or len(images8) == 0:
        raise ValueError(f"images8 must be (n >= 1, 8, 8), got shape {images8.shape}")
    return images8


# ------------------------------------------------------------------------------------------ recordings
def emulate_recording(images8: np.ndarray, condition: Condition, thresholds: tuple[np.ndarray, np.ndarray],
                      cfg: DigitsDVSConfig, rng: np.random.Generator) -> tuple[np.ndarray, Schedule]:
    """One recording presenting ``images8`` (n, 8, 8) in [0, 1] in order. Returns (sorted events, schedule)."""
    images8 = check_images8(images8)
    sched = schedule(len(images8), cfg)
    image, dx, dy = _scene_steps(sched, cfg)
    scene = emulator.Scene(_canvases(images8, condition.background, cfg), image, dx, dy, cfg.oversample, cfg.dt_us)
    events = emulator.emulate_scene(scene, cfg.sensor, cfg.sensor, thresholds[0], thresholds[1], cfg.refractory_us,
                                    condition.noise_hz, rng)
    return events, sched


class SynthRecording(NamedTuple):
    plan: RecordingPlan
    events: np.ndarray  # EVENT_DTYPE, sorted by t
    windows: list[Window]  # one per presented digit, in time order, 0-based labels


def _synth_one(plan: RecordingPlan, cfg: DigitsDVSConfig, thresholds) -> SynthRecording:
    images, labels = load_source()
    rng = np.random.default_rng([cfg.seed, 2, plan.index])
    src = np.asarray(plan.sources)
    events, sched = emulate_recording(images[src], cfg.conditions[plan.condition], thresholds, cfg, rng)
    windows = [Window(int(labels[s]), int(a), int(b), row=r + 2)
               for r, (s, (a, b)) in enumerate(zip(src, sched.windows_us))]
    return SynthRecording(plan, events, windows)


def synthesize(cfg: DigitsDVSConfig, workers: int = 1) -> Iterator[SynthRecording]:
    """Every recording of the dataset, in plan order. The kernels release the GIL, so ``workers`` threads
    run recordings concurrently; the result does not depend on ``workers``."""
    plans = plan_recordings(cfg)
    thresholds = draw_thresholds(cfg)
    return run_plans(plans, lambda pl: _synth_one(pl, cfg, thresholds), workers)


def run_plans(plans: list[RecordingPlan], one: Callable[[RecordingPlan], SynthRecording],
              workers: int = 1) -> Iterator[SynthRecording]:
    """``one(plan)`` for every plan, yielded in plan order, on ``workers`` threads (the emulator's kernels
    release the GIL); the result does not depend on ``workers``."""
    load_source()
    if workers <= 1:
        for plan in plans:
            yield one(plan)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(one, plans)
