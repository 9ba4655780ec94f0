"""Tests for models/: LIF dynamics (golden values), surrogates, nets, deploy parity, TSSD losses."""

from __future__ import annotations

import math

import pytest
import torch

from models import ARCHITECTURES, LIF, NeuronConfig, build_model, count_parameters
from models.losses import kd_loss, task_loss, tssd_loss
from models.nets import Output
from models.neurons import SURROGATES, lif_step, rect_surrogate, reset_subtract_fused

# Norse after models: models.neurons imports it with its import-time torch.jit deprecation warnings silenced.
from norse.torch.functional.lif_box import (  # noqa: E402  isort: skip
    LIFBoxFeedForwardState,
    LIFBoxParameters,
    lif_box_feed_forward_step,
)
from norse.torch.functional.reset import reset_subtract  # noqa: E402  isort: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def spikes(*shape: int, p: float = 0.3) -> torch.Tensor:
    return (torch.rand(*shape) < p).float()


# ----------------------------------------------------------------------------- neuron


def test_lif_matches_paper_recurrence_by_hand() -> None:
    # tau = 2, theta = 1, constant I = 0.6; H[t] = 0.5 H[t-1] + I, spike when H >= 1, then H -= 1.
    #   t=1: H = 0.6                      -> no spike
    #   t=2: H = 0.3    + 0.6 = 0.9       -> no spike
    #   t=3: H = 0.45   + 0.6 = 1.05      -> spike, H = 0.05
    #   t=4: H = 0.025  + 0.6 = 0.625     -> no spike
    #   t=5: H = 0.3125 + 0.6 = 0.9125    -> no spike
    #   t=6: H = 0.45625 + 0.6 = 1.05625  -> spike, H = 0.05625
    #   t=7: H = 0.028125 + 0.6 = 0.628125 -> no spike
    expected_spikes = [0, 0, 1, 0, 0, 1, 0]
    expected_v_after_reset = [0.6, 0.9, 0.05, 0.625, 0.9125, 0.05625, 0.628125]
    lif = LIF(NeuronConfig(tau_steps=2.0, v_th=1.0))
    current = torch.full((7, 1), 0.6, dtype=torch.float64)
    state = lif.initial_state(current)
    zs, vs = [], []
    for t in range(7):
        z, state = lif_step(current[t], state, lif.p, lif.dt)
        zs.append(z.item())
        vs.append(state.v.item())
    assert zs == expected_spikes
    assert vs == pytest.approx(expected_v_after_reset, abs=1e-12)
    # The multi-step module gives the same spikes.
    z_seq, last = lif(current)
    assert z_seq.flatten().tolist() == expected_spikes
    assert last.v.item() == pytest.approx(0.628125, abs=1e-12)


def test_soft_reset_subtracts_theta() -> None:
    for theta in (1.0, 0.7):
        lif = LIF(NeuronConfig(v_th=theta))
        current = torch.tensor([[theta + 0.3]])  # from rest: H = I = theta + 0.3 -> spike
        z, state = lif(current)
        assert z.item() == 1.0
        assert state.v.item() == pytest.approx(0.3, abs=1e-6)  # H - theta, not 0 (hard reset)


def test_paper_fires_at_threshold() -> None:
    z, state = LIF()(torch.tensor([[1.0]]))  # H == theta: the paper's Theta(0) = 1
    assert z.item() == 1.0 and state.v.item() == 0.0


def test_state_is_not_carried_between_calls() -> None:
    lif = LIF()
    x = torch.rand(5, 3, 4)
    z1, s1 = lif(x)
    z2, s2 = lif(x)
    assert torch.equal(z1, z2) and torch.equal(s1.v, s2.v)
    # An explicit state continues a sequence: two halves equal the whole.
    za, sa = lif(x[:2])
    zb, sb = lif(x[2:], sa)
    assert torch.equal(torch.cat([za, zb]), z1) and torch.equal(sb.v, s1.v)


@pytest.mark.parametrize("surrogate", [s for s in SURROGATES if s != "rect"])
@pytest.mark.parametrize("tau", [2.0, 3.0])
def test_lif_step_equals_norse_box_lif(surrogate: str, tau: float) -> None:
    """Our jump-form step == Norse's lif_box_feed_forward_step fed I / (dt tau_mem_inv), values and grads."""
    cfg = NeuronConfig(tau_steps=tau, surrogate=surrogate)
    ours = LIF(cfg)
    p_norse = LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(1.0 / (tau * cfg.dt_s), dtype=torch.float64),
        v_leak=torch.as_tensor(0.0, dtype=torch.float64),
        v_th=torch.as_tensor(cfg.v_th, dtype=torch.float64),
        v_reset=torch.as_tensor(0.0, dtype=torch.float64),
        method=surrogate,
        alpha=cfg.resolved_alpha,
        reset_method=reset_subtract,
    )
    current = (torch.rand(6, 4, 5, dtype=torch.float64) * 1.2).requires_grad_()
    z_ours, _ = ours(current)
    g_ours = torch.autograd.grad((z_ours * torch.arange(6.0, dtype=torch.float64)[:, None, None]).sum(), current)[0]

    state = LIFBoxFeedForwardState(v=torch.zeros_like(current[0]))
    zs = []
    for t in range(6):
        z, state = lif_box_feed_forward_step(current[t] * cfg.input_scale, state, p_norse, cfg.dt_s)
        zs.append(z)
    z_norse = torch.stack(zs)
    g_norse = torch.autograd.grad((z_norse * torch.arange(6.0, dtype=torch.float64)[:, None, None]).sum(), current)[0]
    assert torch.equal(z_ours, z_norse)
    torch.testing.assert_close(g_ours, g_norse, rtol=1e-9, atol=1e-12)


def test_fused_reset_equals_norse_reset_subtract() -> None:
    v = torch.randn(100, dtype=torch.float64, requires_grad=True)
    z = (torch.rand(100, dtype=torch.float64) > 0.5).double().requires_grad_()
    a = reset_subtract_fused(z, v, 0.0, 0.8)
    b = reset_subtract(z, v, torch.as_tensor(0.0), torch.as_tensor(0.8))
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sum(), (z, v))
    gb = torch.autograd.grad(b.sum(), (z, v))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_rect_surrogate_gradient_is_the_rectangle(width: float) -> None:
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64).requires_grad_()
    s = rect_surrogate(x, width)
    assert torch.equal(s, (x >= 0).double())
    (grad,) = torch.autograd.grad(s.sum(), x)
    inside = x.detach().abs() < width / 2
    assert torch.equal(grad[inside], torch.full_like(grad[inside], 1.0 / width))
    assert torch.equal(grad[~inside], torch.zeros_like(grad[~inside]))


def test_rect_gradient_through_lif_is_wrt_membrane() -> None:
    # One step from rest: H = I, so dS/dI = dS/dH = 1/a iff |I - theta| < a/2.
    current = torch.tensor([[0.4, 0.6, 0.9, 1.2, 1.6]], requires_grad=True)
    z, _ = LIF(NeuronConfig(alpha=1.0))(current)
    (grad,) = torch.autograd.grad(z.sum(), current)
    assert grad.flatten().tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("surrogate", ["rect", "triangle", "tanh", "circ", "heavi_erfc"])
def test_default_alpha_gives_unit_area(surrogate: str) -> None:
    x = torch.linspace(-200.0, 200.0, 800_001, dtype=torch.float64).requires_grad_()
    spec = SURROGATES[surrogate]
    (grad,) = torch.autograd.grad(spec.fn(x, spec.default_alpha).sum(), x)
    area = torch.trapezoid(grad, x.detach()).item()
    assert area == pytest.approx(1.0, abs=2e-3)


def test_norse_superspike_ignores_alpha() -> None:
    """Documents a Norse 1.1.0 quirk: SuperSpike's backward is 1/(|x|+1)^2 whatever alpha is."""
    x = torch.linspace(-2, 2, 9).requires_grad_()
    grads = [torch.autograd.grad(SURROGATES["super"].fn(x, a).sum(), x)[0] for a in (1.0, 100.0)]
    assert torch.equal(grads[0], grads[1])
    torch.testing.assert_close(grads[0], 1.0 / (x.detach().abs() + 1.0) ** 2)


def test_config_errors_list_options() -> None:
    with pytest.raises(ValueError, match="rect"):
        NeuronConfig(surrogate="nope")
    with pytest.raises(ValueError, match="tau_steps"):
        NeuronConfig.from_dict({"tau": 2.0})
    with pytest.raises(ValueError):
        NeuronConfig(tau_steps=0.5)


# ----------------------------------------------------------------------------- nets

SHAPES = {  # arch -> (T, B, P, H, W, classes)
    "vggsnn": (2, 1, 2, 48, 48, 10),
    "gesture_net": (2, 1, 2, 64, 64, 11),
    "small": (4, 2, 2, 32, 32, 10),
    "vgg9": (2, 1, 2, 16, 16, 11),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_shapes(arch: str) -> None:
    T, B, P, H, W, C = SHAPES[arch]
    model = build_model(arch, in_channels=P, n_classes=C, input_hw=(H, W))
    spec = ARCHITECTURES[arch]
    assert tuple(model.stages.keys()) == spec.stages
    assert model.weak_stages == (spec.default_weak,)
    out = model(spikes(T, B, P, H, W), record_rates=True)
    assert out.logits.shape == (T, B, C)
    assert set(out.weak) == {spec.default_weak}
    assert all(w.shape == (T, B, C) for w in out.weak.values())
    assert out.rates is not None and all(0.0 <= r <= 1.0 for r in out.rates.values())
    assert model(spikes(T, B, P, H, W)).rates is None


def test_all_weak_stages_and_errors() -> None:
    model = build_model("small", in_channels=2, n_classes=3, input_hw=(16, 24), weak_stages=("stage3", "stage1"))
    out = model(spikes(3, 2, 2, 16, 24))
    assert list(out.weak) == ["stage1", "stage3"]
    with pytest.raises(ValueError, match="gesture_net"):
        build_model("resnet", in_channels=2, n_classes=3, input_hw=(32, 32))
    with pytest.raises(ValueError, match="stage2"):
        build_model("small", in_channels=2, n_classes=3, input_hw=(32, 32), weak_stages=("stage9",))
    with pytest.raises(ValueError, match="32"):
        build_model("gesture_net", in_channels=2, n_classes=11, input_hw=(16, 16))
    with pytest.raises(ValueError, match="expected input"):
        model(spikes(3, 2, 1, 16, 24))


def test_vggsnn_parameter_count() -> None:
    # TET VGGSNN, 2 input channels, 48x48, 10 classes: conv3x3 with bias + BN (gamma, beta) per layer,
    # 4 average pools (48 -> 3), linear 512*3*3 -> 10.
    widths = [2, 64, 128, 256, 256, 512, 512, 512, 512]
    conv = sum(9 * c_in * c_out + c_out for c_in, c_out in zip(widths[:-1], widths[1:]))
    bn = sum(2 * c for c in widths[1:])
    fc = 512 * 3 * 3 * 10 + 10
    expected = conv + bn + fc
    model = build_model("vggsnn", in_channels=2, n_classes=10, input_hw=(48, 48), weak_stages=())
    n = count_parameters(model)
    print(f"vggsnn parameters: {n:,} (expected {expected:,})")
    assert n == expected
    assert abs(n - 9.3e6) < 0.05e6  # TET reports ~9.3 M


@pytest.mark.parametrize("arch", ["small", "gesture_net"])
def test_deploy_matches_baseline_without_heads(arch: str) -> None:
    T, B, P, H, W, C = SHAPES[arch]
    model = build_model(arch, in_channels=P, n_classes=C, input_hw=(H, W), weak_stages=None)
    model(spikes(T, 4, P, H, W))  # move BN running statistics away from their init
    deployed = model.deploy()
    baseline = build_model(arch, in_channels=P, n_classes=C, input_hw=(H, W), weak_stages=())
    baseline.load_state_dict(model.backbone_state_dict())
    baseline.eval()
    heads = sum(p.numel() for p in model.weak_heads.parameters())
    assert heads > 0
    assert count_parameters(deployed) == count_parameters(baseline) == count_parameters(model) - heads
    x = spikes(T, B, P, H, W)
    with torch.no_grad():
        out_d, out_b = deployed(x), baseline(x)
    assert out_d.weak == {}
    assert torch.equal(out_d.logits, out_b.logits)
    # Nothing shared: changing the deployed copy leaves the training net alone.
    with torch.no_grad():
        next(deployed.parameters()).add_(1.0)
    assert not torch.equal(next(deployed.parameters()), next(model.parameters()))
    assert model.training and not deployed.training


def test_channels_last_gives_same_logits() -> None:
    model = build_model("small", in_channels=2, n_classes=10, input_hw=(32, 32)).eval()
    x = spikes(3, 2, 2, 32, 32)
    ref = model(x).logits
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x)
    torch.testing.assert_close(out.logits, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- losses


def fake_output(T: int, B: int = 4, C: int = 5, weak: tuple[str, ...] = ("stage2",)) -> Output:
    logits = torch.randn(T, B, C, requires_grad=True)
    return Output(logits, {s: torch.randn(T, B, C, requires_grad=True) for s in weak}, None)


def test_task_losses() -> None:
    z, y = torch.randn(4, 3, 5), torch.tensor([0, 2, 4])
    ce = task_loss(z, y, "ce")
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(z.mean(0), y))
    tet = task_loss(z, y, "tet")
    by_hand = sum(torch.nn.functional.cross_entropy(z[t], y) for t in range(4)) / 4
    torch.testing.assert_close(tet, by_hand)
    tet_mse = task_loss(z, y, "tet", tet_lambda=0.1)
    torch.testing.assert_close(tet_mse, 0.9 * by_hand + 0.1 * ((z - 1.0) ** 2).mean())
    with pytest.raises(ValueError, match="tet"):
        task_loss(z, y, "mse")


def test_kd_zero_iff_agree() -> None:
    z = torch.randn(4, 3, 5)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    # Teacher with 2x the steps but the same time average: still zero.
    assert kd_loss(z, torch.cat([z, z])).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, torch.randn(8, 3, 5)).item() > 1e-3
    # tau^2 * KL(p_T || p_S) by hand.
    zs, zt, tau = torch.randn(3, 2, 4), torch.randn(5, 2, 4), 2.0
    p_t = torch.softmax(zt.mean(0) / tau, -1)
    p_s = torch.softmax(zs.mean(0) / tau, -1)
    by_hand = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    torch.testing.assert_close(kd_loss(zs, zt, tau), by_hand)


def test_tssd_parts_and_agreement() -> None:
    y = torch.tensor([0, 1, 2, 3])
    student = fake_output(4)
    teacher = Output(torch.cat([student.logits, student.logits]).detach(), {}, None)
    agree = Output(student.logits, {"stage2": student.logits.detach().clone()}, None)
    _, parts = tssd_loss(agree, y, teacher=teacher, method="tssd")
    assert parts["tsd"] == pytest.approx(0.0, abs=1e-6) and parts["ssd"] == pytest.approx(0.0, abs=1e-6)
    total, parts = tssd_loss(student, y, teacher=fake_output(8), method="tssd", alpha=0.5, beta=2.0)
    assert parts["tsd"] > 0 and parts["ssd"] > 0
    expected = parts["task_student"] + parts["task_teacher"] + 0.5 * parts["tsd"] + 2.0 * parts["ssd"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total, parts = tssd_loss(student, y, teacher=None, method="baseline")
    assert set(parts) == {"task_student", "total"}
    torch.testing.assert_close(total, task_loss(student.logits, y))
    with pytest.raises(ValueError, match="tssd"):
        tssd_loss(student, y, method="kd")
    with pytest.raises(ValueError, match="teacher"):
        tssd_loss(student, y, method="tsd")


@pytest.mark.parametrize("teacher_grad", [False, True])
def test_teacher_grad_switch(teacher_grad: bool) -> None:
    y = torch.tensor([0, 1, 2, 3])
    student, teacher = fake_output(4), fake_output(8)
    total, _ = tssd_loss(student, y, teacher=teacher, method="tsd", teacher_grad=teacher_grad)
    (g_teacher,) = torch.autograd.grad(total, teacher.logits)
    (g_task_only,) = torch.autograd.grad(task_loss(teacher.logits, y), teacher.logits)
    # Without the switch the teacher learns from its own task loss only.
    assert torch.allclose(g_teacher, g_task_only) is (not teacher_grad)


def test_spatial_sd_gives_no_gradient_to_final_logits() -> None:
    y = torch.tensor([0, 1, 2, 3])
    student = fake_output(4)
    total, _ = tssd_loss(student, y, method="ssd", beta=1.0)
    g_final, g_weak = torch.autograd.grad(total, (student.logits, student.weak["stage2"]))
    (g_task,) = torch.autograd.grad(task_loss(student.logits, y), student.logits)
    torch.testing.assert_close(g_final, g_task)  # the SSD term adds nothing to the final logits
    assert g_weak.abs().sum() > 0


# ----------------------------------------------------------------------------- training


def test_small_net_learns_synthetic_spikes() -> None:
    """TSSD training of the small net on spike tensors whose class sets which quadrant fires more."""
    n_classes, T_s, T_t, B, H = 4, 2, 4, 16, 16
    y = torch.arange(B) % n_classes

    def batch(T: int) -> torch.Tensor:
        prob = torch.full((T, B, 2, H, H), 0.05)
        for b in range(B):
            r, c = divmod(int(y[b]), 2)
            prob[:, b, :, r * H // 2 : (r + 1) * H // 2, c * H // 2 : (c + 1) * H // 2] = 0.5
        return torch.bernoulli(prob)

    model = build_model("small", in_channels=2, n_classes=n_classes, input_hw=(H, H))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        x_t = batch(T_t)
        student, teacher = model(x_t[:T_s]), model(x_t)
        total, parts = tssd_loss(student, y, teacher=teacher, method="tssd")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(parts["task_student"])
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert math.isfinite(last) and last < 0.5 * first, losses
    with torch.no_grad():
        acc = (model.deploy()(batch(T_s)).logits.mean(0).argmax(-1) == y).float().mean().item()
    assert acc >= 0.75


def test_cpu_autocast_bfloat16_train_step() -> None:
    """Reduced precision (the CUDA autocast path, here on CPU): finite, non-negative KD terms, gradients flow."""
    model = build_model("small", in_channels=2, n_classes=10, input_hw=(32, 32)).to(memory_format=torch.channels_last)
    x, y = spikes(4, 2, 2, 32, 32), torch.tensor([1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student, teacher = model(x[:2]), model(x)
        total, parts = tssd_loss(student, y, teacher=teacher, method="tssd")
    assert student.logits.dtype == torch.bfloat16 and total.dtype == torch.float32
    assert parts["tsd"] >= 0.0 and parts["ssd"] >= 0.0 and math.isfinite(parts["total"])
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
