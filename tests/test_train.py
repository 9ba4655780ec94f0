"""Training: learning on test-written data, resume determinism, divergence handling, DDP, evaluation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pipeline.train as train_mod
from pipeline.config import IngestConfig
from pipeline.datasets import get_spec
from pipeline.ingest import ingest

from tests.conftest import make_learnable_tree

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "recipes.dvs_gesture={}", "--set", "bin.out_size=[16,16]", "--set", "bin.dtype=int16",
        "--set", "train.arch=small", "--set", "train.T_s=4", "--set", "train.T_t=null", "--set", "train.batch_size=8",
        "--set", "train.lr=0.1", "--set", "train.augment.flip_p=0", "--set", "train.augment.max_shift_px=1",
        "--no-progress"]  # no flips: the classes are mirror images of each other


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    root = make_learnable_tree(tmp / "raw")
    out = tmp / "ev.zarr"
    ingest(get_spec("dvs_gesture"), root, out, IngestConfig(), progress=False)
    return out


def _train(store: Path, out: Path, *extra: str) -> int:
    return train_mod.main(["dvs_gesture", "--store", str(store), "--out", str(out),
                           "--set", f"paths.frames_root={store.parent / 'frames'}", *FAST, *extra])


@pytest.mark.parametrize("method", ["baseline", "tssd"])
def test_tiny_training_beats_chance(store, tmp_path, method):
    assert _train(store, tmp_path / method, "--method", method, "--epochs", "4") == 0
    m = json.loads((tmp_path / method / "metrics.json").read_text())
    assert m["test_acc_Ts"] > 0.6, m  # 4 classes present: chance is 0.25
    assert m["method"] == method and m["T_t"] == 8 and m["deploy_params"] > 0
    rows = (tmp_path / method / "history.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("epoch,lr,loss,task_student,task_teacher,tsd,ssd")
    if method == "tssd":
        assert rows[1].split(",")[5] != ""  # tsd term logged


def test_deploy_params_equal_between_methods(store, tmp_path):
    for method in ("baseline", "tssd"):
        assert _train(store, tmp_path / method, "--method", method, "--epochs", "0") == 0
    a, b = (json.loads((tmp_path / m / "metrics.json").read_text())["deploy_params"] for m in ("baseline", "tssd"))
    assert a == b


def test_killed_run_resumed_gives_the_same_weights(store, tmp_path, monkeypatch):
    assert _train(store, tmp_path / "full", "--epochs", "3") == 0
    real = train_mod.tssd_loss
    calls = {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * 9 + 2:  # a few batches into epoch 3 (9 batches of 8 per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "tssd_loss", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        _train(store, tmp_path / "part", "--epochs", "3")
    monkeypatch.setattr(train_mod, "tssd_loss", real)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert _train(store, tmp_path / "part", "--epochs", "3", "--resume") == 0
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert part["epoch"] == full["epoch"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, part["model"][k]), k
    assert [r["loss"] for r in part["history"]] == [r["loss"] for r in full["history"]]


def test_resume_with_more_epochs_stretches_the_schedule(store, tmp_path):
    assert _train(store, tmp_path / "run", "--epochs", "2") == 0
    assert _train(store, tmp_path / "run", "--epochs", "4", "--resume") == 0
    lrs = [r["lr"] for r in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["history"]]
    assert len(lrs) == 4 and all(a >= b for a, b in zip(lrs, lrs[1:])), lrs  # never climbs back up
    # epochs 3-4 follow the 4-epoch cosine in closed form (they do not stay at the 2-epoch run's final 0)
    assert lrs[2:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in (2, 3)])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(store, tmp_path, monkeypatch, capsys):
    real = train_mod.tssd_loss
    calls = {"epoch_batches": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["epoch_batches"] += 1
        if calls["epoch_batches"] > 10:  # past the first epoch (9 batches of 8)
            parts = {**parts, "total": float("nan")}
        return loss, parts

    monkeypatch.setattr(train_mod, "tssd_loss", poisoned)
    assert _train(store, tmp_path / "nan", "--epochs", "3") == 3
    assert "loss became nan in epoch 2" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_missing_raw_data_says_what_to_download(tmp_path, capsys):
    code = train_mod.main(["cifar10_dvs", "--store", str(tmp_path / "none.zarr"),
                           "--set", f"paths.raw_root={tmp_path / 'raw'}", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "figshare" in err and str(tmp_path / "raw" / "cifar10_dvs") in err


def test_evaluate_writes_accuracy_vs_T(store, tmp_path):
    from pipeline import evaluate

    assert _train(store, tmp_path / "run", "--epochs", "1") == 0
    assert evaluate.main([str(tmp_path / "run"), "--T", "1", "4", "--no-progress"]) == 0
    rows = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [r["T"] for r in rows] == [1, 4] and all(0 <= r["test_acc"] <= 1 for r in rows)
    assert all(r["sops_per_sample"] > 0 and r["rates"] for r in rows)
    assert (tmp_path / "run" / "accuracy_vs_T.png").exists()


def test_ddp_two_cpu_processes(store, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "pipeline.train", "dvs_gesture", "--store", str(store), "--out", str(tmp_path / "ddp"),
           "--epochs", "1", "--set", f"paths.frames_root={store.parent / 'frames'}", "--set", "train.device=cpu", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["epochs"] == 1


def test_load_run_rebuilds_a_checkpoint_written_before_build_model_took_model_args(tmp_path):
    from models.nets import build_model
    from pipeline.runs import load_run, save_checkpoint

    # model_args exactly as every checkpoint so far holds them: JSON-like lists and dicts, weak stages resolved
    model_args = {"arch": "small", "in_channels": 2, "n_classes": 11, "input_hw": [16, 16], "weak_stages": ["stage2"],
                  "neuron": {"tau_steps": 2.0, "v_th": 1.0, "surrogate": "rect", "alpha": 1.0}, "t_ref": 4}
    torch.manual_seed(0)
    trained = build_model("small", in_channels=2, n_classes=11, input_hw=(16, 16), weak_stages=("stage2",),
                          neuron=model_args["neuron"], t_ref=4)
    save_checkpoint({"model": trained.state_dict(), "model_args": model_args}, tmp_path / "checkpoint.pt")
    net, ckpt = load_run(tmp_path)
    assert ckpt["model_args"] == model_args and net.weak_stages == ()
    x = torch.rand(4, 3, 2, 16, 16)
    assert torch.equal(net(x).logits, trained.deploy()(x).logits)


# ------------------------------------------------------------------------------------------ the protocol
def _permute_test_labels(root: Path) -> None:
    """Rewrite the test user's label csv with every class shifted by one: the test split's labels change, the
    training and validation recordings stay byte-identical."""
    csv = root / "user05_lab_labels.csv"
    lines = csv.read_text().splitlines()
    rows = [f"{int(c) % 4 + 1},{a},{b}" for c, a, b in (line.split(",") for line in lines[1:])]
    csv.write_text("\r\n".join([lines[0], *rows]) + "\r\n")


def test_selection_reads_validation_never_test(tmp_path):
    """best_val picks the epoch of highest val accuracy; on a store whose test labels are permuted the same run
    selects the same epoch and ends with the same weights: no choice reads test."""
    from pipeline.runs import load_run
    from pipeline.store import open_event_store

    stores = {}
    for name in ("a", "b"):
        root = make_learnable_tree(tmp_path / f"raw-{name}")
        if name == "b":
            _permute_test_labels(root)
        stores[name] = tmp_path / f"{name}.zarr"
        ingest(get_spec("dvs_gesture"), root, stores[name], IngestConfig(), progress=False)
    sa, sb = (open_event_store(stores[n]) for n in "ab")
    assert sa.attrs["validation"]["users"] == [4] and sa.store_id != sb.store_id
    assert (sa["test"].labels != sb["test"].labels).all() and (sa["val"].labels == sb["val"].labels).all()
    runs = {}
    for name in ("a", "b"):
        out = tmp_path / f"run-{name}"
        assert _train(stores[name], out, "--method", "baseline", "--epochs", "4", "--set", "train.select=best_val",
                      "--set", "train.lr=0.3") == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()),
                      torch.load(out / "checkpoint.pt", weights_only=False))
    (ma, ca), (mb, cb) = runs["a"], runs["b"]
    val = [r["val_acc"] for r in ca["history"]]
    assert ma["selected_epoch"] == val.index(max(val)) + 1 == mb["selected_epoch"] == cb["selected_epoch"]
    assert [r["val_acc"] for r in cb["history"]] == val
    assert [r["test_acc"] for r in cb["history"]] != [r["test_acc"] for r in ca["history"]]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    # the selected weights are deployed and scored once: the history's scores of that epoch, measured again
    row = ca["history"][ma["selected_epoch"] - 1]
    assert (ma["val_acc_Ts"], ma["test_acc_Ts"], ma["test_acc_Tt"]) == (row["val_acc"], row["test_acc"],
                                                                          row["test_acc_teacher"])
    assert (ca["selected_model"] is None) == (ma["selected_epoch"] == 4)
    net, _ = load_run(tmp_path / "run-a")
    want = ca["model"] if ca["selected_model"] is None else ca["selected_model"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert not {"best_acc", "best_epoch", "wall_s"} & set(ca) and "best_test_acc_Ts" not in ma


def test_last_is_the_default_and_a_rerun_is_bit_identical(store, tmp_path):
    """select=last deploys the last epoch; two runs of the same config write byte-identical tracked outputs
    (checkpoint, history, metrics, evaluation): every wall-clock value is in timings.json only."""
    from pipeline import evaluate

    runs = [tmp_path / name / "dvs_gesture" / "tssd" for name in "ab"]  # the plot's title names the last two
    for run in runs:
        assert _train(store, run, "--method", "tssd", "--epochs", "2") == 0
        assert evaluate.main([str(run), "--T", "2", "4", "--no-progress"]) == 0
    for f in ("checkpoint.pt", "history.csv", "metrics.json", "eval.json", "eval.csv", "accuracy_vs_T.png"):
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f
    runs[0].rename(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["select"] == "last" and m["selected_epoch"] == 2 and 0 <= m["val_acc_Ts"] <= 1
    assert not [k for k in m if "time" in k or "wall" in k or "second" in k or k.endswith("_s") and k != "T_s"], m
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header == train_mod.HISTORY_FIELDS and "epoch_s" not in header and "val_acc" in header
    t = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert len(t["epoch_s"]) == 2 and t["wall_time_s"] >= 0
    assert evaluate.main([str(tmp_path / "run"), "--T", "4", "--split", "val", "--no-progress"]) == 0
    rows = json.loads((tmp_path / "run" / "eval_val.json").read_text())
    assert [r["T"] for r in rows] == [4] and 0 <= rows[0]["val_acc"] <= 1 and "test_acc" not in rows[0]
    assert (tmp_path / "run" / "eval_val.csv").read_text().startswith("T,val_acc,")


def test_best_val_needs_a_validation_split(tmp_path, capsys):
    root = make_learnable_tree(tmp_path / "raw")
    out = tmp_path / "noval.zarr"
    ingest(get_spec("dvs_gesture"), root, out, IngestConfig(val={"dvs_gesture": 0}), progress=False)
    assert _train(out, tmp_path / "run", "--epochs", "1", "--set", "train.select=best_val") == 2
    assert "has no validation split" in capsys.readouterr().err
    assert _train(out, tmp_path / "run", "--epochs", "1") == 0  # select=last works without one
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["val_acc_Ts"] is None and m["test_acc_Ts"] is not None
