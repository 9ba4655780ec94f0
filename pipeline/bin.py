"""Stage: event store -> frame caches, one per (split, T).

    python -m pipeline.bin <dataset> [--T 8 16] [--out-size 64 64] [--by time|count]
                                     [--semantics exact|tonic|spikingjelly] [--dtype uint8|int16|float32]
                                     [--format zarr|h5] [--store PATH] [--splits train val test] [--set bin.key=value]
    python -m pipeline.bin <dataset> --for-training [--prune]

Defaults come from ``params.yaml`` (``bin:``, then the dataset's ``recipes.<name>.bin``, then ``--set``). Each
cache lands at `pipeline.frames.cache_path` (a name derived from every parameter); existing caches with the
same key are reused, never rebuilt stale. Prints one line per cache.

``--for-training`` builds exactly the caches `pipeline.train` will open for this dataset (every split of the store --
train, val, test -- at T_s and T_t; `pipeline.evaluate` rebins the test or val split on the fly at other T); ``--prune`` then deletes every other cache
in the dataset's folder (what the DVC stage does, so its output holds no stale caches).

Before any cache is built: the frames folder must be writable, and every split asked for must hold at least one
sample with events (a split of empty samples only is refused; empty samples among others are legal and reported
as a ``warning:`` line on stderr). A full disk is one ``error:`` line naming the cache and the space it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from pipeline.config import BinConfig, IngestConfig, PathsConfig, for_dataset, load_section, resolve_training
from pipeline.frames import Binning, cache_path, ensure_frame_cache
from pipeline.guards import check_splits, check_writable, exits_on_error, frame_cache_bytes, writing
from pipeline.store import StoreError, open_event_store, remove_path

__all__ = ["run", "main"]


def run(cfg: BinConfig, store_path: Path, frames_root: Path, splits: tuple[str, ...] | None = None,
        progress: bool = True) -> list[Path]:
    """Build (or reuse) the cache of every (split, T) in ``cfg``; returns their paths. ``splits`` defaults to every
    split of the store (train, val, test). Refuses an unwritable ``frames_root`` (NotWritableError) and a split of
    empty samples only (StoreError) before binning anything."""
    store = open_event_store(store_path)
    splits = tuple(store.splits) if splits is None else splits
    check_splits(store, splits)
    check_writable(frames_root, "frame caches")
    paths = []
    for T in cfg.T:
        binning = Binning.from_config(cfg, T)
        for split in splits:
            path = cache_path(frames_root, store.attrs["dataset"], split, binning, store.store_id, store.sensor_size,
                              cfg.format)
            with writing("frame cache", path, *frame_cache_bytes(len(store[split]), binning, store.sensor_size)):
                cache = ensure_frame_cache(store_path, split, binning, frames_root, cfg.format, progress=progress)
            a = cache.attrs
            print(f"{a['dataset']}/{split} T={T}: {cache.shape} {binning.dtype} saturated={a['saturated']} -> "
                  f"{cache.path}")
            paths.append(cache.path)
    return paths


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bin", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--T", type=int, nargs="+")
    ap.add_argument("--out-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--by", choices=("time", "count"))
    ap.add_argument("--semantics", choices=("exact", "tonic", "spikingjelly"))
    ap.add_argument("--dtype", choices=("uint8", "int16", "float32"))
    ap.add_argument("--format", choices=("zarr", "h5"))
    ap.add_argument("--store", type=Path, help="event store (default: <paths.events_root>/<dataset>.zarr)")
    ap.add_argument("--splits", nargs="+", help="default: every split of the store (train, val, test)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--for-training", action="store_true", help="the caches train/evaluate need (params.yaml train:)")
    ap.add_argument("--prune", action="store_true", help="with --for-training: delete every other cache")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    paths = load_section("paths", PathsConfig, args.params, args.overrides)
    if args.for_training:
        return _for_training(args.dataset, args.params, args.overrides, args.store, paths, args.prune,
                             not args.no_progress)
    cfg = for_dataset("bin", BinConfig, args.dataset, args.params, args.overrides)
    cli = {"T": args.T, "out_size": args.out_size, "by": args.by, "semantics": args.semantics,
           "dtype": args.dtype, "format": args.format}
    cfg = dataclasses.replace(cfg, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in cli.items() if v is not None})
    store = args.store or paths.store_path(args.dataset,
                                           load_section("ingest", IngestConfig, args.params, args.overrides).format)
    if not store.exists():
        print(f"error: event store {store} not found; run `python -m pipeline.ingest {args.dataset}` first",
              file=sys.stderr)
        return 2
    _, code = _run_or_report(cfg, store, Path(paths.frames_root), tuple(args.splits) if args.splits else None,
                             not args.no_progress)
    return code


def _run_or_report(cfg: BinConfig, store: Path, frames_root: Path, splits: tuple[str, ...] | None,
                   progress: bool) -> tuple[list[Path], int]:
    """`run`, with a refused store as one error line and an exit code (an unwritable folder or a full disk is
    `exits_on_error`'s)."""
    try:
        return run(cfg, store, frames_root, splits, progress), 0
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return [], 1


def _for_training(dataset: str, params: Path, overrides: list[str], store: Path | None, paths: PathsConfig,
                  prune: bool, progress: bool) -> int:
    train_cfg, bin_cfg, _ = resolve_training(dataset, params, overrides)
    store = store or paths.store_path(dataset, load_section("ingest", IngestConfig, params, overrides).format)
    keep, code = _run_or_report(dataclasses.replace(bin_cfg, T=tuple(sorted({train_cfg.T_s, train_cfg.teacher_T}))),
                                store, Path(paths.frames_root), None, progress)
    if code:
        return code
    if prune:
        folder = Path(paths.frames_root) / dataset
        for stale in set(folder.iterdir()) - set(keep):
            if re.search(r"\.(tmp|old)-\d+$", stale.name):  # another writer's work in progress (atomic_output
                continue                                     # clears those of dead processes itself)
            print(f"pruning {stale}")
            remove_path(stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
