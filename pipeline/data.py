"""PyTorch datasets over frame caches, the multi-view dataset TSSD needs, and shared augmentation.

A view is one way of turning sample ``i`` into frames ``(T, P, H, W)``:

* `CacheView` reads a frame cache (lazily, or all of it in RAM with ``in_memory=True``);
* `RebinView` bins the sample's events from the event store on the fly with `pipeline.binning.to_frames`
  (variable-timestep rebinning: any T without building a cache).

`MultiViewDataset` returns the same sample under several views -- e.g. ``{"student": T_s, "teacher": T_t}`` --
with the **same** random augmentation applied to each: one draw of `AugParams` per item, applied to every
view (horizontal flip, random roll/translation by up to ±k px as TET/NDA use, optional cutout). Draws are
seeded by ``(seed, epoch, index)``, so they are reproducible and independent of DataLoader workers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.binning import to_frames
from pipeline.config import ConfigError, check_choice
from pipeline.frames import Binning, FrameCache, open_frame_cache
from pipeline.store import EventSplit, open_event_store

__all__ = ["Augment", "AugParams", "SHIFT_MODES", "TEACHER_INPUTS", "teacher_frames", "CacheView", "RebinView",
           "FrameDataset", "MultiViewDataset"]


# ------------------------------------------------------------------------------------------ augmentation
class AugParams(NamedTuple):
    """One augmentation draw, applied identically to every view of a sample."""

    flip: bool
    dx: int
    dy: int
    cutout: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) in output pixels


#: How a shift moves the frame (`Augment.apply`): ``roll`` wraps around (TET), ``translate`` fills with zeros (NDA).
SHIFT_MODES = ("roll", "translate")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Frame augmentation in torch, the ``train.augment:`` section: flip with probability ``flip_p``; shift by
    ``dx, dy`` drawn uniformly from ``[-max_shift_px, max_shift_px]`` -- ``shift_mode`` one of `SHIFT_MODES`; a
    ``cutout_px`` square zeroed at a random centre (0 disables). The defaults are params.yaml's."""

    flip_p: float = 0.0
    max_shift_px: int = 2
    shift_mode: str = "roll"  # roll (TET) | translate (zero fill, NDA)
    cutout_px: int = 0

    def __post_init__(self) -> None:
        check_choice("train.augment.shift_mode", self.shift_mode, SHIFT_MODES)
        if not 0.0 <= self.flip_p <= 1.0:
            raise ConfigError(f"train.augment.flip_p = {self.flip_p} must be a probability in [0, 1]")
        if self.max_shift_px < 0 or self.cutout_px < 0:
            raise ConfigError(f"train.augment.max_shift_px ({self.max_shift_px}) and cutout_px ({self.cutout_px}) "
                              "must be >= 0")

    def draw(self, gen: torch.Generator, height: int, width: int) -> AugParams:
        r = torch.rand(4, generator=gen).tolist()
        k = self.max_shift_px
        dx = int(torch.randint(-k, k + 1, (1,), generator=gen)) if k else 0
        dy = int(torch.randint(-k, k + 1, (1,), generator=gen)) if k else 0
        box = None
        if self.cutout_px:  # a cutout_px x cutout_px square (clipped at the border) around a random centre
            y0 = int(r[1] * height) - self.cutout_px // 2
            x0 = int(r[2] * width) - self.cutout_px // 2
            box = (max(y0, 0), min(y0 + self.cutout_px, height), max(x0, 0), min(x0 + self.cutout_px, width))
        return AugParams(r[0] < self.flip_p, dx, dy, box)

    def apply(self, frames: torch.Tensor, a: AugParams) -> torch.Tensor:
        """Apply draw ``a`` to ``frames`` (..., H, W); returns a new tensor."""
        if a.flip:
            frames = frames.flip(-1)
        if a.dx or a.dy:
            if self.shift_mode == "roll":
                frames = frames.roll((a.dy, a.dx), dims=(-2, -1))
            else:
                frames = _translate(frames, a.dy, a.dx)
        if a.cutout is not None:
            frames = frames.clone()
            y0, y1, x0, x1 = a.cutout
            frames[..., y0:y1, x0:x1] = 0
        return frames


def _translate(frames: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(frames)
    h, w = frames.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = frames[..., ys, xs]
    return out


# ------------------------------------------------------------------------------------------ the teacher's input
#: What the TSSD teacher run sees (``train.teacher_input``): ``rebin`` -- the sample's events in T_t bins (its own
#: view, a frame cache at T_t); ``repeat`` -- the student's T_s frames each held for T_t / T_s steps
#: (`teacher_frames`), to separate "more steps" from "finer time".
TEACHER_INPUTS = ("rebin", "repeat")


def teacher_frames(x_s: torch.Tensor, T_t: int) -> torch.Tensor:
    """``teacher_input: repeat``: the T_s student frames ``[T_s, B, P, H, W]``, each held for k = T_t / T_s steps and
    divided by k -> ``[T_t, B, P, H, W]`` (each frame's events spread evenly over its k steps, as rebinning into
    T_t bins spreads them unevenly). After the network's T / T_s input scaling the teacher sees exactly each
    student frame repeated k times: more steps, no finer time."""
    k, rem = divmod(T_t, x_s.shape[0])
    if rem:
        raise ValueError(f"teacher_input repeat: T_t = {T_t} must be a multiple of T_s = {x_s.shape[0]}")
    return x_s.repeat_interleave(k, dim=0) / k


# ------------------------------------------------------------------------------------------ views
class View(Protocol):
    def __len__(self) -> int: ...
    def frames(self, i: int) -> np.ndarray: ...  # (T, P, H, W)
    def label(self, i: int) -> int: ...


class CacheView:
    """Frames of a frame cache; ``in_memory=True`` reads the whole cache once (per process) into RAM."""

    def __init__(self, cache: FrameCache | str | Path, in_memory: bool = False):
        self.cache = cache if isinstance(cache, FrameCache) else open_frame_cache(cache)
        self.in_memory = in_memory
        self._ram: np.ndarray | None = None
        self.T = self.cache.shape[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ram": None}

    def __len__(self) -> int:
        return len(self.cache)

    def frames(self, i: int) -> np.ndarray:
        if self.in_memory:
            if self._ram is None:
                self._ram = self.cache.read_all()
            return self._ram[i]
        return self.cache.sample(i)

    def label(self, i: int) -> int:
        return int(self.cache.labels[i])


class RebinView:
    """Frames binned on the fly from an event-store split (any ``binning.T``, no cache needed)."""

    def __init__(self, split: EventSplit | tuple[str | Path, str], binning: Binning):
        store = open_event_store(split[0] if isinstance(split, tuple) else split.path)
        self.split = store[split[1]] if isinstance(split, tuple) else split
        self.binning = binning
        self.sensor = store.sensor_size
        self.T = binning.T

    def __len__(self) -> int:
        return len(self.split)

    def frames(self, i: int) -> np.ndarray:
        events, _ = self.split[i]
        return to_frames(events, self.sensor, **self.binning.kwargs())

    def label(self, i: int) -> int:
        return int(self.split.labels[i])


def _as_view(v: View | FrameCache | str | Path) -> View:
    return v if hasattr(v, "frames") and callable(getattr(v, "frames")) else CacheView(v)


# ------------------------------------------------------------------------------------------ datasets
class MultiViewDataset(Dataset):
    """Item ``i`` -> ``({name: float32 tensor (T, P, H, W)}, label)``, one shared augmentation draw per item.

    All views must describe the same samples (same length and labels; checked).
    """

    def __init__(self, views: dict[str, View | FrameCache | str | Path], augment: Augment | None = None,
                 seed: int = 0):
        if not views:
            raise ValueError("MultiViewDataset needs at least one view")
        self.views = {k: _as_view(v) for k, v in views.items()}
        lengths = {k: len(v) for k, v in self.views.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"views have different lengths: {lengths}")
        first = next(iter(self.views.values()))
        for k, v in self.views.items():
            if any(v.label(i) != first.label(i) for i in (0, len(v) - 1) if len(v)):
                raise ValueError(f"view {k!r} does not hold the same samples as the others")
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call once per epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(next(iter(self.views.values())))

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        out = {k: torch.from_numpy(np.asarray(v.frames(i)).astype(np.float32)) for k, v in self.views.items()}
        if self.augment is not None:
            h, w = next(iter(out.values())).shape[-2:]
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFFFFFFFFFF)
            draw = self.augment.draw(gen, h, w)
            out = {k: self.augment.apply(f, draw) for k, f in out.items()}
        return out, next(iter(self.views.values())).label(i)


class FrameDataset(MultiViewDataset):
    """A frame cache as a PyTorch dataset: item ``i`` -> (float32 tensor (T, P, H, W), label)."""

    def __init__(self, cache: FrameCache | str | Path, in_memory: bool = False, augment: Augment | None = None,
                 seed: int = 0):
        super().__init__({"frames": CacheView(cache, in_memory)}, augment, seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        views, label = super().__getitem__(i)
        return views["frames"], label
