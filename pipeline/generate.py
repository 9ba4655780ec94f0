"""Stage: synthesise an embedded dataset's raw files (offline; nothing is downloaded).

    python -m pipeline.generate digits_dvs|orbit_digits [--out DIR] [--params params.yaml]
                                [--set <dataset>.key=value ...] [--workers N] [--no-progress]

digits_dvs: scikit-learn's 1797 handwritten digits seen by the DVS emulator in `pipeline.datasets.digits_dvs`
(saccades: the class is the static shape); orbit_digits: the same digits moving on a circular orbit, clockwise or
counter-clockwise (`pipeline.datasets.orbit_digits`, 20 classes: the direction needs time). Both are written in
DVS128-Gesture's on-disk layout (AEDAT 3.1 + label csv + trials_to_train/test.txt) into
``<paths.raw_root>/<dataset>`` (or ``--out``), with ``<dataset>.json`` (config and counts). The folder is built
under a temporary sibling name and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import PathsConfig, load_section
from pipeline.datasets import digits_dvs, orbit_digits
from pipeline.datasets.digits_dvs import DigitsDVSConfig
from pipeline.datasets.orbit_digits import OrbitDigitsConfig
from pipeline.datasets.dvs_gesture import write_recording, write_trials
from pipeline.guards import exits_on_error
from pipeline.store import atomic_output

__all__ = ["run", "summary", "main", "GENERATORS"]

#: dataset -> (its module: synthesize, GENERATOR_VERSION; its config section's dataclass)
_MODULES = {"digits_dvs": (digits_dvs, DigitsDVSConfig), "orbit_digits": (orbit_digits, OrbitDigitsConfig)}
GENERATORS = tuple(_MODULES)


def _dataset_of(cfg: DigitsDVSConfig | OrbitDigitsConfig) -> str:
    for name, (_module, cls) in _MODULES.items():
        if type(cfg) is cls:
            return name
    raise TypeError(f"no generator for a {type(cfg).__name__}; configs: {', '.join(c.__name__ for _, c in _MODULES.values())}")


def run(cfg: DigitsDVSConfig | OrbitDigitsConfig, out: Path, workers: int = 1, progress: bool = True) -> dict:
    """Generate the dataset ``cfg`` configures into ``out`` atomically (replacing what is there). Returns the
    counts written."""
    name = _dataset_of(cfg)
    module = _MODULES[name][0]
    out = Path(out)
    t0 = time.perf_counter()
    n_recordings = cfg.users * len(cfg.conditions)
    counts = {"recordings": 0, "events": 0, "events_in_windows": 0,
              "samples": {"train": 0, "test": 0}, "recordings_per_split": {"train": 0, "test": 0}}
    names: dict[str, list[str]] = {"train": [], "test": []}
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        bar = tqdm(total=n_recordings, desc=f"generate {name}", unit="rec", disable=not progress, file=sys.stderr)
        for rec in module.synthesize(cfg, workers=workers):
            ev = rec.events
            write_recording(tmp, rec.plan.name, ev["x"], ev["y"], ev["t"], ev["p"], rec.windows)
            names[rec.plan.split].append(rec.plan.name)
            bounds = np.searchsorted(ev["t"], [[w.start_us, w.end_us] for w in rec.windows])
            counts["recordings"] += 1
            counts["recordings_per_split"][rec.plan.split] += 1
            counts["samples"][rec.plan.split] += len(rec.windows)
            counts["events"] += len(ev)
            counts["events_in_windows"] += int((bounds[:, 1] - bounds[:, 0]).sum())
            bar.update(1)
        bar.close()
        write_trials(tmp, names["train"], names["test"])
        manifest = {"generator": module.GENERATOR_VERSION, "config": dataclasses.asdict(cfg), "counts": counts}
        (tmp / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    counts["dataset"] = name
    return counts


def summary(counts: dict, out: Path) -> str:
    """The closing report: recordings, samples per split, events, mean events per sample."""
    n = counts["samples"]["train"] + counts["samples"]["test"]
    return "\n".join([
        f"{counts.get('dataset', 'digits_dvs')} raw files in {out} ({counts['seconds']} s)",
        f"  recordings {counts['recordings']} (train {counts['recordings_per_split']['train']}, "
        f"test {counts['recordings_per_split']['test']})",
        f"  samples    train {counts['samples']['train']}, test {counts['samples']['test']}",
        f"  events     {counts['events']:,} ({counts['events_in_windows']:,} inside windows; "
        f"{counts['events_in_windows'] / max(n, 1):,.0f} per sample on average)",
    ])


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=GENERATORS)
    ap.add_argument("--out", type=Path, help="output folder (default: <paths.raw_root>/<dataset>)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                    help="recordings synthesised concurrently (the output does not depend on it)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_section(args.dataset, _MODULES[args.dataset][1], args.params, args.overrides)
    paths = load_section("paths", PathsConfig, args.params, args.overrides)
    out = args.out or Path(paths.raw_root) / args.dataset
    counts = run(cfg, out, workers=max(args.workers, 1), progress=not args.no_progress)
    print(summary(counts, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
