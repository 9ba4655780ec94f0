"""pipeline.tune: paired draws, trial 0 = defaults, resume, the test split never read, the objective's tie rule.

Training is replaced by a fake `subprocess.run` that writes a metrics.json whose val accuracy is a fixed function of
the run's --set values (and whose test accuracies are noise), so every test runs in well under a second.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import jobs, tune
from pipeline.runs import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _defaults(**kw) -> dict[str, TrainConfig]:
    return {m: TrainConfig(method=m, **kw) for m in ("baseline", "tsd", "ssd", "tssd", "multi_T")}


def test_trial_k_shares_the_shared_draw_and_kd_comes_from_its_own_stream():
    d = _defaults()
    for k in range(1, 20):
        base, tssd = tune.trial_values("baseline", k, d["baseline"]), tune.trial_values("tssd", k, d["tssd"])
        assert list(base) == ["lr", "epochs"] and list(tssd) == ["lr", "epochs", "alpha", "beta", "tau_kd"]
        assert {n: tssd[n] for n in base} == base  # paired: trial k of both methods, the same lr and epochs
        assert 0.03 <= base["lr"] <= 0.3 and base["epochs"] in (10, 15, 20)
        assert all(0.25 <= tssd[n] <= 4.0 for n in ("alpha", "beta")) and tssd["tau_kd"] in (1.0, 2.0, 4.0)
        # the kd stream is its own generator: what it draws does not depend on the shared stream, and vice versa
        rng = np.random.default_rng([0, tune.STREAMS["kd"], k])
        assert [tssd[n] for n in tune.KD] == [s.draw(rng) for s in tune.KD.values()]
        rng = np.random.default_rng([0, tune.STREAMS["shared"], k])
        assert [base[n] for n in tune.SHARED] == [s.draw(rng) for s in tune.SHARED.values()]
        # tsd takes tssd's alpha and tau_kd, ssd its beta: one kd draw per trial
        assert tune.trial_values("tsd", k, d["tsd"]) == {n: tssd[n] for n in ("lr", "epochs", "alpha", "tau_kd")}
        assert tune.trial_values("ssd", k, d["ssd"]) == {n: tssd[n] for n in ("lr", "epochs", "beta", "tau_kd")}
        assert tune.trial_values("multi_T", k, d["multi_T"]) == base
    draws = [tune.draw(k) for k in range(1, 40)]
    assert len({(x["lr"], x["alpha"]) for x in draws}) == len(draws)  # really drawn, not one value
    assert tune.draw(3, sampler_seed=1) != tune.draw(3)
    # a trial's values do not depend on how many trials are planned (more trials extend the table)
    few = tune.plan("orbit_digits", ["baseline", "tssd"], 3, [100, 101], Path("r"), d, [])
    many = tune.plan("orbit_digits", ["baseline", "tssd"], 6, [100, 101], Path("r"), d, [])
    assert [(j, k, v) for j, k, v in many if k < 3] == few
    # trial-major, paired: per trial, every seed of every method before the next trial
    assert [(j.method, k, j.seed) for j, k, _ in few[:4]] == [("baseline", 0, 100), ("tssd", 0, 100),
                                                              ("baseline", 0, 101), ("tssd", 0, 101)]
    job = few[-1][0]
    assert job.out == Path("r/orbit_digits/tssd/trial2-seed101") and job.overrides[-1] == "train.seed=101"


def test_trial_0_is_the_current_defaults():
    from pipeline.config import load_section

    # params.yaml's train: + recipe, without the by_method layer the tuning itself wrote there
    got = {m: tune.trial_values(m, 0, load_section("train", TrainConfig, ROOT / "params.yaml",
                                                   [f"train.method={m}"], dataset="orbit_digits", by_method=False))
           for m in ("baseline", "tssd")}
    assert got == {"baseline": {"lr": 0.1, "epochs": 20},
                   "tssd": {"lr": 0.1, "epochs": 20, "alpha": 1.0, "beta": 1.0, "tau_kd": 2.0}}
    # and it follows params.yaml: trial 0 is whatever the method runs today, by_method layer included
    assert tune.trial_values("tssd", 0, TrainConfig(lr=0.05, alpha=0.5))["lr"] == 0.05
    params = {"train": {"lr": 0.1}, "recipes": {"orbit_digits": {"by_method": {"tssd": {"lr": 0.05, "alpha": 2.0}}}}}
    cfg = {m: load_section("train", TrainConfig, params, [f"train.method={m}"], dataset="orbit_digits")
           for m in ("baseline", "tssd")}
    assert tune.trial_values("tssd", 0, cfg["tssd"])["alpha"] == 2.0 and cfg["tssd"].lr == 0.05
    assert tune.trial_values("baseline", 0, cfg["baseline"]) == {"lr": 0.1, "epochs": 20}


def test_rank_objective_and_tie_rule():
    def r(lr, epochs, *accs):
        return {"values": {"lr": lr, "epochs": epochs}, "val_acc": dict(zip((100, 101), accs)),
                "val_acc_teacher": dict(zip((100, 101), accs))}

    results = {0: r(0.1, 20, 0.70, 0.80), 1: r(0.2, 15, 0.80, 0.70), 2: r(0.05, 15, 0.75, 0.75),
               3: r(0.3, 10, 0.9), 4: r(0.1, 20, 0.60, 0.60)}
    ranked = tune.rank(results, [100, 101])
    # 0, 1, 2 tie at 0.75 (to rounding): fewer epochs first (1, 2), then the lower lr (2 before 1); 3 unfinished
    assert [x["trial"] for x in ranked] == [2, 1, 0, 4]
    assert ranked[0]["mean_val_acc"] == pytest.approx(0.75) and ranked[0]["val_acc"] == {"100": 0.75, "101": 0.75}
    results[5] = r(0.04, 10, 0.75, 0.75)
    assert tune.rank(results, [100, 101])[0]["trial"] == 5
    results[6] = r(0.3, 20, 0.76, 0.75)  # a better mean beats any tie-break
    assert tune.rank(results, [100, 101])[0]["trial"] == 6


# ------------------------------------------------------------------------------------------ the CLI, faked training
def _val_acc(sets: dict, seed: int) -> float:
    """A deterministic 'val accuracy' of a trial: best near lr 0.15, alpha 2 (for the test of the choice)."""
    a = 0.8 - abs(float(sets["lr"]) - 0.15) - 0.02 * abs(float(sets.get("alpha", 2.0)) - 2.0) + 0.001 * (seed - 100)
    return round(a, 6)


class _Calls(list):
    threads: list[str]


@pytest.fixture
def fake_train(monkeypatch):
    """`subprocess.run` of pipeline.train, recorded: writes metrics.json (val from `_val_acc`, test: noise) and
    prints a test accuracy to its stdout, as the real stage does."""
    calls, rng, threads = _Calls(), np.random.default_rng(0), ["1"]

    def run(cmd, stdout=None, stderr=None, **kwargs):
        assert cmd[2] == "pipeline.train", "tuning runs train only"
        assert kwargs["env"]["OMP_NUM_THREADS"] == kwargs["env"]["MKL_NUM_THREADS"] == threads[0]
        args = cmd[3:]
        out = Path(args[args.index("--out") + 1])
        sets = {}
        for i in (i for i, x in enumerate(args) if x == "--set"):
            key, value = args[i + 1].split("=", 1)
            sets[key.removeprefix("train.")] = value
        calls.append((args[args.index("--method") + 1], sets))
        out.mkdir(parents=True, exist_ok=True)
        seed = int(sets["seed"])
        (out / "metrics.json").write_text(json.dumps(
            {"method": args[2], "epochs": int(sets["epochs"]), "selected_epoch": int(sets["epochs"]),
             "val_acc_Ts": _val_acc(sets, seed), "val_acc_Tt": 0.5, "test_acc_Ts": float(rng.random()),
             "test_acc_Tt": float(rng.random())}))
        print(f"selected epoch: test@T_s={rng.random():.4f}", file=stdout, flush=True)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(jobs.subprocess, "run", run)
    monkeypatch.setattr(tune, "missing_caches", lambda *a, **k: [])
    calls.threads = threads  # the thread count the fake expects in the stages' environment
    return calls


def _params(tmp_path: Path, **train) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "train": {"epochs": 20, "lr": 0.1, **train}}))
    return p


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["orbit_digits", "--params", str(_params(tmp_path)), "--root", str(tmp_path / "tune"), "--trials", "3",
            "--seeds", "100", "101", *extra]


def test_tune_runs_every_trial_once_resumes_and_writes_the_choice(tmp_path, fake_train, capsys):
    assert tune.main(_args(tmp_path)) == 0
    assert len(fake_train) == 12 and [m for m, _ in fake_train[:2]] == ["baseline", "tssd"]
    assert "test@" not in capsys.readouterr().out  # the stage's test print goes to the run's train.log
    out = tmp_path / "tune" / "orbit_digits"
    assert "test@T_s=" in (out / "tssd" / "trial2-seed101" / "train.log").read_text()
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "method,trial,seed,lr,epochs,alpha,beta,tau_kd,val_acc,val_acc_teacher,run_time_s,cpu_s"
    assert len(rows) == 13
    choice = json.loads((out / "choice.json").read_text())
    d = _defaults(epochs=20, lr=0.1)
    for m in ("baseline", "tssd"):
        entry = choice["methods"][m]
        assert entry["complete"] and entry["trials_ranked"] == 3
        expect = max(range(3), key=lambda k: sum(_val_acc({n: str(v) for n, v in
                                                           tune.trial_values(m, k, d[m]).items()}, s)
                                                 for s in (100, 101)))
        assert entry["chosen"]["trial"] == expect == entry["ranked"][0]["trial"]
        assert entry["chosen"] == {"trial": expect, **tune.trial_values(m, expect, d[m])}
    snippet = yaml.safe_load((out / "by_method.yaml").read_text())
    assert snippet == {"by_method": {m: {n: choice["methods"][m]["chosen"][n] for n in tune.searched(m)}
                                     for m in ("baseline", "tssd")}}
    # resume: nothing left; an interrupted run (no study.json) is the only one redone
    fake_train.clear()
    assert tune.main(_args(tmp_path)) == 0 and not fake_train
    (out / "tssd" / "trial1-seed100" / jobs.DONE).unlink()
    assert tune.main(_args(tmp_path, "--plan")) == 0 and not fake_train
    assert "11 done, 1 to run" in capsys.readouterr().out
    assert tune.main(_args(tmp_path)) == 0
    assert [(m, s["seed"]) for m, s in fake_train] == [("tssd", "100")]
    assert fake_train[0][1]["lr"] == str(tune.draw(1)["lr"]) and fake_train[0][1]["alpha"] == str(tune.draw(1)["alpha"])
    # more trials extend the table without redoing the first ones
    fake_train.clear()
    assert tune.main(_args(tmp_path)[:-5] + ["--trials", "4", "--seeds", "100", "101"]) == 0
    assert sorted((m, s["seed"]) for m, s in fake_train) == [("baseline", "100"), ("baseline", "101"),
                                                              ("tssd", "100"), ("tssd", "101")]


def test_tune_never_reads_test(tmp_path, fake_train):
    assert tune.main(_args(tmp_path)) == 0
    out = tmp_path / "tune" / "orbit_digits"
    before = {f: (out / f).read_text() for f in ("trials.csv", "choice.json", "by_method.yaml")}
    # scramble every test value (and drop them from one run): the tuning's outputs do not change by one byte
    for path in out.glob("*/*/metrics.json"):
        m = json.loads(path.read_text())
        m.update(test_acc_Ts=float(np.random.default_rng(len(str(path))).random()), test_acc_Tt=None)
        path.write_text(json.dumps(m))
    next(out.glob("tssd/*/metrics.json")).write_text(json.dumps(
        {k: v for k, v in json.loads(next(out.glob("tssd/*/metrics.json")).read_text()).items()
         if not k.startswith("test")}))
    assert tune.main(_args(tmp_path)) == 0
    assert {f: (out / f).read_text() for f in before} == before
    # read_val keeps val keys only, and the module names no test column at all
    path = next(out.glob("baseline/*/metrics.json"))
    path.write_text(json.dumps({"epochs": 3, "val_acc_Ts": 0.5, "val_acc_Tt": 0.6, "test_acc_Ts": 0.9,
                                "nested": {"test_acc": 1}}))
    assert tune.read_val(path.parent) == {"val_acc": 0.5, "val_acc_teacher": 0.6, "epochs": 3}
    assert tune._val_only([("test_acc_Ts", 1.0), ("val_acc_Ts", 0.5), ("epochs", 3)]) == {"val_acc_Ts": 0.5,
                                                                                          "epochs": 3}
    assert "test_acc" not in Path(tune.__file__).read_text()


def test_tune_refuses_reported_seeds_missing_caches_and_changed_specs(tmp_path, fake_train, monkeypatch, capsys):
    assert tune.main(_args(tmp_path)[:-2] + ["1", "100"]) == 2  # seed 1 is a reported seed
    assert "reported seeds" in capsys.readouterr().err and not fake_train
    monkeypatch.setattr(tune, "missing_caches", lambda *a, **k: [Path("frames/x-T8.zarr")])
    assert tune.main(_args(tmp_path)) == 2
    assert "would build frame caches" in capsys.readouterr().err and not fake_train
    monkeypatch.setattr(tune, "missing_caches", lambda *a, **k: [])
    assert tune.main(_args(tmp_path, "--methods", "baseline")) == 0
    fake_train.clear()
    assert tune.main(_args(tmp_path, "--methods", "baseline", "--sampler-seed", "1")) == 2  # other draws
    assert "finished with another spec" in capsys.readouterr().err and not fake_train
    assert tune.main(_args(tmp_path, "--methods", "baseline", "--sampler-seed", "1", "--redo")) == 0
    assert len(fake_train) == 4  # trial 0 (the defaults) is unchanged; trials 1, 2 x 2 seeds are redone
    # the thread count is part of every run's spec (CPU results depend on it)
    fake_train.clear()
    assert tune.main(_args(tmp_path, "--methods", "baseline", "--threads", "2")) == 2
    assert "finished with another spec" in capsys.readouterr().err and not fake_train
    fake_train.threads[0] = "2"
    assert tune.main(_args(tmp_path, "--methods", "baseline", "--threads", "2", "--redo")) == 0
    assert len(fake_train) == 6
    rec = json.loads((tmp_path / "tune/orbit_digits/baseline/trial0-seed100" / jobs.DONE).read_text())
    assert rec["spec"]["env"] == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
