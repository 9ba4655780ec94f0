"""TSSD's switches (issue 11, part 1): each does what its name says, and the deployed network is always the
student alone at T_s with exactly the baseline's parameters.

bn_stats (student | shared | per_T), teacher_ce and the multi_T control, weak_head (bottleneck | gap_linear),
ssd_target, weak_ce (was gamma), kd_on (mean | per_step), teacher_input (rebin | repeat).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from models import ARCHITECTURES, build_model, count_parameters
from models.losses import kd_loss, task_loss, tssd_loss
from models.nets import BottleneckWeakHead, Output, TimeBatchNorm2d, WeakHead
from pipeline.config import ConfigError, load_section
from pipeline.data import teacher_frames
from pipeline.runs import TrainConfig
from pipeline.train import Pair, _model_args

T_S, T_T, B, P, H, C = 2, 4, 4, 2, 16, 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def frames(T: int, b: int = B) -> torch.Tensor:
    return torch.poisson(torch.full((T, b, P, H, H), 0.6))


def net(**kw) -> torch.nn.Module:
    return build_model("small", in_channels=P, n_classes=C, input_hw=(H, H), t_ref=T_S, **kw)


def first_bn_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first conv-BN's output ``[T, B, C, H, W]`` of ``model`` on ``x`` (a forward hook)."""
    seen = []
    hook = model.stages["stage1"].blocks[0].ann.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def running_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- bn_stats


def test_bn_stats_student_teacher_pass_leaves_running_stats_as_the_student_alone():
    """bn_stats: student -- after a student + teacher step the running statistics are exactly those of a
    baseline-style student-only pass on the same batch; the teacher is still normalised with batch statistics."""
    model = net()
    alone = copy.deepcopy(model)
    x_s, x_t = frames(T_S), frames(T_T)
    before = running_stats(model)
    out_s, out_t = Pair(model)(x_s, x_t, teacher_bn_update=False)
    out_alone = alone(x_s)
    assert_same(running_stats(model), running_stats(alone))
    assert not all(torch.equal(before[k], v) for k, v in running_stats(model).items())  # the student did update
    torch.testing.assert_close(out_s.logits, out_alone.logits, rtol=0, atol=0)
    # the teacher pass itself: training-mode BN on its own batch statistics, as under shared
    shared = copy.deepcopy(alone)
    _, out_t_shared = Pair(shared)(x_s, x_t, teacher_bn_update=True)
    torch.testing.assert_close(out_t.logits, out_t_shared.logits, rtol=0, atol=0)
    assert out_t.weak == {}  # the teacher run skips the weak heads: no loss reads them
    # shared (today's behaviour) blends the teacher's batch statistics into the deployed ones
    changed = [k for k, v in running_stats(shared).items() if k.endswith("running_mean")
               and not torch.equal(v, running_stats(model)[k])]
    assert changed


def test_bn_stats_student_keeps_autograd_through_the_teacher():
    model = net()
    x_t = frames(T_T)
    _, out_t = Pair(model)(frames(T_S), x_t, teacher_bn_update=False)
    out_t.logits.sum().backward()
    bn = model.stages["stage1"].blocks[0].ann.layers[1]
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    _, out_t = Pair(model)(frames(T_S), x_t, teacher_grad=False)
    assert not out_t.logits.requires_grad


def test_bn_stats_per_T_keeps_separate_statistics_and_deploy_keeps_the_students():
    model = net(bn_extra_T=(T_T,))
    assert model.bn_extra_T == (T_T,)
    bns = [m for m in model.modules() if isinstance(m, TimeBatchNorm2d)]
    student_before = [(m.running_mean.clone(), m.num_batches_tracked.clone()) for m in bns]
    teacher_before = [m.per_T[str(T_T)].running_mean.clone() for m in bns]
    model(frames(T_T))  # a teacher pass: only the T_t BatchNorms move
    for m, (mean, n), t0 in zip(bns, student_before, teacher_before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.num_batches_tracked, n)
        assert not torch.equal(m.per_T[str(T_T)].running_mean, t0)
    teacher_after = [m.per_T[str(T_T)].running_mean.clone() for m in bns]
    model(frames(T_S))  # a student pass: only the T_s ones (also used at any T without its own)
    for m, (mean, _), t1 in zip(bns, student_before, teacher_after):
        assert not torch.equal(m.running_mean, mean)
        assert torch.equal(m.per_T[str(T_T)].running_mean, t1)
    # the T_t BatchNorm has its own affine parameters, and they get the teacher's gradient
    model(frames(T_T)).logits.sum().backward()
    assert bns[0].per_T[str(T_T)].weight.grad is not None and bns[0].weight.grad is None
    # deploy: the student's BatchNorm at every T, the baseline's parameter count and logits
    deployed = model.deploy()
    baseline = net(weak_stages=()).eval()
    baseline.load_state_dict(model.backbone_state_dict())
    assert deployed.bn_extra_T == () and count_parameters(deployed) == count_parameters(baseline)
    x = frames(T_T, 2)
    with torch.no_grad():
        assert torch.equal(deployed(x).logits, baseline(x).logits)
    # the training net in eval at T_t normalises with the T_t statistics, the deployed one with the student's
    model.eval()
    mean_t = bns[0].per_T[str(T_T)].running_mean
    conv_out = model.stages["stage1"].blocks[0].ann.layers[0](x.flatten(0, 1) * (T_T / T_S))  # t_ref scaling
    expected = (conv_out - mean_t[:, None, None]) \
        / (bns[0].per_T[str(T_T)].running_var[:, None, None] + bns[0].eps).sqrt()
    expected = expected * bns[0].per_T[str(T_T)].weight[:, None, None] + bns[0].per_T[str(T_T)].bias[:, None, None]
    torch.testing.assert_close(first_bn_output(model, x).flatten(0, 1), expected.detach())
    assert not torch.allclose(first_bn_output(deployed, x), first_bn_output(model, x))


# ----------------------------------------------------------------------------- deploy = baseline, every switch


def _combos(arch: str) -> list[tuple[str, str, str, float]]:
    """(method, bn_stats, weak_head, weak_ce): every combination on the small net, the model-changing extremes
    on the big ones (each build of vggsnn costs ~9 M parameters)."""
    if arch != "small":
        return [("tssd", "per_T", "bottleneck", 0.0), ("tssd", "student", "gap_linear", 0.0)]
    combos = [(*c, 0.0) for c in itertools.product(("baseline", "multi_T", "tsd", "ssd", "tssd"),
                                                    ("student", "shared", "per_T"), ("bottleneck", "gap_linear"))]
    return combos + [("baseline", "shared", "bottleneck", 1.0), ("multi_T", "per_T", "gap_linear", 1.0)]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_deploy_equals_baseline_for_every_switch_combination_that_changes_the_model(arch):
    hw = {"vggsnn": [16, 16], "gesture_net": [32, 32], "small": [16, 16], "vgg9": [8, 8]}[arch]
    base_cfg = TrainConfig(method="baseline", arch=arch)
    n_base = count_parameters(build_model(**_model_args(base_cfg, P, C, hw)))
    x = torch.poisson(torch.full((T_S, 4, P, *hw), 0.6))
    checked: set = set()
    for method, bn_stats, weak_head, weak_ce in _combos(arch):
        cfg = TrainConfig(method=method, arch=arch, bn_stats=bn_stats, weak_head=weak_head, weak_ce=weak_ce)
        args = _model_args(cfg, P, C, hw)
        model = build_model(**args)
        has_heads = method in ("ssd", "tssd") or weak_ce > 0
        assert bool(model.weak_stages) == has_heads, cfg
        assert model.bn_extra_T == ((cfg.teacher_T,) if bn_stats == "per_T" and method in ("multi_T", "tsd", "tssd")
                                    else ()), cfg
        if has_heads:
            kind = BottleneckWeakHead if weak_head == "bottleneck" else WeakHead
            assert all(isinstance(h, kind) for h in model.weak_heads.values())
        deployed = model.deploy()
        assert count_parameters(deployed) == n_base, cfg
        assert deployed.weak_stages == () and deployed.bn_extra_T == ()
        structure = (tuple(model.weak_stages), weak_head if has_heads else None, model.bn_extra_T)
        if arch != "small" or structure in checked:
            continue
        checked.add(structure)
        # the same function as the baseline loaded with the backbone's weights, on trained running statistics
        for m in model.modules():  # cumulative averages: a few passes give the data's statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            for _ in range(3):
                model(torch.poisson(torch.full((T_S, 8, P, *hw), 0.6)))
                model(torch.poisson(torch.full((cfg.teacher_T, 8, P, *hw), 0.6)))
        deployed = model.deploy()
        ref = build_model(**_model_args(base_cfg, P, C, hw)).eval()
        ref.load_state_dict(model.backbone_state_dict())
        with torch.no_grad():
            logits = deployed(x).logits
            assert torch.equal(logits, ref(x).logits), cfg
            assert logits.std(1).max() > 0, cfg  # not a constant function: the samples are told apart
    assert arch != "small" or len(checked) == 6  # {no heads, bottleneck, gap_linear} x {BN per T or not}


def test_bottleneck_head_shape_and_is_removed_by_deploy():
    model = net(weak_head="bottleneck")
    head = model.weak_heads["stage2"]
    assert isinstance(head, BottleneckWeakHead)
    # stage2 of small: 32 channels at H/4; the bottleneck keeps the final stage's width (32) and halves space
    assert head.conv1.layers[0].in_channels == 32 and head.conv2.layers[0].stride == (2, 2)
    out = model(frames(T_S))
    assert out.weak["stage2"].shape == (T_S, B, C)
    assert model.deploy().weak_heads is not None and len(model.deploy().weak_heads) == 0
    assert count_parameters(model) - count_parameters(model.deploy()) == count_parameters(head)


# ----------------------------------------------------------------------------- teacher_ce, multi_T


def fake(T: int, weak: bool = True) -> Output:
    return Output(torch.randn(T, B, C, requires_grad=True),
                  {"stage2": torch.randn(T_S, B, C, requires_grad=True)} if weak else {}, None)


def test_teacher_ce_zero_drops_the_teacher_ce_from_loss_and_gradient():
    y = torch.arange(B) % C
    s, t = fake(T_S), fake(T_T, weak=False)
    total, parts = tssd_loss(s, y, teacher=t, method="tssd", teacher_ce=0.0)
    assert parts["task_teacher"] == pytest.approx(task_loss(t.logits, y).item())  # still reported
    assert total.item() == pytest.approx(parts["task_student"] + parts["tsd"] + parts["ssd"], rel=1e-6)
    (g,) = torch.autograd.grad(total, t.logits, allow_unused=True)
    assert g is None  # teacher_grad false, teacher_ce 0: nothing reaches the teacher
    total, parts = tssd_loss(s, y, teacher=t, method="tssd", teacher_ce=0.5)
    assert total.item() == pytest.approx(parts["task_student"] + 0.5 * parts["task_teacher"] + parts["tsd"]
                                         + parts["ssd"], rel=1e-6)
    (g,) = torch.autograd.grad(total, t.logits)
    (g_ce,) = torch.autograd.grad(0.5 * task_loss(t.logits, y), t.logits)
    torch.testing.assert_close(g, g_ce)


def test_multi_T_is_both_ces_and_no_distillation():
    y = torch.arange(B) % C
    s, t = fake(T_S, weak=False), fake(T_T, weak=False)
    total, parts = tssd_loss(s, y, teacher=t, method="multi_T", alpha=5.0, beta=5.0)
    assert set(parts) == {"task_student", "task_teacher", "total"}  # no KD term at all
    torch.testing.assert_close(total, task_loss(s.logits, y) + task_loss(t.logits, y))
    gs, gt = torch.autograd.grad(total, (s.logits, t.logits))
    torch.testing.assert_close(gs, torch.autograd.grad(task_loss(s.logits, y), s.logits)[0])
    torch.testing.assert_close(gt, torch.autograd.grad(task_loss(t.logits, y), t.logits)[0])
    with pytest.raises(ValueError, match="teacher"):
        tssd_loss(s, y, method="multi_T")


# ----------------------------------------------------------------------------- kd_on, ssd_target, weak_ce


def test_per_step_kd_equals_mean_kd_when_all_steps_are_equal():
    zs = torch.randn(1, B, C).expand(T_S, B, C)
    zt = torch.randn(1, B, C).expand(T_T, B, C)
    torch.testing.assert_close(kd_loss(zs, zt, 2.0, "per_step"), kd_loss(zs, zt, 2.0, "mean"))


def test_per_step_kd_by_hand():
    zs, zt, tau = torch.randn(T_S, B, C), torch.randn(T_T, B, C), 2.0
    k = T_T // T_S
    by_hand = 0.0
    for s in range(T_S):
        p_t = torch.softmax(zt[s * k:(s + 1) * k].mean(0) / tau, -1)  # the teacher steps of the same time
        log_p_s = F.log_softmax(zs[s] / tau, -1)
        by_hand = by_hand + tau**2 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean() / T_S
    torch.testing.assert_close(kd_loss(zs, zt, tau, "per_step"), by_hand)
    assert not torch.isclose(kd_loss(zs, zt, tau, "per_step"), kd_loss(zs, zt, tau, "mean"))
    with pytest.raises(ValueError, match="multiple"):
        kd_loss(zs, torch.randn(3, B, C), tau, "per_step")
    with pytest.raises(ValueError, match="per_step"):
        kd_loss(zs, zt, tau, "last")


def test_ssd_target_teacher_distils_the_weak_head_towards_the_teacher():
    y = torch.arange(B) % C
    s, t = fake(T_S), fake(T_T, weak=False)
    _, parts = tssd_loss(s, y, teacher=t, method="tssd", ssd_target="teacher")
    assert parts["ssd"] == pytest.approx(kd_loss(s.weak["stage2"], t.logits).item(), rel=1e-6)
    _, parts = tssd_loss(s, y, teacher=t, method="tssd", ssd_target="student")
    assert parts["ssd"] == pytest.approx(kd_loss(s.weak["stage2"], s.logits).item(), rel=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        tssd_loss(s, y, method="ssd", ssd_target="teacher")
    # the target is detached: no SSD gradient into the teacher's logits
    total, _ = tssd_loss(s, y, teacher=t, method="tssd", ssd_target="teacher", alpha=0.0, teacher_ce=0.0)
    assert torch.autograd.grad(total, t.logits, allow_unused=True)[0] is None


def test_weak_ce_adds_the_weak_heads_task_loss():
    y = torch.arange(B) % C
    s = fake(T_S)
    total, parts = tssd_loss(s, y, method="baseline", weak_ce=0.3)
    torch.testing.assert_close(total, task_loss(s.logits, y) + 0.3 * task_loss(s.weak["stage2"], y))
    assert "weak_task" in parts


# ----------------------------------------------------------------------------- teacher_input


def test_repeat_teacher_input_is_each_student_frame_repeated():
    x_s = frames(T_S)
    x_t = teacher_frames(x_s, T_T)
    k = T_T // T_S
    assert x_t.shape == (T_T, *x_s.shape[1:])
    for t in range(T_T):
        torch.testing.assert_close(x_t[t] * k, x_s[t // k], rtol=0, atol=0)
    torch.testing.assert_close(x_t.sum(0), x_s.sum(0))  # the same events in all, as rebinning keeps them
    # what the net's first layer sees after its T / T_s input scaling: the student frames, each held k steps
    torch.testing.assert_close(x_t * (T_T / T_S), x_s.repeat_interleave(k, 0))
    with pytest.raises(ValueError, match="multiple"):
        teacher_frames(x_s, 5)


# ----------------------------------------------------------------------------- config


def test_new_keys_defaults_and_refusals():
    cfg = TrainConfig()
    assert (cfg.bn_stats, cfg.teacher_ce, cfg.weak_head, cfg.teacher_input, cfg.kd_on, cfg.ssd_target,
            cfg.weak_ce) == ("student", 1.0, "bottleneck", "rebin", "mean", "student", 0.0)
    params = {"train": {"gamma": 0.5}}
    with pytest.raises(ConfigError, match=r"train\.gamma was renamed train\.weak_ce"):
        load_section("train", TrainConfig, params, dataset="digits_dvs")
    with pytest.raises(ConfigError, match=r"gamma was renamed .*weak_ce"):
        load_section("train", TrainConfig, {}, ["train.gamma=0.5"], dataset="digits_dvs")
    for bad, match in [
        ({"bn_stats": "running"}, "bn_stats"),
        ({"weak_head": "mlp"}, "weak_head"),
        ({"kd_on": "last"}, "kd_on"),
        ({"teacher_input": "copy"}, "teacher_input"),
        ({"ssd_target": "weak"}, "ssd_target"),
        ({"teacher_ce": -1.0}, "teacher_ce"),
        ({"teacher_input": "repeat", "T_s": 2, "T_t": 5}, "multiple of T_s"),
        ({"kd_on": "per_step", "T_s": 2, "T_t": 5}, "multiple of T_s"),
        ({"method": "ssd", "ssd_target": "teacher"}, "teacher run"),
        ({"method": "multi_T", "teacher_ce": 0.0}, "teacher_ce > 0"),
        ({"bn_stats": "per_T", "teacher_ce": 0.0}, "never train"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)
    # the same switches where the method does not read them are fine
    TrainConfig(method="baseline", teacher_input="repeat", kd_on="per_step", T_s=2, T_t=5)
    TrainConfig(method="multi_T", kd_on="per_step", T_s=2, T_t=5)
    TrainConfig(bn_stats="per_T", teacher_ce=0.0, teacher_grad=True)


# ----------------------------------------------------------------------------- the training step


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from pipeline.config import IngestConfig
    from pipeline.datasets import get_spec
    from pipeline.ingestion import ingest
    from tests.conftest import make_learnable_tree

    tmp = tmp_path_factory.mktemp("tssd_switches")
    out = tmp / "ev.zarr"
    ingest(get_spec("dvs_gesture"), make_learnable_tree(tmp / "raw", per_class=8), out, IngestConfig(),
           progress=False)
    return out


@pytest.mark.parametrize("switches", [
    {"teacher_input": "repeat", "bn_stats": "student", "teacher_ce": 0.0},
    {"teacher_input": "rebin", "bn_stats": "per_T", "kd_on": "per_step", "ssd_target": "teacher"},
])
def test_training_step_feeds_the_teacher_what_the_switches_say(tiny_store, tmp_path, monkeypatch, switches):
    """One epoch through `pipeline.train`: the Pair sees the teacher input (repeated student frames or the T_t
    cache), the BN policy and the autograd policy that the switches ask for; the run's deploy parameter count
    is the baseline's."""
    import json

    import pipeline.train as train_mod

    calls = []

    class Recording(train_mod.Pair):
        def forward(self, x_s, x_t=None, **kw):
            calls.append((x_s.clone(), None if x_t is None else x_t.clone(), kw))
            return super().forward(x_s, x_t, **kw)

    monkeypatch.setattr(train_mod, "Pair", Recording)
    sets = [f"train.{k}={v}" for k, v in switches.items()]
    fast = ["recipes.dvs_gesture={}", "bin.out_size=[16,16]", "bin.dtype=int16", "train.arch=small", "train.T_s=2",
            "train.T_t=4", "train.batch_size=8", "train.augment.max_shift_px=0", f"paths.frames_root={tmp_path / 'f'}"]
    for method in ("tssd", "baseline") if switches["teacher_input"] == "repeat" else ("tssd",):
        argv = ["dvs_gesture", "--store", str(tiny_store), "--out", str(tmp_path / method), "--epochs", "1",
                "--method", method, "--no-progress"]
        for item in fast + sets:
            argv += ["--set", item]
        assert train_mod.main(argv) == 0
        if method == "tssd":
            assert calls
            for x_s, x_t, kw in calls:
                assert x_t is not None and x_t.shape[0] == 4
                assert kw["teacher_bn_update"] is (switches["bn_stats"] != "student")
                assert kw["teacher_grad"] is (switches.get("teacher_ce", 1.0) != 0.0)
                if switches["teacher_input"] == "repeat":
                    assert torch.equal(x_t, teacher_frames(x_s, 4))
                else:  # the T_t cache: the same events, so every T_s bin's counts are the sum of its two sub-bins
                    assert torch.equal(x_t.unflatten(0, (2, 2)).sum(1), x_s)
    if (tmp_path / "baseline").exists():
        deploy = [json.loads((tmp_path / m / "metrics.json").read_text())["deploy_params"] for m in ("tssd", "baseline")]
        assert deploy[0] == deploy[1]
