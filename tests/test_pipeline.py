"""The DVC pipeline end to end on a tiny digits_dvs: generate -> ingest -> bin -> train -> evaluate -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import bin as bin_stage
from pipeline import evaluate, generate, ingest, report, train

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_digits_end_to_end(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(tmp_path / v.split("/", 1)[1]) for k, v in params["paths"].items()}
    # 25 digits per recording; 12 users: 2 test, ceil(0.15 x 10) = 2 val, 8 train (400 samples, as before val)
    params["digits_dvs"].update(n_samples=600, users=12, test_users=2)
    params["train"].update(epochs=3, batch_size=16)
    params["evaluate"]["T"] = [1, 8]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    quiet = ["--no-progress"]
    assert generate.main(["digits_dvs", *quiet]) == 0
    assert ingest.main(["digits_dvs", *quiet]) == 0
    assert bin_stage.main(["digits_dvs", "--for-training", "--prune", *quiet]) == 0
    runs = Path(params["paths"]["runs_root"]) / "digits_dvs"
    for method in ("baseline", "tssd"):
        assert train.main(["digits_dvs", "--method", method, *quiet]) == 0
        assert evaluate.main([str(runs / method), *quiet]) == 0
        m = json.loads((runs / method / "metrics.json").read_text())
        assert m["test_acc_Ts"] > 0.3, m  # ten classes: chance is 0.1
        rows = (runs / method / "eval.csv").read_text().splitlines()
        assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 4, 8]  # evaluate.T plus the run's T_s and T_t
    assert report.main(["--runs", str(runs.parent), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| baseline | small | 2 |" in summary and "| tssd | small | 2 | 4 |" in summary
    assert (tmp_path / "report" / "digits_dvs_accuracy_vs_T.png").exists()
    # bin --for-training built exactly what train opened (evaluate rebins on the fly): nothing appeared afterwards
    frames = sorted(p.name for p in (Path(params["paths"]["frames_root"]) / "digits_dvs").iterdir())
    assert len(frames) == 3 * 2 and all(f.split("-")[1] in ("T2", "T4") for f in frames)  # train, val, test


def test_dvc_repro_dry_lists_every_stage():
    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run([str(dvc), "repro", "--dry", "--force"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    stages = [line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")]
    runs = [f"orbit_digits-{m}-{k}" for m in ("baseline", "tssd") for k in (0, 1, 2)]
    image_runs = [f"digits_img-{m}-{k}" for m in ("baseline", "tssd") for k in (0, 1, 2)]  # params image_datasets:
    assert stages == (["generate@digits_dvs", "generate@orbit_digits", "ingest@orbit_digits", "bin@orbit_digits"]
                      + [f"{stage}@{r}" for stage in ("train", "evaluate", "export") for r in runs]
                      + ["ingest_images@digits_img"]
                      + [f"{stage}_images@{r}" for stage in ("train", "evaluate") for r in image_runs]
                      + ["report"])


def test_real_dataset_stages_fail_at_once_with_instructions(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = ["dvs_gesture"]
    params["paths"]["raw_root"] = str(tmp_path / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "pipeline.download", "--check-params", str(tmp_path / "params.yaml")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "DvsGesture.tar.gz" in out.stderr and str(tmp_path / "raw" / "dvs_gesture") in out.stderr
