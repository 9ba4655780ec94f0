"""Stage (outside `dvc repro`): tune lr, epochs (and α, β, τ_kd) on validation, with the same budget per method.

    python -m pipeline.tune <dataset> [--methods baseline tssd] [--trials 6] [--seeds 100 101] [--plan] [--redo]
                            [--sampler-seed 0] [--threads 1] [--root data_cache/tune] [--recipe NAME]
                            [--params params.yaml] [--set train.k=v ...]

Design (issue 11, part 3: "tune α, β, τ_kd, lr, epochs on validation with the same budget for every method"):

* **Equal budget, paired.** Every method gets the same number of trials and the same seeds. Trial k of every
  method shares one draw of the shared hyperparameters -- ``lr`` log-uniform in [0.03, 0.3], ``epochs`` in
  {10, 15, 20} -- from the *shared* stream; the distillation weights come from an independent *kd* stream --
  ``alpha``, ``beta`` log-uniform in [0.25, 4], ``tau_kd`` in {1, 2, 4} -- and a method takes those it uses
  (`models.losses.METHODS`: alpha with the temporal term, beta with the spatial one, tau_kd with either; tssd all
  three). Each stream is seeded by (``--sampler-seed``, stream, k), so trial k's values do not depend on how many
  trials are asked for: a run with more trials extends the table, and resumes the trials already run. Draws are
  rounded to 3 significant digits (what ``--set`` passes and ``trials.csv`` records).
* **Trial 0 = the current defaults** of the method (params.yaml ``train:``, then the dataset's recipe -- ``--recipe
  NAME`` or its ``use`` -- and its ``by_method`` layer for the method: today lr 0.1, 20 epochs, alpha = beta = 1,
  tau_kd = 2), so tuning can only improve the validation objective. Every trial passes all its values as
  ``--set``, which wins over ``by_method``: pasting the result changes trial 0 and the params hash, so a re-run
  then asks for ``--redo`` (or another ``--root``).
* **Seeds.** ``--seeds`` (default 100 101) must be disjoint from params.yaml ``seeds:`` (the reported runs,
  0 1 2): the runs that choose a setting never are the runs that report it.
* **Objective:** the mean over the tuning seeds of the validation accuracy at T_s of the deployed epoch
  (``metrics.json`` ``val_acc_Ts``; ``train.select`` as configured, default ``last``); a tie goes to fewer
  epochs, then to the lower lr (then the lower trial number). Only trials finished for every seed are ranked.
* **The test split is never read.** Each trial runs only ``pipeline.train`` (one process per run, as
  `pipeline.study` runs it, via `pipeline.jobs`); its stdout (which prints a test accuracy) goes to the run's
  ``train.log``, not to this process's output; ``metrics.json`` is parsed keeping only its ``val_*`` keys and
  ``epochs`` (`read_val`: a test key never becomes a Python value here).
* **One thread per run** (``--threads``, default 1: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of the stages,
  recorded in each run's spec, since CPU results depend on the thread count). On a loaded 2-core machine a
  2-thread tssd run spent 47 s of CPU per epoch (7 epochs, measured), a 1-thread one 7.3 s (presumably the two
  threads, rarely scheduled together, waited at each other's barriers).
* **No new frame cache.** Tuning changes no binning; a run whose caches (every split at T_s and T_t) do not all
  exist is refused before any training, so tuning never writes into a shared ``frames_root``.

Runs go to ``<root>/<dataset>/<method>/trial<k>-seed<s>/`` (a `pipeline.jobs.Job`, resumable like the study: a
finished run writes ``study.json`` last with its spec -- every ``--set`` of the trial -- its wall time and CPU
seconds; a run finished with another spec stops the tuning unless ``--redo``). After every run:
``<root>/<dataset>/trials.csv`` (method, trial, seed, every hyperparameter, val_acc, val_acc_teacher, run_time_s,
cpu_s), ``choice.json`` (the design; per method the chosen values, their mean val accuracy and the ranked
per-trial table) and ``by_method.yaml``, a snippet for ``recipes.<dataset>`` in the ``by_method`` form (CONTRACTS
section 1). Runs go trial-major (trial 0 of every method and seed, then trial 1, ...), so a tuning cut short
holds the same trials for every method.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from models.losses import METHODS
from pipeline.config import IngestConfig, PathsConfig, load_section
from pipeline.frames import BinConfig, Binning, cache_path
from pipeline.guards import exits_on_error
from pipeline.jobs import DONE, Job, estimate, job_state, params_hash, run_job
from pipeline.runs import TrainConfig
from pipeline.store import open_event_store, write_atomic

__all__ = ["LogUniform", "Choice", "SHARED", "KD", "searched", "draw", "trial_values", "plan", "read_val",
           "rank", "main"]


@dataclass(frozen=True)
class LogUniform:
    """exp(U(log low, log high)), rounded to 3 significant digits."""

    low: float
    high: float

    def draw(self, rng: np.random.Generator) -> float:
        return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.3g}")

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice:
    """One of ``values``, uniformly."""

    values: tuple

    def draw(self, rng: np.random.Generator):
        return self.values[int(rng.integers(len(self.values)))]

    def describe(self) -> str:
        return "one of {" + ", ".join(f"{v:g}" for v in self.values) + "}"


#: The shared stream: every method's trial k takes these values.
SHARED: dict[str, LogUniform | Choice] = {"lr": LogUniform(0.03, 0.3), "epochs": Choice((10, 15, 20))}
#: The kd stream (independent of the shared one): each method takes the ones its loss uses (`searched`).
KD: dict[str, LogUniform | Choice] = {"alpha": LogUniform(0.25, 4.0), "beta": LogUniform(0.25, 4.0),
                                      "tau_kd": Choice((1.0, 2.0, 4.0))}
STREAMS = {"shared": 0, "kd": 1}
STAGES = ("train",)
OUTPUTS = ("metrics.json",)
LOG = "train.log"
#: metrics.json keys kept by `read_val` besides ``val_*``: how many epochs the run trained (checked).
KEPT = ("epochs",)


def searched(method: str) -> tuple[str, ...]:
    """The hyperparameters tuned for ``method``: lr, epochs, plus alpha (temporal KD), beta (spatial KD) and
    tau_kd (either) where its loss has the term."""
    spec = METHODS[method]
    kd = (("alpha",) if spec.temporal_kd else ()) + (("beta",) if spec.spatial else ())
    return (*SHARED, *kd, *(("tau_kd",) if kd else ()))


def draw(trial: int, sampler_seed: int = 0) -> dict:
    """Trial ``trial``'s draw of every hyperparameter: SHARED's from the shared stream, KD's from the kd stream,
    each a generator seeded by (sampler_seed, stream, trial) and drawn in the spaces' order."""
    out = {}
    for stream, spaces in (("shared", SHARED), ("kd", KD)):
        rng = np.random.default_rng([sampler_seed, STREAMS[stream], trial])
        out.update({name: space.draw(rng) for name, space in spaces.items()})
    return out


def trial_values(method: str, trial: int, defaults: TrainConfig, sampler_seed: int = 0) -> dict:
    """The values trial ``trial`` of ``method`` runs with (its `searched` keys, in that order): trial 0 the
    method's current defaults, others `draw`'s."""
    values = ({n: getattr(defaults, n) for n in searched(method)} if trial == 0 else draw(trial, sampler_seed))
    return {n: values[n] for n in searched(method)}


def _text(value) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def thread_env(threads: int) -> tuple[tuple[str, str], ...]:
    """The stages' thread count (OpenMP/MKL: torch's intra-op pool), part of every run's spec."""
    return (("OMP_NUM_THREADS", str(threads)), ("MKL_NUM_THREADS", str(threads)))


def plan(dataset: str, methods: list[str], trials: int, seeds: list[int], root: Path, defaults: dict[str, TrainConfig],
         overrides: list[str], sampler_seed: int = 0, threads: int = 1, recipe: str | None = None
         ) -> list[tuple[Job, int, dict]]:
    """Every run of the tuning as (job, trial, values), trial-major: per trial, per seed, the methods."""
    out = []
    for k in range(trials):
        for seed in seeds:
            for m in methods:
                values = trial_values(m, k, defaults[m], sampler_seed)
                sets = (*overrides, *(f"train.{n}={_text(v)}" for n, v in values.items()), f"train.seed={seed}")
                out.append((Job(dataset, f"{m}-trial{k}", m, seed, sets, root / dataset / m / f"trial{k}-seed{seed}",
                                recipe, thread_env(threads)), k, values))
    return out


def _val_only(pairs: list[tuple[str, object]]) -> dict:
    return {k: v for k, v in pairs if k.startswith("val_") or k in KEPT}


def read_val(run: Path) -> dict:
    """``{"val_acc", "val_acc_teacher", "epochs"}`` of a finished run: ``metrics.json``'s ``val_acc_Ts`` and
    ``val_acc_Tt`` (accuracy in [0, 1] at T_s and T_t of the deployed epoch). Parsed with a hook that keeps only
    ``val_*`` keys and ``epochs``: no test value is ever held here."""
    kept = json.loads((run / "metrics.json").read_text(), object_pairs_hook=_val_only)
    assert not any(k.startswith("test") for k in kept), "the tuning must never read a test value"
    if kept.get("val_acc_Ts") is None:
        raise ValueError(f"{run / 'metrics.json'} has no val_acc_Ts: the event store has no validation split")
    return {"val_acc": float(kept["val_acc_Ts"]), "val_acc_teacher": kept.get("val_acc_Tt"),
            "epochs": kept.get("epochs")}


def rank(results: dict[int, dict], seeds: list[int]) -> list[dict]:
    """The trials finished for every seed, best first: ``results`` maps trial -> {"values": {...},
    "val_acc": {seed: acc}, "val_acc_teacher": {seed: acc}}. Objective: mean val accuracy over ``seeds``;
    a tie (equal to 1e-9) -> fewer epochs, then the lower lr, then the lower trial number."""
    rows = []
    for k, r in results.items():
        if not all(s in r["val_acc"] for s in seeds):
            continue
        mean = sum(r["val_acc"][s] for s in seeds) / len(seeds)
        teacher = [r["val_acc_teacher"].get(s) for s in seeds]
        rows.append({"trial": k, **r["values"], "val_acc": {str(s): r["val_acc"][s] for s in seeds},
                     "mean_val_acc": mean,
                     "mean_val_acc_teacher": None if None in teacher else sum(teacher) / len(teacher)})
    return sorted(rows, key=lambda r: (-round(r["mean_val_acc"], 9), r["epochs"], r["lr"], r["trial"]))


def missing_caches(dataset: str, methods: list[str], defaults: dict[str, TrainConfig], params: Path,
                   overrides: list[str], recipe: str | None = None) -> list[Path]:
    """The frame caches a run of these methods would have to build (every split at T_s and T_t)."""
    paths = load_section("paths", PathsConfig, params, overrides)
    ingest = load_section("ingest", IngestConfig, params, overrides)
    bin_cfg = load_section("bin", BinConfig, params, overrides, dataset=dataset, recipe=recipe)
    store = open_event_store(paths.store_path(dataset, ingest.format))
    if "val" not in store.splits:
        raise ValueError(f"{store.path}: no validation split; tuning needs one (ingest.val.{dataset})")
    Ts = sorted({T for m in methods for T in (defaults[m].T_s, defaults[m].teacher_T)})
    wanted = [cache_path(paths.frames_root, store.attrs["dataset"], split, Binning.from_config(bin_cfg, T),
                         store.store_id, store.sensor_size, bin_cfg.format) for T in Ts for split in store.splits]
    return [p for p in wanted if not p.exists()]


CSV_FIELDS = ["method", "trial", "seed", *SHARED, *KD, "val_acc", "val_acc_teacher", "run_time_s", "cpu_s"]


def summarize(runs: list[tuple[Job, int, dict]], methods: list[str], seeds: list[int], trials: int,
              sampler_seed: int, phash: str) -> tuple[str, dict, str]:
    """(trials.csv text, choice.json dict, by_method.yaml text) from the finished runs among ``runs``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for job, k, values in runs:
        state, record = job_state(job, phash, OUTPUTS)
        if state != "done":
            continue
        val = read_val(job.out)
        if val["epochs"] != values["epochs"]:
            raise ValueError(f"{job.out}: trained {val['epochs']} epochs, the trial asks for {values['epochs']}")
        w.writerow({"method": job.method, "trial": k, "seed": job.seed, **values, "val_acc": val["val_acc"],
                    "val_acc_teacher": val["val_acc_teacher"], "run_time_s": record.get("run_time_s"),
                    "cpu_s": record.get("cpu_s")})
        r = results[job.method].setdefault(k, {"values": values, "val_acc": {}, "val_acc_teacher": {}})
        r["val_acc"][job.seed] = val["val_acc"]
        r["val_acc_teacher"][job.seed] = val["val_acc_teacher"]
    choice = {"design": {"trials": trials, "seeds": seeds, "sampler_seed": sampler_seed, "params_hash": phash,
                         "shared": {n: s.describe() for n, s in SHARED.items()},
                         "kd": {n: s.describe() for n, s in KD.items()},
                         "objective": "mean over the seeds of val accuracy at T_s (metrics.json val_acc_Ts); "
                                      "tie: fewer epochs, then lower lr, then lower trial",
                         "trial_0": "the method's current defaults"},
              "methods": {}}
    lines = []
    for m in methods:
        ranked = rank(results[m], seeds)
        entry = {"complete": len(ranked) == trials, "trials_ranked": len(ranked), "searched": list(searched(m)),
                 "chosen": None, "mean_val_acc": None, "ranked": ranked}
        if ranked:
            best = ranked[0]
            entry.update(chosen={"trial": best["trial"], **{n: best[n] for n in searched(m)}},
                         mean_val_acc=best["mean_val_acc"])
            lines.append(f"  {m}: {{" + ", ".join(f"{n}: {_text(best[n])}" for n in searched(m)) + "}"
                         + f"   # trial {best['trial']}, mean val {100 * best['mean_val_acc']:.2f} % over seeds "
                         + " ".join(map(str, seeds)))
        choice["methods"][m] = entry
    done = all(choice["methods"][m]["complete"] for m in methods)
    snippet = ("# paste under recipes.<dataset> (or its named recipe) in params.yaml, next to its train: (the\n"
               "# by_method layer, CONTRACTS 1)\n"
               f"# tuned on validation by pipeline.tune ({trials} trials per method, seeds "
               f"{' '.join(map(str, seeds))}, sampler seed {sampler_seed})"
               + ("" if done else "; INCOMPLETE: not every trial has finished") + "\n"
               "by_method:\n" + "\n".join(lines) + "\n")
    return buf.getvalue(), choice, snippet


def _write_summaries(out: Path, runs, methods, seeds, trials, sampler_seed, phash) -> dict:
    table, choice, snippet = summarize(runs, methods, seeds, trials, sampler_seed, phash)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "trials.csv", table)
    write_atomic(out / "choice.json", json.dumps(choice, indent=2) + "\n")
    write_atomic(out / "by_method.yaml", snippet)
    return choice


def _fmt(values: dict) -> str:
    return " ".join(f"{n}={_text(v)}" for n, v in values.items())


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+", default=["baseline", "tssd"], choices=sorted(METHODS))
    ap.add_argument("--trials", type=int, default=6, help="trials per method (trial 0: the defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--sampler-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per run (part of each run's spec)")
    ap.add_argument("--root", type=Path, default=Path("data_cache/tune"))
    ap.add_argument("--recipe", help="tune this named recipe of the dataset (default: its recipes.<dataset>.use)")
    ap.add_argument("--plan", action="store_true", help="print the trials and the runs left; run nothing")
    ap.add_argument("--redo", action="store_true", help="re-run finished runs whose spec differs")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.threads < 1 or len(set(args.seeds)) != len(args.seeds) or len(set(args.methods)) != len(args.methods):
        print("error: --trials and --threads must be >= 1, and --seeds / --methods must not repeat", file=sys.stderr)
        return 2
    reported = set((yaml.safe_load(args.params.read_text()) or {}).get("seeds") or [])
    if clash := sorted(reported & set(args.seeds)):
        print(f"error: tuning seeds {clash} are among the reported seeds (seeds: in {args.params}); tune on "
              "others (default 100 101)", file=sys.stderr)
        return 2
    defaults = {m: load_section("train", TrainConfig, args.params, [*args.overrides, f"train.method={m}"],
                                dataset=args.dataset, recipe=args.recipe) for m in args.methods}
    runs = plan(args.dataset, args.methods, args.trials, args.seeds, args.root, defaults, args.overrides,
                args.sampler_seed, args.threads, args.recipe)
    phash = params_hash(args.params, args.dataset)
    states = [(job, *job_state(job, phash, OUTPUTS)) for job, _, _ in runs]
    finished = [(j, rec) for j, st, rec in states if rec is not None]
    other = [j for j, st, _ in states if st == "other"]
    todo = [(j, k, v) for (j, k, v), (_, st, _) in zip(runs, states) if st == "todo" or (st == "other" and args.redo)]
    est, _ = estimate([j for j, _, _ in todo], finished)
    print(f"tune {args.dataset}: {args.trials} trials x {len(args.seeds)} seeds x {len(args.methods)} methods = "
          f"{len(runs)} runs; {len(runs) - len(todo) - (0 if args.redo else len(other))} done, {len(todo)} to run; "
          "estimated " + ("time unknown (no finished run yet)" if est is None else f"{est / 60:.0f} min"))
    for m in args.methods:
        for k in range(args.trials):
            print(f"  {m} trial {k}: {_fmt(trial_values(m, k, defaults[m], args.sampler_seed))}")
    if other and not args.redo:
        print("error: finished with another spec (params.yaml, --set or the draws changed since): "
              + ", ".join(str(j.out) for j in other[:5]) + (" ..." if len(other) > 5 else "")
              + "; re-run with --redo, or use another --root", file=sys.stderr)
        return 2
    if missing := missing_caches(args.dataset, args.methods, defaults, args.params, args.overrides, args.recipe):
        print("error: tuning would build frame caches that do not exist (" + ", ".join(map(str, missing))
              + "); bin them first (python -m pipeline.bin)", file=sys.stderr)
        return 2
    if args.plan:
        return 0
    out = args.root / args.dataset
    for i, (job, k, values) in enumerate(todo, 1):
        print(f"== [{i}/{len(todo)}] {job.method} trial {k} seed {job.seed}: {_fmt(values)} -> {job.out}", flush=True)
        if code := run_job(job, args.params, phash, STAGES, log=LOG, batch="tuning"):
            return code
        val, rec = read_val(job.out), json.loads((job.out / DONE).read_text())
        print(f"   val@T_s={100 * val['val_acc']:.2f}% val@T_t="
              + ("-" if val["val_acc_teacher"] is None else f"{100 * val['val_acc_teacher']:.2f}%")
              + f" ({rec['run_time_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU)", flush=True)
        _write_summaries(out, runs, args.methods, args.seeds, args.trials, args.sampler_seed, phash)
    choice = _write_summaries(out, runs, args.methods, args.seeds, args.trials, args.sampler_seed, phash)
    for m, entry in choice["methods"].items():
        if entry["chosen"]:
            print(f"{m}: chose {_fmt({n: entry['chosen'][n] for n in searched(m)})} (trial {entry['chosen']['trial']},"
                  f" mean val {100 * entry['mean_val_acc']:.2f} %)")
    print(f"wrote {out / 'trials.csv'}, {out / 'choice.json'}, {out / 'by_method.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
