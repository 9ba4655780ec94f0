"""Named recipes (recipes.<dataset>: {use:, NAME: {bin:, train:, by_method:}}), --recipe, the per-method layer,
the step schedule, and the tssd_vgg9 recipe of params.yaml (TSSD's published setting)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import pipeline.bin as bin_mod
from models.nets import ARCHITECTURES, build_model, count_parameters
import pipeline.train as train_mod
from pipeline.config import ConfigError, IngestConfig, PathsConfig, load_params, load_section, recipe_methods, resolve_recipe
from pipeline.datasets import get_spec
from pipeline.frames import BinConfig, Timesteps
from pipeline.ingest import ingest
from pipeline.runs import TrainConfig, load_checkpoint, saved_train_config

from tests.conftest import make_learnable_tree

INLINE = {
    "bin": {"out_size": None, "dtype": "int16"},
    "train": {"lr": 0.1, "epochs": 8, "method": "tssd", "augment": {"flip_p": 0.0, "max_shift_px": 2}},
    "recipes": {"gest": {"bin": {"out_size": [64, 64], "dtype": "uint8"},
                         "train": {"lr": 0.001, "epochs": 200, "augment": {"max_shift_px": 5}}}},
}

NAMED = {
    "bin": {"out_size": None, "dtype": "int16"},
    "train": {"lr": 0.1, "epochs": 8, "method": "tssd", "alpha": 1.0, "augment": {"flip_p": 0.0, "max_shift_px": 2}},
    "recipes": {"gest": {
        "use": "a",
        "a": {"bin": {"out_size": [64, 64]}, "train": {"lr": 0.001, "epochs": 200, "augment": {"max_shift_px": 5}},
              "by_method": {"tssd": {"alpha": 2.0, "lr": 0.05, "T_t": 12}, "baseline": {"lr": 0.2}}},
        "b": {"bin": {"out_size": [48, 48], "dtype": "uint8"}, "train": {"lr": 0.3, "T_s": 5, "T_t": 10}},
    }},
}


def _train(over=(), recipe=None, params=NAMED, dataset="gest") -> TrainConfig:
    return load_section("train", TrainConfig, params, list(over), dataset=dataset, recipe=recipe)


def test_inline_form_is_unchanged():
    cfg = _train(params=INLINE)
    assert (cfg.lr, cfg.epochs, cfg.augment.flip_p, cfg.augment.max_shift_px) == (0.001, 200, 0.0, 5)
    assert load_section("bin", BinConfig, INLINE, dataset="gest").out_size == (64, 64)
    assert resolve_recipe(INLINE, "gest") == (None, INLINE["recipes"]["gest"])
    assert resolve_recipe(INLINE, "other") == (None, {})


def test_named_form_takes_use_and_recipe_picks_another():
    cfg = _train()  # recipe a, method tssd: a.train then a.by_method.tssd
    assert (cfg.lr, cfg.epochs, cfg.alpha, cfg.T_t, cfg.augment.max_shift_px) == (0.05, 200, 2.0, 12, 5)
    assert load_section("bin", BinConfig, NAMED, dataset="gest").out_size == (64, 64)
    b = _train(recipe="b")
    assert (b.lr, b.epochs, b.T_s, b.T_t, b.alpha) == (0.3, 8, 5, 10, 1.0)
    assert load_section("bin", BinConfig, NAMED, dataset="gest", recipe="b").dtype == "uint8"
    # the DVC way: -S recipes.gest.use=b edits params.yaml; --set does the same here
    assert _train(["recipes.gest.use=b"]) == b
    assert resolve_recipe(NAMED, "gest", overrides=["recipes.gest.use=b"])[0] == "b"
    assert resolve_recipe(NAMED, "gest", "b") == ("b", NAMED["recipes"]["gest"]["b"])
    assert recipe_methods(NAMED, "gest") == ("tssd", "baseline") and recipe_methods(NAMED, "gest", "b") == ()


def test_by_method_applies_to_its_method_only_and_loses_to_set_and_flags():
    assert _train(["train.method=baseline"]).lr == 0.2  # baseline's layer
    assert _train(["train.method=baseline"]).alpha == 1.0  # tssd's layer not applied
    assert _train(["train.method=ssd"]).lr == 0.001  # no layer for ssd: the recipe's train
    cfg = _train(["train.lr=0.7"])  # --set wins over the per-method layer ...
    assert (cfg.lr, cfg.alpha) == (0.7, 2.0)
    # the stage flag (appended after the --set) wins; the method is resolved first, from it, then its layer applies
    flagged = _train(["train.method=tssd", "train.method=baseline"])
    assert (flagged.method, flagged.lr, flagged.alpha) == ("baseline", 0.2, 1.0)
    assert _train(["train.method=tssd", "train.lr=0.7", "train.method=baseline"]).lr == 0.7
    # the recipe's own train.method picks the layer when no --set does
    params = {**NAMED, "recipes": {"gest": {**NAMED["recipes"]["gest"], "a": {
        **NAMED["recipes"]["gest"]["a"], "train": {"method": "baseline"}}}}}
    assert (_train(params=params).method, _train(params=params).lr) == ("baseline", 0.2)
    # no train.method anywhere: the dataclass default (tssd)
    no_method = {**NAMED, "train": {}}
    assert _train(params=no_method).alpha == 2.0 and TrainConfig().method == "tssd"
    # by_method in the inline form too
    inline = {"recipes": {"gest": {"train": {"lr": 0.01}, "by_method": {"tssd": {"lr": 0.02}}}}}
    assert _train(params=inline).lr == 0.02 and _train(["train.method=tsd"], params=inline).lr == 0.01


@pytest.mark.parametrize("params, recipe, over, match", [
    (NAMED, "c", [], r"--recipe c: dataset gest has no such recipe; its recipes: a, b"),
    (NAMED, None, ["recipes.gest.use=zz"], r"recipes.gest.use = 'zz': dataset gest has no such recipe; its recipes: a, b"),
    (INLINE, "a", [], r"--recipe a: recipes.gest has no named recipes \(it is one inline recipe"),
    (INLINE, "a", ["recipes.gest={}"], r"--recipe a: recipes.gest has no named recipes \(none is defined"),
    (NAMED, None, ["recipes.gest.train={lr: 1}"], r"both use: \(named recipes\) and \['train'\]"),
    (NAMED, None, ["recipes.gest.a.trian={lr: 1}"], r"unknown key\(s\) in recipes.gest.a: \['trian'\]"),
    (NAMED, None, ["recipes.gest.a.train.lrr=1"], r"unknown key\(s\) in recipes.gest.a.train"),
    (NAMED, None, ["recipes.gest.a.by_method.tsdd={lr: 1}"], r"names 'tsdd', not a method"),
    (NAMED, None, ["recipes.gest.a.by_method.tsd={lrr: 1}"], r"unknown key\(s\) in recipes.gest.a.by_method.tsd"),
    (NAMED, None, ["recipes.gest.a.by_method.tsd={method: tssd}"], r"by_method.tsd.method: the per-method layer"),
    (NAMED, None, ["recipes.gest.a.by_method=5"], r"recipes.gest.a.by_method must be a mapping"),
])
def test_bad_recipes_are_refused_naming_the_dataset_and_its_recipes(params, recipe, over, match):
    with pytest.raises(ConfigError, match=match):
        _train(over, recipe, params)


def test_recipe_needs_a_dataset():
    with pytest.raises(ConfigError, match="without a dataset"):
        load_section("train", TrainConfig, NAMED, recipe="a")


def test_bin_for_training_bins_the_union_over_the_by_method_timesteps(monkeypatch, tmp_path):
    got = []

    def fake_run(cfg, *args):
        got.append(cfg)
        return [], 0

    monkeypatch.setattr(bin_mod, "_run_or_report", fake_run)
    assert bin_mod._for_training("gest", NAMED, [], tmp_path / "ev.zarr", PathsConfig(), False, False) == 0
    assert got[-1].T == (2, 4, 12) and got[-1].out_size == (64, 64)  # T_s 2 / T_t 4, and tssd's T_t 12
    assert bin_mod._for_training("gest", NAMED, [], tmp_path / "ev.zarr", PathsConfig(), False, False, "b") == 0
    assert got[-1].T == (5, 10) and got[-1].dtype == "uint8"
    # the train.method of params does not matter (the DVC bin stage does not depend on it)
    bin_mod._for_training("gest", NAMED, ["train.method=ssd"], tmp_path / "ev.zarr", PathsConfig(), False, False)
    assert got[-1].T == (2, 4, 12)
    assert load_section("train", Timesteps, NAMED, dataset="gest", subset=True).T_t == 12  # train.method: tssd


# ------------------------------------------------------------------------------------------ step schedule
def test_step_schedule_is_closed_form_and_validated():
    f = train_mod._lr_factor(TrainConfig(schedule="step", step_every=30, step_gamma=0.1, epochs=100))
    assert [f(e) for e in (0, 29, 30, 59, 60, 90, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 1e-3, 1e-3])
    g = train_mod._lr_factor(TrainConfig(schedule="step", step_every=1, step_gamma=0.5))
    assert [g(e) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert train_mod._lr_factor(TrainConfig(schedule="step", step_gamma=1.0))(1000) == 1.0
    for bad in ({"step_every": 0}, {"step_gamma": 0.0}, {"step_gamma": 1.5}, {"step_gamma": -0.1}):
        with pytest.raises(ConfigError, match="step_every|step_gamma"):
            TrainConfig(schedule="step", **bad)
    with pytest.raises(ConfigError, match="cosine, constant, step"):
        TrainConfig(schedule="exp")


def test_a_checkpoint_from_before_the_step_keys_still_loads():
    saved = {k: v for k, v in train_mod._comparable(TrainConfig()).items() if k not in ("step_every", "step_gamma")}
    cfg = saved_train_config(saved)
    assert (cfg.step_every, cfg.step_gamma) == (30, 0.1)
    assert train_mod._comparable(cfg) == train_mod._comparable(TrainConfig())  # a resume still matches


# ------------------------------------------------------------------------------------------ params.yaml's recipes
QUOTED = {"arch": "vgg9", "T_s": 5, "T_t": 10, "epochs": 100, "batch_size": 64, "optimizer": "sgd", "lr": 0.1,
          "momentum": 0.9, "weight_decay": 1e-3, "schedule": "step", "step_every": 30, "step_gamma": 0.1}


@pytest.mark.parametrize("dataset, default, flip", [("cifar10_dvs", "tet", 0.5), ("dvs_gesture", "plif", 0.0)])
def test_repository_recipes(dataset, default, flip):
    params = load_params()
    assert resolve_recipe(params, dataset)[0] == default
    cfg = load_section("train", TrainConfig, params, dataset=dataset, recipe="tssd_vgg9")
    assert {k: getattr(cfg, k) for k in QUOTED} == QUOTED
    assert cfg.augment.flip_p == flip  # dvs_gesture: left/right-hand classes, no flips
    bin_cfg = load_section("bin", BinConfig, params, dataset=dataset, recipe="tssd_vgg9")
    assert (bin_cfg.out_size, bin_cfg.dtype) == ((48, 48), "uint8")
    old = load_section("train", TrainConfig, params, dataset=dataset)  # today's literature recipe, unchanged
    assert (old.arch, old.T_s, old.schedule) == (("vggsnn", 10, "cosine") if dataset == "cifar10_dvs"
                                                 else ("gesture_net", 16, "cosine"))


def test_train_cli_resolves_the_tssd_vgg9_recipe_without_training(monkeypatch, tmp_path):
    got = {}
    monkeypatch.setattr(train_mod, "run", lambda cfg, bin_cfg, *a, **k: got.update(cfg=cfg, bin=bin_cfg, **k))
    store = tmp_path / "ev.zarr"
    store.mkdir()  # exists: no ingest-first
    assert train_mod.main(["cifar10_dvs", "--recipe", "tssd_vgg9", "--store", str(store), "--out",
                           str(tmp_path / "run")]) == 0
    assert {k: getattr(got["cfg"], k) for k in QUOTED} == QUOTED and got["recipe"] == "tssd_vgg9"
    assert got["bin"].out_size == (48, 48) and got["bin"].dtype == "uint8" and got["cfg"].augment.flip_p == 0.5
    assert train_mod.main(["cifar10_dvs", "--store", str(store), "--out", str(tmp_path / "run")]) == 0
    assert got["recipe"] == "tet" and got["cfg"].arch == "vggsnn"
    assert train_mod.main(["cifar10_dvs", "--recipe", "nope", "--store", str(store)]) != 0
    assert bin_mod.main(["cifar10_dvs", "--recipe", "nope", "--store", str(store)]) != 0
    assert bin_mod.main(["cifar10_dvs", "--for-training", "--recipe", "nope", "--store", str(store)]) != 0
    assert bin_mod.main(["digits_dvs", "--recipe", "tssd_vgg9", "--store", str(store)]) != 0  # it has none


# ------------------------------------------------------------------------------------------ recorded name
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("recipes")
    out = tmp / "ev.zarr"
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp / "raw"), out, IngestConfig(), progress=False)
    return out


def test_the_checkpoint_and_metrics_record_the_recipe(store, tmp_path):
    """Two CPU epochs through the CLI with a named recipe, its by_method layer and the step schedule: the
    checkpoint and metrics.json name the recipe, history.csv's lr follows lr * gamma^e. (vgg9 itself: a training
    epoch takes minutes on a shared CPU, so it is checked by forward/backward below.)"""
    tiny = ("{use: tiny, tiny: {bin: {out_size: [16, 16], dtype: int16}, train: {arch: small, T_s: 2, T_t: 4, "
            "batch_size: 8, schedule: step, step_every: 1, step_gamma: 0.5}, by_method: {baseline: {lr: 0.04}}}}")
    args = ["dvs_gesture", "--store", str(store), "--out", str(tmp_path / "run"), "--method", "baseline",
            "--epochs", "2", "--set", f"recipes.dvs_gesture={tiny}", "--set", f"paths.frames_root={tmp_path / 'f'}",
            "--set", "train.augment.flip_p=0", "--no-progress"]
    assert train_mod.main(args) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["config"]["recipe"] == "tiny" and ckpt["config"]["train"]["lr"] == 0.04
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recipe"] == "tiny"
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.04, 0.02])
    assert all(math.isfinite(float(r["loss"])) for r in rows)


# ------------------------------------------------------------------------------------------ vgg9
def _vgg9_count(P: int, hw: tuple[int, int], C: int) -> int:
    """BNTT's VGG-9 counted from its layer list: conv3x3 without bias + BN (gamma, beta) each, fc1 without bias
    + BN, fc2 without bias."""
    widths = [P, 64, 64, 128, 128, 256, 256, 256]
    conv = sum(9 * a * b + 2 * b for a, b in zip(widths[:-1], widths[1:]))
    return conv + 256 * (hw[0] // 8) * (hw[1] // 8) * 1024 + 2 * 1024 + 1024 * C


@pytest.mark.parametrize("P, hw, C, n", [(2, (48, 48), 11, 11_186_560), (2, (48, 48), 10, 11_185_536),
                                         (3, (32, 32), 10, 5_943_232)])
def test_vgg9_parameter_counts(P, hw, C, n):
    net = build_model("vgg9", in_channels=P, n_classes=C, input_hw=hw, weak_stages=())
    assert count_parameters(net) == _vgg9_count(P, hw, C) == n
    assert f"{n:,}" in ARCHITECTURES["vgg9"].doc
    full = build_model("vgg9", in_channels=P, n_classes=C, input_hw=hw, weak_head="bottleneck", bn_extra_T=[10])
    assert count_parameters(full) > n and count_parameters(full.deploy()) == n


@pytest.mark.parametrize("P, hw", [(2, (48, 48)), (3, (32, 32)), (1, (8, 8)), (2, (13, 10))])
def test_vgg9_forward_backward_at_any_size(P, hw):
    torch.manual_seed(0)
    net = build_model("vgg9", in_channels=P, n_classes=5, input_hw=hw, weak_head="bottleneck", bn_extra_T=[4])
    x = torch.poisson(torch.full((2, 2, P, *hw), 0.5))
    out = net(x, record_rates=True)
    assert out.logits.shape == (2, 2, 5) and out.weak["stage2"].shape == (2, 2, 5)
    assert out.rates is not None and 0.0 < out.rates["head.0"] < 1.0  # the BatchNorm-fed fc1 LIF fires
    out.logits.mean(0).sum().backward()
    trained = [p for n, p in net.named_parameters() if ".per_T." not in n and not n.startswith("weak_heads.")]
    assert all(p.grad is not None for p in trained) and net.head.fc1.weight.grad.abs().sum() > 0
    assert net(torch.poisson(torch.full((4, 2, P, *hw), 0.5))).logits.shape == (4, 2, 5)  # the per-T BN path
    with pytest.raises(ValueError, match=">= 8"):
        build_model("vgg9", in_channels=P, n_classes=5, input_hw=(7, 16))


def test_vgg9_head_batchnorm_follows_the_teacher_pass_policy():
    """bn_stats: student -- a pass with update_bn_stats=False leaves the head's running statistics alone too."""
    net = build_model("vgg9", in_channels=2, n_classes=3, input_hw=(8, 8), weak_stages=())
    before = net.head.bn.running_mean.clone()
    net(torch.poisson(torch.full((3, 2, 2, 8, 8), 0.5)), update_bn_stats=False)
    assert torch.equal(net.head.bn.running_mean, before)
    net(torch.poisson(torch.full((3, 2, 2, 8, 8), 0.5)))
    assert not torch.equal(net.head.bn.running_mean, before)


def test_vgg9_exports_to_nir_and_norse_reproduces_it(tmp_path):
    """The head's BatchNorm is folded into fc1; Norse (subtract reset) runs the written graph as ours."""
    nir = pytest.importorskip("nir")
    pytest.importorskip("norse")
    from models.nir_export import to_nir
    from tests.nir_importers import import_norse

    torch.manual_seed(0)
    net = build_model("vgg9", in_channels=2, n_classes=4, input_hw=(8, 8), weak_stages=(), t_ref=2)
    for m in net.modules():  # statistics and affine parameters away from their initial values
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.8, 1.6)
            m.bias.data.uniform_(-0.1, 0.3)
    net = net.deploy()
    x = torch.poisson(torch.full((2, 3, 2, 8, 8), 1.0))
    graph, info = to_nir(net, (8, 8))
    nir.write(tmp_path / "m.nir", graph)
    with torch.no_grad():
        out = net(x, record_rates=True)
    assert 0.0 < out.rates["head.0"] < 1.0
    got = import_norse(nir.read(tmp_path / "m.nir"), dt_s=info.dt_s, soft=True)(x)
    assert (out.logits - got).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------ study
def test_study_passes_the_recipe_to_train_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    import subprocess

    import yaml

    import pipeline.jobs as jobs
    import pipeline.study as study

    calls = []
    monkeypatch.setattr(jobs.subprocess, "run",
                        lambda cmd, **k: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**NAMED, "datasets": ["gest"], "paths": {"runs_root": str(tmp_path / "runs")}}))
    base = ["--params", str(params), "--methods", "baseline", "--seeds", "0", "--no-ablations"]
    assert study.main([*base, "--recipe", "b"]) == 0
    train, evaluate = calls
    assert train[2] == "pipeline.train" and train[train.index("--recipe") + 1] == "b"
    assert evaluate[2] == "pipeline.evaluate" and "--recipe" not in evaluate  # evaluate reads the checkpoint
    record = json.loads((tmp_path / "runs" / "gest" / "study" / "baseline-seed0" / "study.json").read_text())
    assert record["spec"]["recipe"] == "b"
    calls.clear()
    assert study.main([*base, "--recipe", "zz"]) != 0 and calls == []  # refused before any run
    for name in study.OUTPUTS:  # the run's outputs, as train and evaluate would leave them
        (tmp_path / "runs" / "gest" / "study" / "baseline-seed0" / name).write_text("")
    assert study.main([*base, "--recipe", "b", "--plan"]) == 0  # finished with this spec
    assert study.main(base) != 0 and calls == []  # finished with another recipe: another spec, refused
