"""Stage: official raw files -> one columnar event store per dataset.

    python -m pipeline.ingest <dataset> [--raw DIR] [--out PATH] [--format zarr|h5] [--split SCHEME]
                                        [--from-tonic SAVE_TO] [--set ingest.key=value ...]
    python -m pipeline.ingest recordings --raw DIR [--name NAME] [--sensor-size W H] ...   (your own recordings,
                                        see pipeline.datasets.recordings)

The work is `pipeline.ingestion.ingest` (the library function; its docstring says what is counted, what is
refused and what is checked before any byte is read). This module parses the command line and reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import FORMATS, IngestConfig, PathsConfig, flag_overrides, load_section
from pipeline.datasets import get_spec
from pipeline.guards import exits_on_error
from pipeline.ingestion import ingest, ingest_and_report

__all__ = ["main", "ingest"]


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="dvs_gesture | cifar10_dvs | digits_dvs | recordings (a folder of your own)")
    ap.add_argument("--raw", type=Path, help="raw folder (default: <paths.raw_root>/<dataset>)")
    ap.add_argument("--out", type=Path, help="store path (default: <paths.events_root>/<dataset>.zarr|.h5)")
    ap.add_argument("--format", choices=FORMATS)
    ap.add_argument("--from-tonic", type=Path, metavar="SAVE_TO",
                    help="ingest a tree downloaded by tonic (its save_to folder) through tonic's dataset classes")
    ap.add_argument("--split", help="split scheme (cifar10_dvs: tet, tebn, spikingjelly, random:<seed>)")
    ap.add_argument("--name", help="recordings: the dataset's name (its store, caches, runs and recipes.<name>)")
    ap.add_argument("--sensor-size", type=int, nargs=2, metavar=("W", "H"),
                    help="recordings: the sensor size, for files whose header does not record it (.npy)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.dataset != "recordings" and (args.name or args.sensor_size):
        ap.error("--name and --sensor-size are options of `recordings`")
    overrides = args.overrides + flag_overrides("ingest", format=args.format)
    cfg = load_section("ingest", IngestConfig, args.params, overrides)
    paths = load_section("paths", PathsConfig, args.params, overrides)
    spec = get_spec(args.dataset)
    if args.dataset == "recordings":
        try:
            spec = spec.configure(name=args.name, sensor_size=args.sensor_size)
        except ValueError as err:
            ap.error(str(err))
    raw = args.raw or Path(paths.raw_root) / spec.name
    if args.from_tonic:
        from pipeline.datasets.tonic_trees import tonic_spec

        spec, raw = tonic_spec(args.dataset), args.from_tonic
    out = args.out or paths.store_path(spec.name, cfg.format)
    return ingest_and_report(spec, raw, out, cfg, args.split, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
