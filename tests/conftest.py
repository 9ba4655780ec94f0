"""Shared fixtures: small raw datasets written in the exact official formats, with their ground truth."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.base import Window
from pipeline.datasets.cifar10_dvs import CLASSES as CIFAR_CLASSES
from pipeline.datasets.dvs_gesture import write_recording, write_trials
from pipeline.events import make_events
from pipeline.io.aedat2 import write_aedat20


@dataclass
class RawTree:
    root: Path
    truth: dict[str, list[tuple[np.ndarray, int]]]  # split -> [(events, label)] in store order
    n_events_in_files: int


def random_stream(rng: np.random.Generator, n: int, t_max: int, size: int = 128):
    t = np.sort(rng.integers(0, t_max, n)).astype(np.int64)
    return rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n)


def make_gesture_tree(root: Path, seed: int = 0, users=(1, 2, 3), n_events: int = 20_000,
                      invalid_frac: float = 0.05, overflow: bool = True) -> RawTree:
    """A DVS-Gesture tree: 3 users, 11 windows each (one class each), invalid events, timestamps crossing 2^31.

    The trials lists put the last user in test, the others in train; the truth also holds the ``val`` split that
    the default ``ingest.val`` (0.15 of the training users, at least one, never all) carves from them: the
    last training user (with one training user: none)."""
    rng = np.random.default_rng(seed)
    names = []
    truth: dict[str, list] = {"train": [], "val": [], "test": []}
    for k, u in enumerate(users):
        base = (1 << 31) - 1_000_000 if overflow and k == 0 else 0  # the first recording crosses 2^31 µs
        x, y, t, p = random_stream(rng, n_events, 3_000_000)
        t = t + base
        valid = rng.random(n_events) > invalid_frac
        windows = [Window(c, base + 100_000 + c * 250_000, base + 300_000 + c * 250_000) for c in range(11)]
        name = f"user{u:02d}_fluorescent_led"
        write_recording(root, name, x, y, t, p, windows, valid=valid, events_per_packet=997)
        names.append(name)
        split = "test" if k == len(users) - 1 else "val" if k == len(users) - 2 and len(users) > 2 else "train"
        ev = make_events(x[valid], y[valid], t[valid], p[valid])
        for w in windows:
            sel = (ev["t"] >= w.start_us) & (ev["t"] < w.end_us)
            truth[split].append((ev[sel], w.label))
    write_trials(root, names[:-1], names[-1:])
    return RawTree(root, truth, n_events * len(users))


def make_cifar_tree(root: Path, per_class: int = 10, seed: int = 0, n_events: int = 300) -> RawTree:
    """CIFAR10-DVS files, ``per_class`` per class. The truth follows the default ``tet`` scheme (the last
    ceil(0.1 n) indices test) and the default ``ingest.val`` (0.1 per class: the last ceil(0.1 m) of the m
    training indices, never all of them, are val)."""
    rng = np.random.default_rng(seed)
    truth: dict[str, list] = {"train": [], "val": [], "test": []}
    cut = -(-per_class * 9 // 10)
    n_val = min(-(-cut // 10), cut - 1)
    for label, cls in enumerate(CIFAR_CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x, y, t, p = random_stream(rng, n_events, 1_300_000)
            t = t + 40_000_000
            write_aedat20(root / cls / f"cifar10_{cls}_{i}.aedat", x, y, t, p)
            truth["train" if i < cut - n_val else "val" if i < cut else "test"].append((make_events(x, y, t, p), label))
    # store order is class-major, index-minor within each split
    for split in truth:
        truth[split].sort(key=lambda s: s[1])
    return RawTree(root, truth, n_events * per_class * len(CIFAR_CLASSES))


@pytest.fixture
def gesture_tree(tmp_path: Path) -> RawTree:
    return make_gesture_tree(tmp_path / "raw")


@pytest.fixture
def cifar_tree(tmp_path: Path) -> RawTree:
    return make_cifar_tree(tmp_path / "raw")


def make_learnable_tree(root: Path, n_classes: int = 4, per_class: int = 24, seed: int = 0) -> Path:
    """A DVS-Gesture-format tree whose classes a small SNN can tell apart: class k emits events along a
    vertical bar at x ≈ 16 + 28 k moving downwards, plus uniform noise. Users 1-4 are listed for training, user 5
    tests; the default ``ingest.val`` makes user 4 the validation split (users 1-3 train)."""
    rng = np.random.default_rng(seed)
    names = []
    for u in (1, 2, 3, 4, 5):
        xs, ys, ts, ps, windows = [], [], [], [], []
        t0 = 0
        for i in range(per_class * n_classes // 4):
            k = int(rng.integers(n_classes))
            n = 400
            t = np.sort(rng.integers(0, 100_000, n))
            bar = rng.random(n) < 0.8
            x = np.where(bar, 16 + 28 * k + rng.integers(-3, 4, n), rng.integers(0, 128, n))
            y = np.where(bar, (t * 120 // 100_000 + rng.integers(-4, 5, n)).clip(0, 127), rng.integers(0, 128, n))
            xs.append(x); ys.append(y); ts.append(t + t0); ps.append((rng.random(n) < 0.5).astype(int))
            windows.append(Window(k, t0, t0 + 100_000))
            t0 += 120_000
        name = f"user{u:02d}_lab"
        write_recording(root, name, np.concatenate(xs), np.concatenate(ys), np.concatenate(ts), np.concatenate(ps),
                        windows)
        names.append(name)
    write_trials(root, names[:4], names[4:])
    return root


def run_isolated(code: str, timeout_s: int = 300) -> None:
    """Run ``code`` in a fresh interpreter and assert it exits 0: a process abort (Numba's workqueue layer on
    concurrent parallel launches) fails the test instead of killing the test runner."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
