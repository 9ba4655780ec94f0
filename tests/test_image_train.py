"""Static images end to end: a CIFAR-10 tarball in the release's format -> image store -> `pipeline.train` with
direct encoding -> `pipeline.evaluate` -> predictions, and the refusals (wrong kind of store, missing raw data).

The tarball is written with the image store's test writer (`tests.image_files`: the release's Python-2 pickles,
by hand) holding *learnable* images: class k is a bright 8 x 8 square at one of ten places, in channel k % 3,
on noise, so a few epochs of the small net beat chance by far.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.evaluate as evaluate_mod
import pipeline.train as train_mod
from models.nets import SpikingNet
from pipeline.augment import ImageAugment
from pipeline.ingest_images import ingest_images
from pipeline.datasets.images import get_image_spec
from pipeline.predictions import read_predictions

from tests.image_files import _py2_pickle, _tar

PER_BATCH = 40  # 5 train batches (200 images, 20 carved off for val) + a test batch of 40
FAST = ["--set", "train.arch=small", "--set", "train.T_s=2", "--set", "train.T_t=4", "--set", "train.batch_size=20",
        "--set", "train.image_augment={crop_pad: 2, flip_p: 0.0}", "--set", "train.lr=0.1", "--no-progress"]
CELLS = [(r, c) for r in range(0, 32, 8) for c in range(0, 32, 8)][:10]


def _learnable_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    img = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = CELLS[k]
        img[i, k % 3, r:r + 8, c:c + 8] = 230
    return img.reshape(n, 3072), labels


def write_learnable_cifar10(path: Path) -> Path:
    """A cifar-10-python.tar.gz in the release's layout with learnable images."""
    root = "cifar-10-batches-py"
    members = {f"{root}/batches.meta": _py2_pickle({b"label_names": [f"class{i}".encode() for i in range(10)],
                                                    b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072})}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = _learnable_images(PER_BATCH, k)
        members[f"{root}/{name}"] = _py2_pickle({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                 b"filenames": [f"{name}_{j}.png".encode() for j in range(PER_BATCH)]})
    return _tar(path, members)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module's tiny nets: on a busy 2-core machine torch's two OpenMP threads made
    each step ~15x slower (spin-waiting on a descheduled peer), with the same results either way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("images")
    raw = tmp / "raw"
    raw.mkdir()
    write_learnable_cifar10(raw / "cifar-10-python.tar.gz")
    out = tmp / "cifar10.zarr"
    ingest_images(get_image_spec("cifar10"), raw, out, val=0.1, options={"check_md5": False}, progress=False)
    return out


def _train(store: Path, out: Path, *extra: str) -> int:
    return train_mod.main(["cifar10", "--store", str(store), "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def tssd_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tssd"
    assert _train(store, out, "--method", "tssd", "--epochs", "3") == 0
    return out


def test_short_train_beats_chance(tssd_run):
    m = json.loads((tssd_run / "metrics.json").read_text())
    assert m["dataset"] == "cifar10" and m["method"] == "tssd" and m["T_s"] == 2 and m["T_t"] == 4
    assert m["test_acc_Ts"] > 0.5, m  # 10 classes: chance is 0.1
    assert m["val_acc_Ts"] is not None and m["selected_epoch"] == 3
    rows = list(csv.DictReader((tssd_run / "history.csv").open()))
    assert len(rows) == 3 and rows[0]["tsd"] != "" and rows[0]["val_acc"] != ""
    ckpt = torch.load(tssd_run / "checkpoint.pt", weights_only=False)
    assert ckpt["input"] == "images" and ckpt["model_args"]["t_ref"] is None and "bin" not in ckpt["config"]
    assert ckpt["model_args"]["in_channels"] == 3 and ckpt["model_args"]["input_hw"] == [32, 32]
    assert len(ckpt["normalize"]["mean"]) == 3 and (tssd_run / "timings.json").exists()


def test_teacher_and_student_see_the_same_augmented_image(store, tmp_path, monkeypatch):
    """One augmentation per batch (`pipeline.image_data.train_input`), its result fed to both runs, stride 0."""
    seen: list[tuple[torch.Tensor, bool]] = []
    made: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_forward, real_input = SpikingNet.forward, train_mod.train_input

    def spy_forward(self, x, **kwargs):
        if self.training:
            seen.append((x, kwargs.get("weak", True)))
        return real_forward(self, x, **kwargs)

    def spy_input(images, index, norm, **kwargs):
        out = real_input(images, index, norm, **kwargs)
        made.append((out, train_mod.eval_input(images, norm, ImageAugment())))  # the same images, not augmented
        return out

    monkeypatch.setattr(SpikingNet, "forward", spy_forward)
    monkeypatch.setattr(train_mod, "train_input", spy_input)
    assert _train(store, tmp_path / "run", "--method", "tssd", "--epochs", "1") == 0
    n_batches = len(train_mod.open_run_image_store(store)["train"]) // 20  # drop_last
    assert len(made) == n_batches and len(seen) == 2 * n_batches  # one augmentation, two passes per batch
    for (x, plain), (x_s, student), (x_t, teacher) in zip(made, seen[0::2], seen[1::2]):
        assert student and not teacher  # the teacher pass skips the weak heads
        assert x_s.shape[:2] == (2, 20) and x_t.shape[:2] == (4, 20) and x_s.stride(0) == 0 == x_t.stride(0)
        assert torch.equal(x_s[0], x) and torch.equal(x_t[0], x) and torch.equal(x_t[3], x)
    assert any(not torch.equal(x, plain) for x, plain in made)  # crop_pad 2 moved some images


def test_two_runs_are_byte_identical(store, tssd_run, tmp_path):
    assert _train(store, tmp_path / "again", "--method", "tssd", "--epochs", "3") == 0
    for name in ("history.csv", "metrics.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tssd_run / name).read_bytes(), name
    a = torch.load(tssd_run / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "again" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_the_same_run(store, tssd_run, tmp_path):
    assert _train(store, tmp_path / "part", "--method", "tssd", "--epochs", "1") == 0
    assert _train(store, tmp_path / "part", "--method", "tssd", "--epochs", "3", "--resume") == 0
    assert (tmp_path / "part" / "history.csv").read_bytes() == (tssd_run / "history.csv").read_bytes()
    assert (tmp_path / "part" / "metrics.json").read_bytes() == (tssd_run / "metrics.json").read_bytes()
    # another configuration is refused on resume
    with pytest.raises(ValueError, match="another configuration"):
        _train(store, tmp_path / "part", "--method", "tssd", "--epochs", "4", "--resume", "--set", "train.lr=0.2")


def test_evaluate_writes_predictions_by_source_index(store, tssd_run, capsys):
    assert evaluate_mod.main([str(tssd_run), "--T", "1", "2", "4", "--no-progress"]) == 0
    rows = json.loads((tssd_run / "eval.json").read_text())
    assert [r["T"] for r in rows] == [1, 2, 4]
    pred = read_predictions(tssd_run / "predictions.csv")
    assert (tssd_run / "predictions.csv").read_text().startswith("index,source_index,label,pred_T1,pred_T2,pred_T4\n")
    split = train_mod.open_run_image_store(store)["test"]
    assert pred.sample_id == "source_index"
    np.testing.assert_array_equal(pred.recording, split.source_index)
    np.testing.assert_array_equal(pred.label, split.labels)
    for r in rows:
        assert pred.correct(r["T"]).mean() == pytest.approx(r["test_acc"])
    # the first conv runs once per sample whatever T (direct encoding); the spiking layers' SOPs grow with T
    assert rows[0]["first_layer_macs_per_sample"] == rows[2]["first_layer_macs_per_sample"]
    assert rows[2]["sops_per_sample"] > rows[0]["sops_per_sample"]
    m = json.loads((tssd_run / "metrics.json").read_text())
    assert rows[1]["test_acc"] == pytest.approx(m["test_acc_Ts"])  # the same network, scored the same way
    assert evaluate_mod.main([str(tssd_run), "--T", "2", "--split", "val", "--no-progress"]) == 0
    assert read_predictions(tssd_run / "predictions_val.csv").pred.shape == (1, len(train_mod.open_run_image_store(store)["val"]))


def test_report_pairs_image_runs(store, tssd_run, tmp_path):
    from pipeline.report import collect, render_markdown

    runs = tmp_path / "runs" / "cifar10"
    for method in ("baseline", "tssd"):
        for seed in (0, 1):
            out = runs / f"{method}-seed{seed}"
            assert _train(store, out, "--method", method, "--epochs", "1", "--set", f"train.seed={seed}") == 0
            assert evaluate_mod.main([str(out), "--T", "2", "--no-progress"]) == 0
    text = render_markdown(collect(tmp_path / "runs"), n_boot=200)
    assert "## cifar10" in text and "| tssd vs baseline | 2 | 2 |" in text


def test_an_event_store_for_an_image_dataset_is_refused_naming_it(tmp_path, capsys):
    from tests.test_refusals import _small_store

    ev = _small_store(tmp_path)
    assert _train(ev, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert str(ev) in err and "event store" in err and "image store" in err


def test_an_image_store_for_an_event_dataset_is_refused_naming_it(store, tmp_path, capsys):
    code = train_mod.main(["dvs_gesture", "--store", str(store), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert str(store) in err and "tssd-image-store" in err


def test_another_datasets_image_store_is_refused_naming_both(store, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_mod.main(["cifar100", "--store", str(store), "--out", str(out), *FAST])
    assert code == 1 and not (out / "metrics.json").exists()
    err = capsys.readouterr().err
    assert str(store) in err and "'cifar10'" in err and "'cifar100'" in err


def test_teacher_input_repeat_is_refused_for_images(store, tmp_path, capsys):
    assert _train(store, tmp_path / "run", "--set", "train.teacher_input=repeat") == 2  # a ConfigError
    assert "teacher_input" in capsys.readouterr().err and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cifar10_without_its_tarball_prints_the_offline_message(tmp_path, capsys):
    code = train_mod.main(["cifar10", "--method", "tssd", "--set", f"paths.raw_root={tmp_path / 'raw'}",
                           "--set", f"paths.images_root={tmp_path / 'images'}", "--out", str(tmp_path / "run"),
                           "--no-progress"])
    assert code == 2  # as for a missing event data set
    err = capsys.readouterr().err
    assert "raw data for cifar10 is missing" in err and "cifar-10-python.tar.gz" in err
    assert "https://www.cs.toronto.edu/" in err and not (tmp_path / "images").exists()


def test_export_of_an_image_run(tssd_run, tmp_path):
    from pipeline.export import export_run

    meta = export_run(tssd_run, tmp_path / "model.nir")
    ckpt = torch.load(tssd_run / "checkpoint.pt", weights_only=False)
    assert meta["T"] == 2 and meta["input_scale"] == 1.0 and "direct encoding" in meta["input"]
    assert meta["input_mean"] == pytest.approx(ckpt["normalize"]["mean"]) and meta["in_channels"] == 3


def test_ddp_two_cpu_processes_on_images(store, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547",
           "-m", "pipeline.train", "cifar10", "--store", str(store), "--out", str(tmp_path / "ddp"), "--epochs", "1",
           "--set", "train.device=cpu", *FAST]
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["epochs"] == 1 and m["test_acc_Ts"] is not None


def test_epoch_order_shares_like_distributed_sampler():
    """Each rank's batches: DistributedSampler's padded, strided share of one seeded permutation."""
    from torch.utils.data import DistributedSampler

    from pipeline.image_data import epoch_order

    n, bs = 23, 4
    one = torch.cat(epoch_order(n, bs, seed=3, epoch=1))
    assert len(one) == 20 and len(set(one.tolist())) == 20  # drop_last, no repeats
    gen = torch.Generator()
    gen.manual_seed(3 * 1000 + 1)
    perm = torch.randperm(n, generator=gen)
    torch.testing.assert_close(one, perm[:20])
    shares = [torch.cat(epoch_order(n, bs, seed=3, epoch=1, rank=r, world=2)) for r in range(2)]
    assert [len(s) for s in shares] == [12, 12]  # 12 of each rank's 12 (23 padded to 24): the same batch count
    padded = torch.cat([perm, perm[:1]])
    for r in range(2):
        torch.testing.assert_close(shares[r], padded[r::2][:12])
    sampler = DistributedSampler(range(n), num_replicas=2, rank=0, shuffle=False)
    assert len(list(sampler)) == 12  # the same share size as torch's sampler
