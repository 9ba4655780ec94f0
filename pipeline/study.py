"""Stage (outside `dvc repro`): every method x several seeds on one dataset, for mean ± std in the report.

    python -m pipeline.study [digits_dvs] [--methods baseline tsd ssd tssd] [--seeds 0 1 2] [--set train.k=v ...]

Each run trains and evaluates into ``<runs_root>/<dataset>/study/<method>-seed<k>/``; `pipeline.report`
then adds a mean ± std table. Runs already finished (metrics.json present) are skipped, so an interrupted
study continues where it stopped. `make study` runs it on digits_dvs and refreshes the report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline.config import PathsConfig, load_section
from pipeline.guards import exits_on_error

__all__ = ["main"]


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?", default="digits_dvs")
    ap.add_argument("--methods", nargs="+", default=["baseline", "tsd", "ssd", "tssd"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    paths = load_section("paths", PathsConfig, args.params, args.overrides)
    root = Path(paths.runs_root) / args.dataset / "study"
    common = ["--params", str(args.params), "--no-progress"] + [a for o in args.overrides for a in ("--set", o)]
    for seed in args.seeds:
        for method in args.methods:
            out = root / f"{method}-seed{seed}"
            if (out / "metrics.json").exists() and (out / "eval.json").exists():
                print(f"{out}: done, skipped")
                continue
            print(f"== {args.dataset} {method} seed {seed} -> {out}", flush=True)
            for stage, stage_args in (("train", [args.dataset, "--method", method, "--out", str(out),
                                                  "--set", f"train.seed={seed}"]),
                                      ("evaluate", [str(out)])):  # the stages as DVC runs them, one process each
                code = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *stage_args, *common]).returncode
                if code:
                    return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
