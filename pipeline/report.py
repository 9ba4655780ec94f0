"""Stage: compare methods -- accuracy tables, paired statistics and PNG plots from every run's files.

    python -m pipeline.report [--runs data_cache/runs] [--out data_cache/report] [--n-boot 10000] [--boot-seed 0]

Reads, per run folder, ``metrics.json`` (method, arch, T_s, T_t, epochs, parameters; validation accuracies when
present), ``eval.json`` (test accuracy at every inference T) and ``predictions.csv`` (per-sample test predictions,
`pipeline.predictions`). Two groups of runs per dataset::

    <runs>/<dataset>/<method>/                    the main runs (`dvc repro`); <method>-seed<k>/ also accepted
    <runs>/<dataset>/study/<arm>-seed<k>/         the `make study` runs; <arm> is a method (tssd) or an
                                                  ablation of one (tssd-bn_shared: method tssd, one switch changed)

Within a group, runs of two arms are paired by seed and compared at the deployed T_s (`pipeline.stats`): every arm
against baseline, tsd and tssd against the multi_T control (both CEs, no distillation), every ablation against its
method. Each comparison reports the per-seed exact McNemar p-value, the mean accuracy difference with its 95 %
bootstrap interval over seeds and test samples, and a verdict: "A beats B" only when the interval excludes 0,
otherwise "no detectable difference". The teacher gap is the test accuracy at T_t minus that at T_s (eval.json).

Static-image datasets (params.yaml ``image_datasets:``, direct encoding, `pipeline.train` on an image store) are
reported like the event datasets: the same folders, tables and paired statistics, their samples paired by
``predictions.csv``'s ``index``, ``source_index`` and ``label``.

Every number is read from the run files; nothing is typed in by hand, nothing is selected on test, and the output
holds no wall-clock values (it is a DVC output: the same runs give the same bytes).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, load_params
from pipeline.predictions import FILENAME as PREDICTIONS, Predictions, PredictionsError, read_predictions
from pipeline.stats import Bootstrap, format_mean_std, mcnemar_exact, paired_bootstrap
from pipeline.store import write_atomic

__all__ = ["Run", "Comparison", "ReportError", "collect", "comparisons", "compare", "render_markdown", "main"]

METHOD_ORDER = ("baseline", "multi_T", "tsd", "ssd", "tssd")
CONTROLS = {"tsd": "multi_T", "tssd": "multi_T"}  # distillation vs the same multi-T training without it
_SEEDED = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)$")


class ReportError(ValueError):
    """Run files that contradict each other (names the files)."""


@dataclass(frozen=True)
class Run:
    """One run folder: its arm label, seed (None when the folder name has none), and what its files say."""

    path: Path
    arm: str
    seed: int | None
    metrics: dict
    eval: dict[int, float]  # inference T -> test accuracy (fraction), from eval.json
    predictions: Predictions | None

    @property
    def method(self) -> str:
        return self.metrics.get("method", self.arm)

    @property
    def T_s(self) -> int:
        return int(self.metrics["T_s"])

    @property
    def T_t(self) -> int | None:
        t = self.metrics.get("T_t")
        return None if t is None else int(t)

    @property
    def acc_Ts(self) -> float | None:
        return self.eval.get(self.T_s)

    @property
    def acc_Tt(self) -> float | None:
        return None if self.T_t is None else self.eval.get(self.T_t)

    @property
    def teacher_gap(self) -> float | None:
        """Test accuracy at T_t minus at T_s (fraction), both from eval.json."""
        return None if self.acc_Ts is None or self.acc_Tt is None else self.acc_Tt - self.acc_Ts

    @property
    def val_acc(self) -> float | None:
        """Validation accuracy at T_s when metrics.json has one (``val_acc_Ts``, else ``val_acc``)."""
        for key in ("val_acc_Ts", "val_acc"):
            if isinstance(self.metrics.get(key), (int, float)):
                return float(self.metrics[key])
        return None


def _load(run: Path) -> Run | None:
    """The run in ``run`` (None when it has no metrics.json: not a finished run); checks predictions vs eval."""
    m = run / "metrics.json"
    if not m.exists():
        return None
    metrics = json.loads(m.read_text())
    e = run / "eval.json"
    ev = {int(r["T"]): float(r["test_acc"]) for r in json.loads(e.read_text())} if e.exists() else {}
    pred = read_predictions(run / PREDICTIONS) if (run / PREDICTIONS).exists() else None
    if pred is not None:
        for T, acc in ev.items():
            if T in pred.Ts and abs(float(pred.correct(T).mean()) - acc) > 1e-9:
                raise ReportError(f"{run / PREDICTIONS} gives test accuracy {pred.correct(T).mean():.6f} at T={T}, "
                                  f"{e} says {acc:.6f}: the files come from different evaluations; re-run "
                                  f"python -m pipeline.evaluate {run}")
    hit = _SEEDED.match(run.name)
    arm, seed = (hit["arm"], int(hit["seed"])) if hit else (run.name, None)
    return Run(run, arm, seed, metrics, ev, pred)


def _dirs(p: Path) -> list[Path]:
    return sorted(q for q in p.iterdir() if q.is_dir()) if p.is_dir() else []


def collect(runs_root: Path) -> dict[str, dict[str, dict[str, dict[int | None, Run]]]]:
    """``{dataset: {"main" | "study": {arm: {seed: Run}}}}`` of every finished run under ``runs_root``."""
    out: dict = {}
    for ds_dir in _dirs(Path(runs_root)):
        for group, parent in (("main", ds_dir), ("study", ds_dir / "study")):
            for run_dir in _dirs(parent):
                if group == "main" and run_dir.name == "study":
                    continue
                if (run := _load(run_dir)) is None:
                    continue
                arms = out.setdefault(ds_dir.name, {}).setdefault(group, {})
                if run.seed in arms.setdefault(run.arm, {}):
                    raise ReportError(f"{run_dir} and {arms[run.arm][run.seed].path}: two runs of {run.arm} with "
                                      f"seed {run.seed}")
                arms[run.arm][run.seed] = run
    return out


def restrict_main(runs: dict, datasets: list[str], methods: list[str], seeds: list[int]) -> list[Path]:
    """Keep, as main runs, exactly the ``datasets x methods x seeds`` matrix `dvc repro` trains (in place):
    a matrix run that is missing (or unfinished) is a ReportError naming its folder -- a report over part of the
    matrix would look complete -- and a main run folder outside it (left from an earlier params.yaml) is dropped
    rather than reported as current. Returns the dropped folders. Study runs are left as they are."""
    dropped: list[Path] = []
    for ds in list(runs):
        main = runs[ds].get("main", {})
        for arm in list(main):
            for seed in list(main[arm]):
                if not (ds in datasets and arm in methods and seed in seeds):
                    dropped.append(main[arm].pop(seed).path)
            if not main[arm]:
                del main[arm]
        if "main" in runs[ds] and not main:
            del runs[ds]["main"]
        if not runs[ds]:
            del runs[ds]
    for ds in datasets:
        for m in methods:
            for k in seeds:
                if k not in runs.get(ds, {}).get("main", {}).get(m, {}):
                    raise ReportError(f"{ds}/{m}-seed{k}: a run of params.yaml's datasets x methods x seeds has no "
                                      "finished metrics.json under the runs folder (run `dvc repro`)")
    return sorted(dropped)


def _arm_key(arm: str, runs: dict) -> tuple:
    method = next(iter(runs.values())).method
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method, arm != method, arm


def _ordered(arms: dict) -> list[str]:
    return sorted(arms, key=lambda a: _arm_key(a, arms[a]))


def comparisons(arms: dict[str, dict]) -> list[tuple[str, str]]:
    """The (A, B) pairs to test, A - B: each arm vs baseline, tsd/tssd vs multi_T, each ablation vs its method."""
    pairs: list[tuple[str, str]] = []
    for arm in _ordered(arms):
        method = next(iter(arms[arm].values())).method
        for ref in ("baseline", CONTROLS.get(arm), method if arm != method else None):
            if ref is not None and ref != arm and ref in arms and (arm, ref) not in pairs:
                pairs.append((arm, ref))
    return pairs


@dataclass(frozen=True)
class Comparison:
    """A vs B at inference T over the seeds both have: per-seed McNemar, the bootstrap of the mean difference."""

    a: str
    b: str
    T: int
    seeds: tuple
    mcnemar: tuple  # McNemar per seed, in seed order
    boot: Bootstrap

    @property
    def verdict(self) -> str:
        if self.boot.lo > 0:
            return f"{self.a} beats {self.b}"
        if self.boot.hi < 0:
            return f"{self.b} beats {self.a}"
        return "no detectable difference"


def _seed_key(s: int | None) -> int:
    return -1 if s is None else s


def compare(a: str, runs_a: dict, b: str, runs_b: dict, n_boot: int = 10_000, boot_seed: int = 0
            ) -> Comparison | str:
    """Pair ``runs_a`` and ``runs_b`` (``{seed: Run}``) by seed at A's T_s; a string says why they cannot be."""
    seeds = sorted(set(runs_a) & set(runs_b), key=_seed_key)
    if not seeds:
        return f"no common seeds ({a}: {sorted(runs_a, key=_seed_key)}, {b}: {sorted(runs_b, key=_seed_key)})"
    T = runs_a[seeds[0]].T_s
    pa, pb = [], []
    for s in seeds:
        ra, rb = runs_a[s], runs_b[s]
        if ra.T_s != T or rb.T_s != T:
            return f"different T_s ({ra.path}: {ra.T_s}, {rb.path}: {rb.T_s})"
        for r in (ra, rb):
            if r.predictions is None or T not in r.predictions.Ts:
                return f"{r.path / PREDICTIONS} missing or without T={T}: re-run python -m pipeline.evaluate {r.path}"
        pa.append(ra.predictions)
        pb.append(rb.predictions)
    if not all(p.same_samples(pa[0]) for p in pa + pb):
        return "the runs were scored on different test samples (predictions.csv index/recording or source_index/label differ)"
    A = np.stack([p.correct(T) for p in pa])
    B = np.stack([p.correct(T) for p in pb])
    tests = tuple(mcnemar_exact(x, y) for x, y in zip(A, B))
    return Comparison(a, b, T, tuple(seeds), tests, paired_bootstrap(A, B, n_boot=n_boot, seed=boot_seed))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _pt(v: float) -> str:
    return f"{100 * v:+.2f}"


def _p(v: float) -> str:
    return f"{v:.2g}" if v < 0.01 else f"{v:.2f}"


def _comparison_table(arms: dict, n_boot: int, boot_seed: int) -> list[str]:
    pairs = comparisons(arms)
    if not pairs:
        return []
    lines = ["| A vs B | T | seeds | Δ acc A − B (pt) | 95 % CI (pt) | McNemar p per seed (A only / B only right) "
             "| verdict |", "|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        c = compare(a, arms[a], b, arms[b], n_boot, boot_seed)
        if isinstance(c, str):
            lines.append(f"| {a} vs {b} | – | – | – | – | – | not compared: {c} |")
            continue
        per_seed = ", ".join(f"{_p(t.p_value)} ({t.n01}/{t.n10})" for t in c.mcnemar)
        lines.append(f"| {a} vs {b} | {c.T} | {len(c.seeds)} | {_pt(c.boot.delta)} | "
                     f"[{_pt(c.boot.lo)}, {_pt(c.boot.hi)}] | {per_seed} | {c.verdict} |")
    return lines + ["", f"Δ: mean over the paired seeds of the test accuracy difference at T (the deployed T_s). "
                        f"95 % CI: percentile bootstrap, {n_boot} replicates (seed {boot_seed}), resampling seeds "
                        "and test samples (`pipeline.stats`). McNemar: exact two-sided test per seed on the "
                        "discordant samples, uncorrected for multiple comparisons. A method *beats* another only "
                        "when the CI excludes 0.", ""]


def _main_table(arms: dict) -> list[str]:
    runs = [r for arm in _ordered(arms) for _, r in sorted(arms[arm].items(), key=lambda kv: _seed_key(kv[0]))]
    Ts = sorted({T for r in runs for T in r.eval})
    has_val = any(r.val_acc is not None for r in runs)
    has_seed = any(r.seed is not None for r in runs)
    head = ["method"] + (["seed"] if has_seed else []) + ["arch", "T_s", "T_t", "epochs"] + \
        (["val acc @T_s"] if has_val else []) + [f"test acc @T={T}" for T in Ts] + \
        ["teacher gap T_t − T_s (pt)", "deploy params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r.arm] + (["–" if r.seed is None else str(r.seed)] if has_seed else [])
        cells += [str(r.metrics.get("arch", "–")), str(r.T_s), "–" if r.T_t is None else str(r.T_t),
                  str(r.metrics.get("epochs", "–"))]
        cells += [_pct(r.val_acc)] if has_val else []
        cells += [_pct(r.eval.get(T)) for T in Ts]
        cells += ["–" if r.teacher_gap is None else _pt(r.teacher_gap),
                  f"{r.metrics['deploy_params']:,}" if "deploy_params" in r.metrics else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _study_table(arms: dict) -> list[str]:
    has_val = any(r.val_acc is not None for runs in arms.values() for r in runs.values())
    head = ["arm", "method", "seeds", "T_s", "T_t"] + (["val acc @T_s"] if has_val else []) + \
        ["test acc @T_s", "test acc @T_t", "teacher gap T_t − T_s (pt)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in _ordered(arms):
        runs = [r for _, r in sorted(arms[arm].items(), key=lambda kv: _seed_key(kv[0]))]
        T_s = sorted({r.T_s for r in runs})
        T_t = sorted({r.T_t for r in runs if r.T_t is not None})
        cells = [arm, runs[0].method, str(len(runs)), "/".join(map(str, T_s)), "/".join(map(str, T_t)) or "–"]
        cells += [format_mean_std([r.val_acc for r in runs])] if has_val else []
        cells += [format_mean_std([r.acc_Ts for r in runs]), format_mean_std([r.acc_Tt for r in runs]),
                  format_mean_std([r.teacher_gap for r in runs], signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "mean ± sample standard deviation over seeds.", ""]


def render_markdown(runs: dict, n_boot: int = 10_000, boot_seed: int = 0) -> str:
    """The report text of `collect`'s result (deterministic: the same runs give the same text)."""
    lines = ["# Results", "",
             "Generated by `python -m pipeline.report` from the runs' `metrics.json`, `eval.json` and "
             "`predictions.csv`. Accuracies are top-1 in %; test accuracies come from the single evaluation after "
             "training (`eval.json`), never from a per-epoch test score, and nothing was selected on test.", ""]
    for ds in sorted(runs):
        if "main" in runs[ds]:
            arms = runs[ds]["main"]
            lines += [f"## {ds}", ""] + _main_table(arms) + _comparison_table(arms, n_boot, boot_seed)
            lines += [f"![accuracy vs T]({ds}_accuracy_vs_T.png) ![training history]({ds}_history.png)", ""]
        if "study" in runs[ds]:
            arms = runs[ds]["study"]
            lines += [f"## {ds} — study", ""] + _study_table(arms) + _comparison_table(arms, n_boot, boot_seed)
            lines += [f"![accuracy vs T, mean over seeds]({ds}_study_accuracy_vs_T.png)", ""]
    if not runs:
        lines.append("No runs found.")
    return "\n".join(lines).rstrip("\n") + "\n"


def _line_plot(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, path: Path,
               log2_x: bool = False) -> None:
    """One line per method: ``series[method] = (xs, ys)``; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", markersize=3, label=label)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _plots(runs: dict, out: Path) -> None:
    for ds in sorted(runs):
        if "main" in runs[ds]:
            arms = runs[ds]["main"]
            acc_vs_T, history, ylab = {}, {}, "test accuracy @T_s (%)"
            for arm in _ordered(arms):
                for seed, r in sorted(arms[arm].items(), key=lambda kv: _seed_key(kv[0])):
                    label = arm if seed is None else f"{arm} seed {seed}"
                    if r.eval:
                        acc_vs_T[label] = (sorted(r.eval), [100 * r.eval[T] for T in sorted(r.eval)])
                    hist = r.path / "history.csv"
                    if hist.exists():
                        rows = list(csv.DictReader(hist.open()))
                        col = "val_acc" if rows and "val_acc" in rows[0] else "test_acc"
                        ylab = f"{col.replace('_acc', '')} accuracy @T_s (%)"
                        history[label] = ([int(x["epoch"]) for x in rows], [100 * float(x[col]) for x in rows])
            _line_plot(acc_vs_T, "inference timesteps T", "test accuracy (%)", f"{ds}: accuracy vs T",
                       out / f"{ds}_accuracy_vs_T.png", log2_x=True)
            _line_plot(history, "epoch", ylab, f"{ds}: training", out / f"{ds}_history.png")
        if "study" in runs[ds]:
            arms, series = runs[ds]["study"], {}
            for arm in _ordered(arms):
                Ts = sorted(set.intersection(*(set(r.eval) for r in arms[arm].values())))
                if Ts:
                    series[arm] = (Ts, [100 * float(np.mean([r.eval[T] for r in arms[arm].values()])) for T in Ts])
            _line_plot(series, "inference timesteps T", "test accuracy (%), mean over seeds",
                       f"{ds} study: accuracy vs T", out / f"{ds}_study_accuracy_vs_T.png", log2_x=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("data_cache/runs"))
    ap.add_argument("--out", type=Path, default=Path("data_cache/report"))
    ap.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates per comparison")
    ap.add_argument("--boot-seed", type=int, default=0, help="seed of every comparison's bootstrap")
    ap.add_argument("--params", type=Path, help="report as main runs exactly params.yaml's (datasets + "
                    "image_datasets) x methods x seeds (what `dvc repro` trains): a missing one is an error, others "
                    "are left out")
    args = ap.parse_args(argv)
    try:
        runs = collect(args.runs)
        if args.params:
            p = load_params(args.params)
            datasets = list(p.get("datasets") or []) + list(p.get("image_datasets") or [])  # events, then images
            for folder in restrict_main(runs, datasets, list(p.get("methods") or []),
                                        [int(k) for k in p.get("seeds") or []]):
                print(f"note: {folder} is not in {args.params}'s datasets x methods x seeds: left out",
                      file=sys.stderr)
        text = render_markdown(runs, args.n_boot, args.boot_seed)
    except (ReportError, PredictionsError, ConfigError) as err:
        print(f"error: {err}\nnothing was written.", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "summary.md", text)
    _plots(runs, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
