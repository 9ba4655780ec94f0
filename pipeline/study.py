"""Stage (outside `dvc repro`): datasets x methods x seeds, plus switch ablations, for the report's paired statistics.

    python -m pipeline.study [--datasets digits_dvs orbit_digits] [--methods baseline multi_T tsd ssd tssd]
                             [--seeds 0 1 ... 9] [--ablation LABEL KEY=VALUE [KEY=VALUE ...]] [--no-ablations]
                             [--plan] [--redo] [--recipe NAME] [--set train.k=v ...]

Each run trains and evaluates (the stages as DVC runs them, one process each) into
``<runs_root>/<dataset>/study/<arm>-seed<k>/``, where the arm is a method (``tssd``) or an ablation: a method
with one switch changed, ``--set`` on top of params.yaml (``tssd-bn_shared`` = tssd with
``train.bn_stats=shared``; the method is the label's part before the first ``-``). `pipeline.report` pairs the
runs by seed. Defaults: the datasets of params.yaml ``datasets:``, the five methods, seeds 0-9 and the ablations
in `ABLATIONS` (each with the same seeds). ``--recipe NAME`` trains every dataset with its named recipe NAME
(`pipeline.train --recipe`; each dataset must have one of that name, checked before any run); it is part of each
run's spec.

Resumable: a finished run writes ``study.json`` last -- its spec (dataset, method, seed, every ``--set``, and a hash
of the params.yaml sections that shape it) and its run time. A run whose ``study.json`` matches the current spec
and whose outputs exist is skipped; an unfinished one is trained again from scratch; a finished one with another
spec is refused unless ``--redo`` (a changed params.yaml would otherwise mix two settings in one table). Code
changes are not in the spec: re-run with ``--redo`` after editing the training code.

``--plan`` prints the runs left and an estimate of their time: the mean run time (train + evaluate, from
``study.json``) of the finished runs of the same dataset and method, else of the dataset, else of all.
Run times go to ``study.json`` only (not hashed by DVC; the report does not read them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.config import PathsConfig, load_section, resolve_recipe
from pipeline.guards import exits_on_error
from pipeline.jobs import Job, estimate, job_state, params_hash, run_job
from pipeline.predictions import FILENAME as PREDICTIONS

__all__ = ["ABLATIONS", "METHODS", "Job", "plan", "main"]

METHODS = ("baseline", "multi_T", "tsd", "ssd", "tssd")

#: label -> the ``--set`` overrides of the ablation (the method is the label's part before the first "-"):
#: each changes one of tssd's switches away from its default (README, "the method's switches").
ABLATIONS: dict[str, tuple[str, ...]] = {
    "tssd-bn_shared": ("train.bn_stats=shared",),
    "tssd-bn_per_T": ("train.bn_stats=per_T",),
    "tssd-gap_linear": ("train.weak_head=gap_linear",),
    "tssd-teacher_repeat": ("train.teacher_input=repeat",),
}

OUTPUTS = ("metrics.json", "eval.json", PREDICTIONS)


def plan(datasets: list[str], methods: list[str], seeds: list[int], ablations: dict[str, tuple[str, ...]],
         runs_root: Path, overrides: list[str], recipe: str | None = None) -> list[Job]:
    """Every job of the study, in run order: per seed, the methods then the ablations, per dataset."""
    jobs = []
    for ds in datasets:
        for seed in seeds:
            arms = [(m, m, ()) for m in methods] + [(label, label.split("-", 1)[0], tuple(sets))
                                                     for label, sets in ablations.items()]
            for arm, method, sets in arms:
                jobs.append(Job(ds, arm, method, seed, (*overrides, *sets, f"train.seed={seed}"),
                                runs_root / ds / "study" / f"{arm}-seed{seed}", recipe))
    return jobs


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", help="default: params.yaml datasets:")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--ablation", nargs="+", action="append", metavar=("LABEL", "KEY=VALUE"),
                    help="an ablation run (replaces the default list; repeat for more): label <method>-<name>, "
                         "then its --set overrides")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--plan", action="store_true", help="print the runs left and their estimated time; run nothing")
    ap.add_argument("--redo", action="store_true", help="re-run finished runs whose spec differs")
    ap.add_argument("--recipe", help="the named recipe of every dataset (default: each one's recipes.<dataset>.use)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    paths = load_section("paths", PathsConfig, args.params, args.overrides)
    datasets = args.datasets or list((yaml.safe_load(args.params.read_text()) or {}).get("datasets") or [])
    given = {a[0]: tuple(a[1:]) for a in args.ablation or []}
    for label, sets in given.items():
        if label.split("-", 1)[0] not in METHODS or "-" not in label or not sets or not all("=" in s for s in sets):
            print(f"error: ablation {label} {' '.join(sets)}: the label must be <method>-<name> with a method of "
                  f"{', '.join(METHODS)}, followed by KEY=VALUE overrides", file=sys.stderr)
            return 2
    ablations = {} if args.no_ablations else given or dict(ABLATIONS)
    if not datasets:
        print(f"error: no datasets: give --datasets or set datasets: in {args.params}", file=sys.stderr)
        return 2
    for ds in datasets:  # an unknown recipe name: refused before any run, naming the dataset's recipes
        resolve_recipe(args.params, ds, args.recipe, args.overrides)
    jobs = plan(datasets, args.methods, args.seeds, ablations, Path(paths.runs_root), args.overrides, args.recipe)
    hashes = {ds: params_hash(args.params, ds) for ds in datasets}
    states = [(job, *job_state(job, hashes[job.dataset], OUTPUTS)) for job in jobs]
    finished = [(j, rec) for j, st, rec in states if rec is not None]
    other = [j for j, st, _ in states if st == "other"]
    todo = [j for j, st, _ in states if st != "done" and (st == "todo" or args.redo)]
    est, guessed = estimate(todo, finished)
    print(f"study: {len(jobs)} runs ({len(datasets)} datasets x ({len(args.methods)} methods + {len(ablations)} "
          f"ablations) x {len(args.seeds)} seeds); {len(jobs) - len(todo) - (0 if args.redo else len(other))} done, "
          f"{len(todo)} to run; estimated "
          + ("time unknown (no finished run yet)" if est is None else f"{est / 3600:.2f} h at the measured run times"
             + (f" ({guessed} runs timed by another dataset's runs)" if guessed else "")))
    if other and not args.redo:
        print("error: finished with another spec (params.yaml or --set changed since): "
              + ", ".join(str(j.out) for j in other[:5]) + (" ..." if len(other) > 5 else "")
              + "; re-run with --redo, or use another paths.runs_root", file=sys.stderr)
        return 2
    if args.plan:
        return 0
    for i, job in enumerate(todo, 1):
        print(f"== [{i}/{len(todo)}] {job.dataset} {job.arm} seed {job.seed} -> {job.out}", flush=True)
        if code := run_job(job, args.params, hashes[job.dataset]):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
