"""Batches of stage runs, one process each, resumable: the run machinery of `pipeline.study` and `pipeline.tune`.

A `Job` is one run: the stages (``python -m pipeline.train``, then ``pipeline.evaluate`` or nothing) run as
separate processes, exactly as DVC runs them, into ``job.out``. A finished run writes `DONE` (``study.json``)
last -- its spec (dataset, arm, method, seed, every ``--set``, and a hash of the params.yaml sections that shape
it), its wall-clock run time and the CPU seconds of its processes -- so a batch can be stopped and resumed:
`job_state` tells a finished run with this spec from an unfinished one and from one finished with another spec.
Times go to that file only (not hashed by DVC; no report reads them).

A library module, not a stage: stages never import stages (`tests/test_rooms.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.store import write_atomic

__all__ = ["DONE", "Job", "params_hash", "job_state", "estimate", "run_job"]

DONE = "study.json"


@dataclass(frozen=True)
class Job:
    """One run: where it goes and what defines it."""

    dataset: str
    arm: str
    method: str
    seed: int
    overrides: tuple[str, ...]  # every --set of the run, train.seed last
    out: Path
    recipe: str | None = None  # --recipe NAME (None: each dataset's recipes.<dataset>.use)
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the stages (e.g. OMP_NUM_THREADS)

    def spec(self, params_hash: str) -> dict:
        """What defines the run's result (``recipe``, ``env`` only when set: CPU results depend on the thread
        count)."""
        spec = {"dataset": self.dataset, "arm": self.arm, "method": self.method, "seed": self.seed,
                "set": list(self.overrides), "params": params_hash}
        return spec | ({"recipe": self.recipe} if self.recipe else {}) | ({"env": dict(self.env)} if self.env else {})


def params_hash(params_path: Path, dataset: str) -> str:
    """sha256 of the params.yaml sections that shape a run on ``dataset`` (canonical JSON)."""
    params = yaml.safe_load(params_path.read_text()) or {}
    keys = (dataset, "ingest", "bin", "train", "evaluate")
    shaping = {k: params.get(k) for k in keys} | {"recipe": (params.get("recipes") or {}).get(dataset)}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()


def job_state(job: Job, phash: str, outputs: Sequence[str]) -> tuple[str, dict | None]:
    """("done" | "todo" | "other", the DONE record): finished with this spec (``outputs`` all present), not
    finished, finished with another spec."""
    done = job.out / DONE
    if not done.exists() or not all((job.out / f).exists() for f in outputs):
        return "todo", None
    record = json.loads(done.read_text())
    return ("done" if record.get("spec") == job.spec(phash) else "other"), record


def estimate(todo: list[Job], finished: list[tuple[Job, dict]]) -> tuple[float | None, int]:
    """(seconds for the jobs in ``todo``, each at the mean run time of the finished runs most like it: same dataset
    and method, else same dataset, else any; how many of them fell back to another dataset's runs)."""
    times: dict[tuple, list[float]] = {}
    for job, rec in finished:
        for key in ((job.dataset, job.method), (job.dataset,), ()):
            times.setdefault(key, []).append(float(rec["run_time_s"]))
    total, guessed = 0.0, 0
    for job in todo:
        for key in ((job.dataset, job.method), (job.dataset,), ()):
            if key in times:
                total += sum(times[key]) / len(times[key])
                guessed += key == ()
                break
        else:
            return None, guessed
    return total, guessed


def _stage_args(stage: str, job: Job) -> list[str]:
    if stage == "train":
        return [job.dataset, "--method", job.method, "--out", str(job.out),
                *(["--recipe", job.recipe] if job.recipe else [])]
    if stage == "evaluate":
        return [str(job.out)]
    raise ValueError(f"unknown stage {stage!r}: a job runs train, then optionally evaluate")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(job: Job, params: Path, phash: str, stages: Sequence[str] = ("train", "evaluate"),
            log: str | None = None, batch: str = "study") -> int:
    """Run ``stages`` of ``job``, one process each (``--params``, ``--no-progress``, the job's ``--set`` and its
    ``env`` over this process's environment), then
    write `DONE` (spec, ``run_time_s`` wall clock, ``cpu_s`` user + system CPU of the stage processes).

    ``log``: a file name in ``job.out`` that takes the stages' stdout and stderr (appended) instead of this
    process's. Returns the first non-zero exit code (the folder is then not a finished run), else 0."""
    common = ["--params", str(params), "--no-progress"] + [a for o in job.overrides for a in ("--set", o)]
    env = {**os.environ, **dict(job.env)} if job.env else None
    (job.out / DONE).unlink(missing_ok=True)  # from here on the folder is not a finished run
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    for stage in stages:
        cmd = [sys.executable, "-m", f"pipeline.{stage}", *_stage_args(stage, job), *common]
        if log is None:
            code = subprocess.run(cmd, env=env).returncode
        else:
            job.out.mkdir(parents=True, exist_ok=True)
            with open(job.out / log, "a") as fh:
                code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        if code:
            where = f" (its output: {job.out / log})" if log else ""
            print(f"error: {stage} failed (exit {code}) for {job.out}{where}; the {batch} stops here, a re-run "
                  "resumes", file=sys.stderr)
            return code
    record = {"spec": job.spec(phash), "run_time_s": round(time.monotonic() - t0, 1),
              "cpu_s": round(_children_cpu_s() - cpu0, 1)}
    write_atomic(job.out / DONE, json.dumps(record, indent=2) + "\n")  # last: marks the run finished
    return 0
