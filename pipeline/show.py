"""Stage: look before you train -- a PNG grid of a sample's frames (ON events red, OFF events blue).

    python -m pipeline.show <frame cache | event store> [--index 0 1 2] [--T 8] --out frames.png

Given a frame cache, shows its frames; given an event store, bins the samples at ``--T`` (default 8) first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.binning import to_frames
from pipeline.frames import FORMAT as CACHE_FORMAT
from pipeline.frames import open_frame_cache
from pipeline.store import StoreError, open_event_store

__all__ = ["to_rgb", "render", "main"]


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """(T, P, H, W) counts -> (T, H, W, 3) float RGB in [0, 1]: ON red, OFF blue (P=1: white), per-sample scale."""
    f = np.asarray(frames, np.float32)
    scale = max(float(np.percentile(f[f > 0], 99)) if (f > 0).any() else 1.0, 1.0)
    f = np.clip(f / scale, 0, 1)
    rgb = np.zeros((*f.shape[:1], *f.shape[2:], 3), np.float32)
    if f.shape[1] == 1:
        rgb[:] = f[:, 0, ..., None]
    else:
        rgb[..., 0] = f[:, 1]  # ON
        rgb[..., 2] = f[:, 0]  # OFF
        rgb[..., 1] = 0.3 * np.minimum(f[:, 0], f[:, 1])
    return rgb


def render(samples: list[tuple[np.ndarray, str]], out: Path) -> Path:
    """One row per sample, one column per frame; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = max(f.shape[0] for f, _ in samples)
    fig, axes = plt.subplots(len(samples), T, figsize=(1.3 * T, 1.4 * len(samples)), squeeze=False)
    for r, (frames, title) in enumerate(samples):
        rgb = to_rgb(frames)
        for c in range(T):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rgb):
                ax.imshow(rgb[c], interpolation="nearest")
            if c == 0:
                ax.set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.show", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a frame cache or an event store")
    ap.add_argument("--index", type=int, nargs="+", default=[0])
    ap.add_argument("--split", default="train", help="split, when the source is an event store")
    ap.add_argument("--T", type=int, default=8, help="frames per sample, when the source is an event store")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    samples = []
    try:
        cache = open_frame_cache(args.source)
        classes = cache.attrs["classes"]
        for i in args.index:
            samples.append((np.asarray(cache.frames[i]), f"#{i} {classes[cache.labels[i]]}"))
    except StoreError as cache_err:  # not a frame cache: try an event store (the error below names both)
        try:
            store = open_event_store(args.source)
        except StoreError as store_err:
            print(f"error: {args.source} is neither a {CACHE_FORMAT} ({cache_err}) nor an event store ({store_err})",
                  file=sys.stderr)
            return 2
        split = store[args.split]
        for i in args.index:
            events, label = split[i]
            samples.append((to_frames(events, store.sensor_size, n_time_bins=args.T),
                            f"#{i} {store.attrs['classes'][label]}"))
    print(f"wrote {render(samples, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
