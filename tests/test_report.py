"""The report on synthetic run folders (verdict wording, pairing, consistency), predictions.csv, and the study's
resume/skip logic (with the train/evaluate processes replaced by a stub that writes synthetic run files)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import jobs, report, study
from pipeline.predictions import Predictions, PredictionsError, format_predictions, read_predictions

N_TEST = 400
LABELS = np.random.default_rng(0).integers(0, 10, N_TEST)


def _predictions(acc_by_T: dict[int, float], rng: np.random.Generator) -> Predictions:
    """Predictions whose accuracy at each T is exactly ``acc_by_T[T]`` (rounded to a whole sample)."""
    pred = []
    for T, acc in acc_by_T.items():
        right = np.zeros(N_TEST, bool)
        right[rng.permutation(N_TEST)[: round(acc * N_TEST)]] = True
        pred.append(np.where(right, LABELS, (LABELS + 1) % 10))
    return Predictions(tuple(acc_by_T), np.arange(N_TEST), np.repeat(np.arange(40), 10), LABELS.copy(),
                       np.stack(pred))


def write_run(run: Path, method: str, acc_by_T: dict[int, float], rng: np.random.Generator, T_s: int = 2,
              T_t: int = 4, metrics: dict | None = None) -> Predictions:
    """A run folder as train + evaluate leave it: metrics.json, eval.json and predictions.csv that agree."""
    run.mkdir(parents=True, exist_ok=True)
    p = _predictions(acc_by_T, rng)
    run.joinpath("metrics.json").write_text(json.dumps(
        {"dataset": run.parts[-2], "method": method, "arch": "small", "T_s": T_s, "T_t": T_t, "epochs": 3,
         "deploy_params": 1234, **(metrics or {})}))
    run.joinpath("eval.json").write_text(json.dumps(
        [{"T": T, "test_acc": float(p.correct(T).mean())} for T in p.Ts]))
    run.joinpath("predictions.csv").write_text(format_predictions(p))
    return p


def test_predictions_round_trip_and_refusals(tmp_path):
    p = _predictions({1: 0.5, 2: 0.9, 16: 0.7}, np.random.default_rng(1))
    path = tmp_path / "predictions.csv"
    path.write_text(format_predictions(p))
    q = read_predictions(path)
    assert q.Ts == (1, 2, 16) and q.same_samples(p)
    for name in ("index", "recording", "label", "pred"):
        assert np.array_equal(getattr(q, name), getattr(p, name)) and getattr(q, name).dtype == np.int64
    assert q.correct(2).mean() == 0.9 and format_predictions(q) == path.read_text()
    assert path.read_text().splitlines()[:2] == ["index,recording,label,pred_T1,pred_T2,pred_T16",
                                                 f"0,0,{LABELS[0]},{p.pred[0, 0]},{p.pred[1, 0]},{p.pred[2, 0]}"]
    with pytest.raises(KeyError, match="T=8"):
        q.correct(8)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + [lines[5] + ",3"] + lines[6:]) + "\n")
    with pytest.raises(PredictionsError, match=r"predictions.csv: row 6: 7 fields, expected 6"):
        read_predictions(path)
    path.write_text("a,b\n")
    with pytest.raises(PredictionsError, match="row 1: expected the header"):
        read_predictions(path)


def _seeded_study(root: Path, accs: dict[str, list[float]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for arm, per_seed in accs.items():
        for k, acc in enumerate(per_seed):
            write_run(root / "digits_dvs" / "study" / f"{arm}-seed{k}", arm.split("-")[0],
                      {1: 0.3, 2: acc, 4: acc + 0.01}, rng)


def _row(text: str, start: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_beats_only_when_the_interval_excludes_zero(tmp_path):
    # tssd is 8 pt better on every seed; tsd is within a sample or two of baseline; ssd is 8 pt worse
    _seeded_study(tmp_path, {"baseline": [0.80, 0.81, 0.80], "tssd": [0.88, 0.89, 0.88],
                             "tsd": [0.80, 0.805, 0.81], "ssd": [0.72, 0.73, 0.72]})
    text = report.render_markdown(report.collect(tmp_path), n_boot=2000)
    tssd = _row(text, "| tssd vs baseline")
    assert tssd[-1] == "tssd beats baseline" and tssd[2] == "3"
    lo, hi = (float(v) for v in tssd[4].strip("[]").split(","))
    assert 0 < lo < float(tssd[3]) < hi and float(tssd[3]) == pytest.approx(8.0, abs=0.01)
    assert len(tssd[5].split(", ")) == 3  # one McNemar p-value per seed
    assert _row(text, "| tsd vs baseline")[-1] == "no detectable difference"
    assert _row(text, "| ssd vs baseline")[-1] == "baseline beats ssd"
    assert "beats" not in _row(text, "| tsd vs baseline")[-1]
    # the verdict is the interval's: every "beats" row has an interval on one side of 0, every other row has 0 in it
    for line in text.splitlines():
        if " vs " in line and line.startswith("| ") and "[" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            lo, hi = (float(v) for v in cells[4].strip("[]").split(","))
            assert ("beats" in cells[-1]) == (lo > 0 or hi < 0), line
    assert "best" not in text.lower()  # nothing selected on test is reported
    assert text == report.render_markdown(report.collect(tmp_path), n_boot=2000)  # deterministic


def test_comparisons_include_the_multi_T_control_and_ablations(tmp_path):
    _seeded_study(tmp_path, {"baseline": [0.8, 0.8], "multi_T": [0.8, 0.8], "tssd": [0.8, 0.8],
                             "tssd-bn_shared": [0.8, 0.8], "tsd": [0.8, 0.8]})
    arms = report.collect(tmp_path)["digits_dvs"]["study"]
    assert report.comparisons(arms) == [("multi_T", "baseline"), ("tsd", "baseline"), ("tsd", "multi_T"),
                                        ("tssd", "baseline"), ("tssd", "multi_T"),
                                        ("tssd-bn_shared", "baseline"), ("tssd-bn_shared", "tssd")]
    text = report.render_markdown(report.collect(tmp_path), n_boot=200)
    row = _row(text, "| tssd-bn_shared | tssd | 2 |")
    assert row[5:8] == ["80.00 ± 0.00", "81.00 ± 0.00", "+1.00 ± 0.00"]  # test @T_s, @T_t, teacher gap


def test_main_runs_table_reads_eval_json_and_pairs_the_single_seed(tmp_path):
    rng = np.random.default_rng(3)
    write_run(tmp_path / "digits_dvs" / "baseline", "baseline", {1: 0.5, 2: 0.95, 4: 0.9}, rng,
              metrics={"test_acc_Ts": 0.1, "best_test_acc_Ts": 0.99, "best_epoch": 2, "val_acc_Ts": 0.93})
    write_run(tmp_path / "digits_dvs" / "tssd", "tssd", {1: 0.4, 2: 0.9, 4: 0.94}, rng,
              metrics={"val_acc_Ts": 0.91})
    assert report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "rep"), "--n-boot", "500"]) == 0
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert _row(text, "| baseline |") == ["baseline", "small", "2", "4", "3", "93.00", "50.00", "95.00", "90.00",
                                           "-5.00", "1,234"]
    c = _row(text, "| tssd vs baseline")
    assert c[1:4] == ["2", "1", "-5.00"] and "best" not in text.lower()
    assert (tmp_path / "rep" / "digits_dvs_accuracy_vs_T.png").exists()


def test_params_matrix_leaves_out_stale_runs_and_refuses_missing_ones(tmp_path, capsys):
    """With --params (what dvc.yaml passes), the main runs are exactly datasets x methods x seeds: a run folder
    left from an earlier params.yaml is not reported as current, and a missing matrix run is an error."""
    rng = np.random.default_rng(5)
    for m in ("baseline", "tssd"):
        for k in (0, 1):
            write_run(tmp_path / "runs" / "orbit_digits" / f"{m}-seed{k}", m, {2: 0.6, 4: 0.5}, rng)
    write_run(tmp_path / "runs" / "digits_dvs" / "tssd", "tssd", {2: 0.9, 4: 0.9}, rng)  # an earlier setting
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": ["orbit_digits"], "methods": ["baseline", "tssd"],
                                      "seeds": [0, 1]}))
    args = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--n-boot", "200"]
    assert report.main(args + ["--params", str(params)]) == 0
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "## orbit_digits" in text and "digits_dvs" not in text
    assert "digits_dvs/tssd is not in" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"datasets": ["orbit_digits"], "methods": ["baseline", "tssd"],
                                      "seeds": [0, 1, 2]}))
    assert report.main(args + ["--out", str(tmp_path / "rep2"), "--params", str(params)]) == 1
    assert "orbit_digits/baseline-seed2: a run of params.yaml's datasets x methods x seeds has no finished" in \
        capsys.readouterr().err
    assert not (tmp_path / "rep2").exists()


def test_disagreeing_files_and_unpaired_runs(tmp_path, capsys):
    rng = np.random.default_rng(4)
    write_run(tmp_path / "digits_dvs" / "study" / "baseline-seed0", "baseline", {2: 0.8}, rng)
    write_run(tmp_path / "digits_dvs" / "study" / "tssd-seed1", "tssd", {2: 0.8}, rng)  # no common seed
    write_run(tmp_path / "digits_dvs" / "study" / "ssd-seed0", "ssd", {2: 0.8}, rng, T_s=4)
    text = report.render_markdown(report.collect(tmp_path), n_boot=100)
    assert "not compared: no common seeds" in _row(text, "| tssd vs baseline")[-1]
    assert "not compared" in _row(text, "| ssd vs baseline")[-1]
    ev = tmp_path / "digits_dvs" / "study" / "baseline-seed0" / "eval.json"
    ev.write_text(json.dumps([{"T": 2, "test_acc": 0.5}]))  # a later evaluation, predictions from an earlier one
    assert report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "predictions.csv gives test accuracy 0.800000 at T=2" in err and "nothing was written" in err
    assert not (tmp_path / "rep").exists()


# ----------------------------------------------------------------------------------------------- study
@pytest.fixture
def fake_stages(monkeypatch):
    """study's subprocess calls, recorded; train/evaluate write a synthetic finished run."""
    calls = []
    rng = np.random.default_rng(5)

    def run(cmd, **kwargs):
        stage = cmd[2]
        calls.append((stage, cmd[3:]))
        if stage == "pipeline.evaluate":
            out = Path(cmd[3])
            method = next(a for a in calls[-2][1] if a in study.METHODS)
            write_run(out, method, {2: 0.8, 4: 0.81}, rng)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(jobs.subprocess, "run", run)
    return calls


def _params(tmp_path: Path, **train) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"datasets": ["digits_dvs"], "paths": {"runs_root": str(tmp_path / "runs")},
                                 "train": {"epochs": 3, **train}}))
    return p


def test_study_runs_each_arm_once_and_resumes(tmp_path, fake_stages, capsys):
    params = _params(tmp_path)
    args = ["--params", str(params), "--methods", "baseline", "tssd", "--seeds", "0", "1",
            "--ablation", "tssd-a0", "train.alpha=0"]
    assert study.main(args) == 0
    trains = [c for c in fake_stages if c[0] == "pipeline.train"]
    assert len(trains) == 6 and len(fake_stages) == 12
    out = tmp_path / "runs" / "digits_dvs" / "study"
    assert sorted(p.name for p in out.iterdir()) == ["baseline-seed0", "baseline-seed1", "tssd-a0-seed0",
                                                     "tssd-a0-seed1", "tssd-seed0", "tssd-seed1"]
    abl = next(c[1] for c in trains if str(out / "tssd-a0-seed1") in c[1])
    assert abl[:3] == ["digits_dvs", "--method", "tssd"] and "train.alpha=0" in abl and "train.seed=1" in abl
    rec = json.loads((out / "tssd-a0-seed1" / "study.json").read_text())
    assert rec["spec"]["set"] == ["train.alpha=0", "train.seed=1"] and rec["run_time_s"] >= 0
    # a second call redoes nothing; an interrupted run (no study.json) is redone; the estimate uses the run times
    (out / "tssd-seed1" / "study.json").unlink()
    capsys.readouterr()
    assert study.main(args + ["--plan"]) == 0
    assert "5 done, 1 to run; estimated" in capsys.readouterr().out
    fake_stages.clear()
    assert study.main(args) == 0
    assert [c[0] for c in fake_stages] == ["pipeline.train", "pipeline.evaluate"]
    assert str(out / "tssd-seed1") in fake_stages[0][1]
    # the report reads the study: the ablation is compared with baseline and with its method
    text = report.render_markdown(report.collect(tmp_path / "runs"), n_boot=100)
    assert "| tssd-a0 vs tssd |" in text and "| tssd vs baseline |" in text


def test_study_refuses_finished_runs_of_another_setting(tmp_path, fake_stages, capsys):
    args = ["--methods", "baseline", "--seeds", "0", "--no-ablations"]
    assert study.main(["--params", str(_params(tmp_path)), *args]) == 0
    fake_stages.clear()
    changed = _params(tmp_path, lr=0.05)
    assert study.main(["--params", str(changed), *args]) == 2
    assert "finished with another spec" in capsys.readouterr().err and not fake_stages
    assert study.main(["--params", str(changed), *args, "--redo"]) == 0
    assert [c[0] for c in fake_stages] == ["pipeline.train", "pipeline.evaluate"]
    assert study.main(["--params", str(changed), *args, "--ablation", "bogus", "train.x=1"]) == 2


# ------------------------------------------------------------------------------------------ evaluate's file
def test_evaluate_writes_predictions_that_agree_with_eval_json_and_the_store(tmp_path):
    """A real (tiny, 1-epoch) run: predictions.csv holds the store's test split in order, its accuracy at each T is
    eval.json's, and a second evaluation writes the same bytes (a reproducible DVC output)."""
    from pipeline import evaluate, train
    from pipeline.config import IngestConfig
    from pipeline.datasets import get_spec
    from pipeline.ingest import ingest
    from pipeline.store import open_event_store
    from tests.conftest import make_learnable_tree

    store = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp_path / "raw", per_class=12), store, IngestConfig(),
           progress=False)
    fast = ["--set", "recipes.dvs_gesture={}", "--set", "bin.out_size=[16,16]", "--set", "bin.dtype=int16",
            "--set", "train.arch=small", "--set", "train.T_s=2", "--set", "train.T_t=4", "--set",
            "train.batch_size=8", "--set", "train.augment.flip_p=0", "--set", f"paths.frames_root={tmp_path / 'f'}",
            "--no-progress"]
    run = tmp_path / "run"
    assert train.main(["dvs_gesture", "--store", str(store), "--out", str(run), "--method", "baseline",
                       "--epochs", "1", *fast]) == 0
    assert evaluate.main([str(run), "--T", "1", "2", "--no-progress"]) == 0
    first = (run / "predictions.csv").read_bytes()
    p = read_predictions(run / "predictions.csv")
    test = open_event_store(store)["test"]
    assert p.Ts == (1, 2) and np.array_equal(p.index, np.arange(len(test)))
    assert np.array_equal(p.label, test.labels) and np.array_equal(p.recording, test.recording)
    for row in json.loads((run / "eval.json").read_text()):
        assert p.correct(row["T"]).mean() == pytest.approx(row["test_acc"], abs=1e-12)
    assert evaluate.main([str(run), "--T", "1", "2", "--no-progress"]) == 0
    assert (run / "predictions.csv").read_bytes() == first
