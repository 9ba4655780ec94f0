"""Direct encoding (static images): an input with stride 0 in time runs the stateless layers once, not T times.

`models.nets.SeqToANN` sees ``x.unsqueeze(0).expand(T, ...)`` and runs its layers on ``x[0]``; everything after
the first LIF is unchanged. Checked against the copied input (``x.expand(...).contiguous()``), which takes the
ordinary ``T*B`` path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.nets import SeqToANN, TimeBatchNorm2d, build_model
from models.neurons import LIF


def _image(B: int = 6, C: int = 3, H: int = 16, W: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(B, C, H, W) * 2.0


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


def _direct(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.unsqueeze(0).expand(T, *x.shape)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_first_conv_runs_once_and_logits_equal_the_copied_input(T: int, train: bool) -> None:
    torch.manual_seed(0)
    net = build_model("small", in_channels=3, n_classes=5, input_hw=(16, 16), weak_stages=())
    ref = copy.deepcopy(net)
    net.train(train)
    ref.train(train)
    x = _image()
    calls: list[tuple[int, ...]] = []
    handle = _first_conv(net).register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    out = net(_direct(x, T))
    handle.remove()
    assert calls == [(6, 3, 16, 16)]  # once, with B samples (not T*B)
    ref_calls: list[tuple[int, ...]] = []
    _first_conv(ref).register_forward_hook(lambda m, i, o: ref_calls.append(tuple(i[0].shape)))
    want = ref(_direct(x, T).contiguous())
    assert ref_calls == [(T * 6, 3, 16, 16)]  # the copied input takes the ordinary T*B path
    assert out.logits.shape == (T, 6, 5)
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-5, atol=1e-5)


def test_lif_still_steps_T_times_and_outputs_differ_per_step() -> None:
    """The first LIF receives the same current at each step, but its membrane integrates: spikes vary over T."""
    torch.manual_seed(0)
    ann = SeqToANN(nn.Conv2d(1, 4, 3, padding=1), TimeBatchNorm2d(4))
    lif = LIF()
    x = torch.rand(8, 1, 8, 8)
    current = ann(_direct(x, 4))
    assert current.stride(0) == 0 and current.shape == (4, 8, 4, 8, 8)
    spikes, _ = lif(current)
    assert spikes.shape == (4, 8, 4, 8, 8) and spikes.stride(0) != 0
    assert not torch.equal(spikes[0], spikes[1])  # the membrane carries over: a constant input still varies in time
    ref, _ = lif(ann(_direct(x, 4).contiguous()))
    torch.testing.assert_close(spikes, ref)


def test_gradients_equal_the_copied_input() -> None:
    torch.manual_seed(0)
    net = build_model("small", in_channels=3, n_classes=5, input_hw=(16, 16))  # weak head included
    ref = copy.deepcopy(net)
    x, y = _image(), torch.tensor([0, 1, 2, 3, 4, 0])
    for model, inp in ((net, _direct(x, 3)), (ref, _direct(x, 3).contiguous())):
        model.train()
        out = model(inp)
        loss = nn.functional.cross_entropy(out.logits.mean(0), y) + sum(
            nn.functional.cross_entropy(w.mean(0), y) for w in out.weak.values())
        loss.backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_batchnorm_statistics_of_B_copies_vs_T_times_B() -> None:
    """Batch mean and biased variance are identical; the running variance differs only by n/(n-1) with
    n = B*H*W (direct) instead of T*B*H*W (copied), as SeqToANN's docstring says."""
    T, B, H, W = 4, 5, 6, 6
    x = torch.randn(B, 3, H, W)
    direct, copied = SeqToANN(TimeBatchNorm2d(3)), SeqToANN(TimeBatchNorm2d(3))
    y_direct, y_copied = direct(_direct(x, T)), copied(_direct(x, T).contiguous())
    torch.testing.assert_close(y_direct, y_copied, rtol=1e-5, atol=1e-5)  # same normalisation
    bn_d, bn_c = direct.layers[0], copied.layers[0]
    torch.testing.assert_close(bn_d.running_mean, bn_c.running_mean)
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    n_d, n_c = B * H * W, T * B * H * W
    m = bn_d.momentum
    torch.testing.assert_close(bn_d.running_var, (1 - m) + m * biased * n_d / (n_d - 1))
    torch.testing.assert_close(bn_c.running_var, (1 - m) + m * biased * n_c / (n_c - 1))


@pytest.mark.parametrize("update", [True, False])
def test_time_batchnorm_route_and_per_T(update: bool) -> None:
    """BN per T picks the teacher's private layer by the pass's T; update=False leaves running stats alone."""
    torch.manual_seed(0)
    net = build_model("small", in_channels=3, n_classes=5, input_hw=(16, 16), bn_extra_T=[4])
    ref = copy.deepcopy(net)
    net.train()
    ref.train()
    x = _image()
    out = net(_direct(x, 4), update_bn_stats=update)
    want = ref(_direct(x, 4).contiguous(), update_bn_stats=update)
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-5, atol=1e-5)
    first = next(m for m in net.modules() if isinstance(m, TimeBatchNorm2d))
    ref_first = next(m for m in ref.modules() if isinstance(m, TimeBatchNorm2d))
    assert int(first.num_batches_tracked) == 0  # the T=4 pass used per_T["4"], not the student's own BN
    assert int(first.per_T["4"].num_batches_tracked) == int(update)
    torch.testing.assert_close(first.per_T["4"].running_mean, ref_first.per_T["4"].running_mean)
    # the T_s = 2 pass uses the layer's own BatchNorm
    net(_direct(x, 2))
    assert int(first.num_batches_tracked) == 1


@pytest.mark.slow  # inductor compiles forward and backward (~30 s on 2 cores)
def test_direct_encoding_under_torch_compile() -> None:
    torch.manual_seed(0)
    eager = build_model("small", in_channels=3, n_classes=5, input_hw=(16, 16), weak_stages=())
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=False)
    x = _image()
    for net in (eager, compiled):
        net.eval()
    torch.testing.assert_close(compiled(_direct(x, 3)).logits, eager(_direct(x, 3)).logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled(_direct(x, 3)).logits, eager(_direct(x, 3).contiguous()).logits,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,hw", [("resnet19", (8, 8)),
                                     pytest.param("ms_resnet18", (32, 32), marks=pytest.mark.slow),  # ImageNet nets:
                                     pytest.param("sew_resnet34", (32, 32), marks=pytest.mark.slow)])  # ~1 min each
def test_residual_nets_take_direct_encoding(arch: str, hw: tuple[int, int]) -> None:
    """models/resnets.py's stems (conv-BN, with or without a LIF after it) get the same logits either way."""
    torch.manual_seed(0)
    net = build_model(arch, in_channels=3, n_classes=4, input_hw=hw, weak_stages=())
    ref = copy.deepcopy(net)
    x = torch.rand(2, 3, *hw)
    calls: list[int] = []
    _first_conv(net).register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    for model in (net, ref):
        model.train()
    out = net(_direct(x, 2))
    want = ref(_direct(x, 2).contiguous())
    assert calls == [2]
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)
