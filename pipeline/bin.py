"""Stage: event store -> frame caches, one per (split, T).

    python -m pipeline.bin <dataset> [--T 8 16] [--out-size 64 64] [--by time|count]
                                     [--semantics exact|tonic|spikingjelly] [--dtype uint8|int16|float32]
                                     [--format zarr|h5] [--store PATH] [--splits train val test] [--set bin.key=value]
    python -m pipeline.bin <dataset> --for-training [--prune]
    (either form: [--recipe NAME], one of the dataset's named recipes; default its recipes.<dataset>.use)

Defaults come from ``params.yaml`` (``bin:``, then the dataset's ``recipes.<name>.bin``, then ``--set``, then the
flags, which are ``--set bin.*`` overrides: `pipeline.config.flag_overrides`). Each
cache lands at `pipeline.frames.cache_path` (a name derived from every parameter); existing caches with the
same key are reused, never rebuilt stale. Prints one line per cache.

``--for-training`` builds exactly the caches `pipeline.train` will open for this dataset (every split of the store --
train, val, test -- at T_s and T_t, and at those a recipe's ``by_method`` layer sets for a method; `pipeline.evaluate`
rebins the test or val split on the fly at other T); ``--prune`` then deletes every other cache
in the dataset's folder (what the DVC stage does, so its output holds no stale caches).

Before any cache is built: the frames folder must be writable, and every split asked for must hold at least one
sample with events (a split of empty samples only is refused; empty samples among others are legal and reported
as a ``warning:`` line on stderr). A full disk is one ``error:`` line naming the cache and the space it needs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.binning import DTYPE_NAMES, SEMANTICS
from pipeline.config import FORMATS, IngestConfig, PathsConfig, flag_overrides, load_section, recipe_methods
from pipeline.frames import BY, BinConfig, Binning, Timesteps, cache_path, ensure_frame_cache
from pipeline.guards import check_splits, check_writable, exits_on_error, frame_cache_bytes, writing
from pipeline.store import open_event_store, remove_path

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
    ap.add_argument("--by", choices=tuple(BY))
    ap.add_argument("--semantics", choices=SEMANTICS)
    ap.add_argument("--dtype", choices=DTYPE_NAMES)
    ap.add_argument("--format", choices=FORMATS)
    ap.add_argument("--store", type=Path, help="event store (default: <paths.events_root>/<dataset>.zarr)")
    ap.add_argument("--splits", nargs="+", help="default: every split of the store (train, val, test)")
    ap.add_argument("--recipe", help="one of the dataset's named recipes (default: its recipes.<dataset>.use)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--for-training", action="store_true", help="the caches train/evaluate need (params.yaml train:)")
    ap.add_argument("--prune", action="store_true", help="with --for-training: delete every other cache")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    paths = load_section("paths", PathsConfig, args.params, args.overrides)
    if args.for_training:
        return _for_training(args.dataset, args.params, args.overrides, args.store, paths, args.prune,
                             not args.no_progress, args.recipe)
    overrides = args.overrides + flag_overrides("bin", T=args.T, out_size=args.out_size, by=args.by,
                                                semantics=args.semantics, dtype=args.dtype, format=args.format)
    cfg = load_section("bin", BinConfig, args.params, overrides, dataset=args.dataset, recipe=args.recipe)
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
    """`run`, and exit code 0 (a refused store, an unwritable folder or a full disk is `exits_on_error`'s)."""
    return run(cfg, store, frames_root, splits, progress), 0


def _for_training(dataset: str, params: Path, overrides: list[str], store: Path | None, paths: PathsConfig,
                  prune: bool, progress: bool, recipe: str | None = None) -> int:
    # the caches train opens: bin: at the run's T_s and T_t (only those keys of train: are read; the flags
    # --T, --dtype, ... are not applied: `pipeline.train` would not open caches binned with them); with a
    # by_method layer, the union over the methods it names and the rest (whatever train.method says)
    timesteps = [load_section("train", Timesteps, params, overrides, dataset=dataset, subset=True, recipe=recipe,
                              by_method=False)]
    timesteps += [load_section("train", Timesteps, params, [*overrides, f"train.method={m}"], dataset=dataset,
                               subset=True, recipe=recipe) for m in recipe_methods(params, dataset, recipe, overrides)]
    counts = sorted({T for t in timesteps for T in t.frame_counts})
    bin_cfg = load_section("bin", BinConfig, params, overrides + flag_overrides("bin", T=counts),
                           dataset=dataset, recipe=recipe)
    store = store or paths.store_path(dataset, load_section("ingest", IngestConfig, params, overrides).format)
    keep, code = _run_or_report(bin_cfg, store, Path(paths.frames_root), None, progress)
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
