"""The literature spiking ResNets (models/resnets.py) on the SpikingNet contract, checked against what we did not
write: SpikingJelly 2.0's MSResNet and SEWResNet (run on the same weights and inputs), ResNet-34's published
parameter count (torchvision's 21,797,672), and TET's ResNet-19 written out as a closed-form count."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from models.__main__ import main as count_main
from models.nets import ARCHITECTURES, TimeBatchNorm2d, build_model, count_parameters
from models.resnets import RESNETS, MSBlock, SEWBlock, TETBlock

T, B = 2, 2
HW = {"resnet19": 8, "ms_resnet18": 32, "ms_resnet34": 32, "sew_resnet34": 32}  # small inputs: CPU seconds


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """BatchNorm affine parameters and running statistics away from their init (MS-ResNet zero-inits a gamma)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def test_registered():
    assert set(RESNETS) == {"resnet19", "ms_resnet18", "ms_resnet34", "sew_resnet34"}
    assert all(ARCHITECTURES[name] is spec for name, spec in RESNETS.items())


@pytest.mark.parametrize("arch", sorted(RESNETS))
def test_forward_backward_shapes_and_rates(arch):
    hw = HW[arch]
    model = build_model(arch, in_channels=3, n_classes=10, input_hw=(hw, hw))
    spec = ARCHITECTURES[arch]
    assert tuple(model.stages) == spec.stages and model.weak_stages == ("stage2",)
    x = torch.rand(T, B, 3, hw, hw)
    out = model(x, record_rates=True)
    assert out.logits.shape == (T, B, 10) and out.weak["stage2"].shape == (T, B, 10)
    assert out.rates and all(0.0 <= r <= 1.0 for r in out.rates.values())
    (out.logits.square().mean() + out.weak["stage2"].square().mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # non-square and DVS-like inputs (2 polarity channels) build too; the forward on them: tests/test_models.py
    assert build_model(arch, in_channels=2, n_classes=11, input_hw=(hw, hw + 8), weak_stages=()).in_channels == 2
    with pytest.raises(ValueError, match=str(spec.downsample)):
        build_model(arch, in_channels=3, n_classes=10, input_hw=(spec.downsample - 1, 64))


@pytest.mark.parametrize("arch", sorted(RESNETS))
def test_deploy_drops_weak_heads_and_per_T_batchnorms(arch):
    hw = (HW[arch], HW[arch])
    plain = count_parameters(build_model(arch, in_channels=3, n_classes=10, input_hw=hw, weak_stages=()))
    for head in ("gap_linear", "bottleneck"):
        model = build_model(arch, in_channels=3, n_classes=10, input_hw=hw, weak_head=head, bn_extra_T=(6,))
        bns = [m for m in model.modules() if isinstance(m, TimeBatchNorm2d)]
        backbone_bns = [m for m in model.stages.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(set(m.per_T) == {"6"} for m in bns) and model.bn_extra_T == (6,)
        assert len(backbone_bns) == 2 * len(bns)  # each backbone BN plus its T=6 twin
        assert count_parameters(model) > plain
        deployed = model.deploy()
        assert deployed.weak_stages == () and deployed.bn_extra_T == ()
        assert count_parameters(deployed) == plain, head
    if arch not in ("resnet19", "ms_resnet18"):  # the same SpikingNet.deploy: two block kinds suffice (CPU time)
        return
    # the deployed network computes what the plain one loaded with the backbone's weights computes
    _randomise_bn(model)
    baseline = build_model(arch, in_channels=3, n_classes=10, input_hw=hw, weak_stages=()).eval()
    baseline.load_state_dict(model.backbone_state_dict())
    x = torch.rand(T, 1, 3, *hw)
    with torch.no_grad():
        assert torch.equal(model.deploy()(x).logits, baseline(x).logits)


def test_resnet19_parameter_count_is_tets():
    """TET's resnet19 (models/resnet_models.py) written out: conv3x3 3->64 stem, BasicBlocks 128x3, 256x3 (/2),
    512x2 (/2) with a conv1x1-BN shortcut where the shape changes, fc 512->256 (bias), fc 256->classes."""
    def conv(i, o, k):
        return i * o * k * k

    def block(i, o):
        return conv(i, o, 3) + conv(o, o, 3) + 4 * o + (conv(i, o, 1) + 2 * o if i != o else 0)

    widths = [64] + [128] * 3 + [256] * 3 + [512] * 2
    body = conv(3, 64, 3) + 2 * 64 + sum(block(i, o) for i, o in zip(widths[:-1], widths[1:]))
    for n_classes in (10, 100):
        expected = body + 512 * 256 + 256 + 256 * n_classes + n_classes
        model = build_model("resnet19", in_channels=3, n_classes=n_classes, input_hw=(32, 32), weak_stages=())
        assert count_parameters(model) == expected
    assert round(count_parameters(build_model("resnet19", in_channels=3, n_classes=10, input_hw=(32, 32))
                                  .deploy()) / 1e6, 2) == 12.63  # what TET and tdBN quote


def test_imagenet_parameter_counts_match_published_and_spikingjelly():
    from spikingjelly.activation_based.model.ms_resnet import MSResNet

    sew = build_model("sew_resnet34", in_channels=3, n_classes=1000, input_hw=(224, 224)).deploy()
    assert count_parameters(sew) == 21_797_672  # ResNet-34 (torchvision's published count); SEW quotes 21.79 M
    for depth, layers in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))):
        ours = build_model(f"ms_resnet{depth}", in_channels=3, n_classes=1000, input_hw=(224, 224), weak_stages=())
        ref = MSResNet(T=1, layers=layers, num_classes=1000)
        assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
        assert count_parameters(ours) == sum(p.numel() for p in ref.parameters())
    assert count_parameters(ours) == 21_797_672 + 64 * 64 + 2 * 64  # + the first stage's stride-2 conv1x1-BN


def _load_by_order(ref: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy our state dict into the reference network, entry by entry (both register in the same order)."""
    src, dst = list(ours.state_dict().values()), ref.state_dict()
    assert len(src) == len(dst)
    for (key, value), mine in zip(dst.items(), src):
        assert value.shape == mine.shape, key
        dst[key] = mine.clone()
    ref.load_state_dict(dst)


_LIF = dict(tau=2.0, v_threshold=1.0, v_reset=None, decay_input=False)  # SpikingJelly's LIFNode as the paper's LIF


def test_ms_resnet18_equals_spikingjellys_msresnet():
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.model.ms_resnet import MSResNet

    torch.manual_seed(0)
    ours = build_model("ms_resnet18", in_channels=3, n_classes=10, input_hw=(32, 32), weak_stages=())
    _randomise_bn(ours)
    ref = MSResNet(T=T, layers=(2, 2, 2, 2), num_classes=10, spiking_neuron=neuron.LIFNode, **_LIF)
    _load_by_order(ref, ours)
    x = torch.randn(T, B, 3, 32, 32)
    with torch.no_grad():
        got, want = ours.eval()(x).logits.mean(0), ref.eval()(x)  # MSResNet averages its per-step logits
    assert want.std() > 1e-3  # not a constant function
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sew_resnet34_equals_spikingjellys_sewresnet(monkeypatch):
    # SpikingJelly's sew_resnet.py imports torchvision only for its pretrained-weights download helper; torchvision
    # does not load against the CPU torch here, so a stub stands in for that one name (nothing calls it).
    stub = types.ModuleType("torchvision")
    stub.models = types.ModuleType("torchvision.models")
    stub.models.utils = types.ModuleType("torchvision.models.utils")
    stub.models.utils.load_state_dict_from_url = None
    if "torchvision" not in sys.modules:
        for name, mod in (("torchvision", stub), ("torchvision.models", stub.models),
                          ("torchvision.models.utils", stub.models.utils)):
            monkeypatch.setitem(sys.modules, name, mod)
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.model.sew_resnet import sew_resnet34

    torch.manual_seed(0)
    ours = build_model("sew_resnet34", in_channels=3, n_classes=10, input_hw=(32, 32), weak_stages=())
    _randomise_bn(ours)
    ref = sew_resnet34(cnf="ADD", spiking_neuron=neuron.LIFNode, num_classes=10, **_LIF)
    functional.set_step_mode(ref, "m")
    _load_by_order(ref, ours)
    x = torch.randn(T, B, 3, 32, 32)
    with torch.no_grad():
        got, want = ours.eval()(x).logits, ref.eval()(x)
    assert want.std() > 1e-3  # not a constant function
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _capture(model: torch.nn.Module, x: torch.Tensor, modules: dict[str, torch.nn.Module]) -> dict:
    """(input, output) of the named modules in one eval pass (forward hooks; of a (tensor, ...) output, the tensor:
    a block's output, a LIF's spikes)."""
    seen: dict = {}

    def hook(name: str):
        return lambda m, args, out: seen.__setitem__(name, (args[0], out[0] if isinstance(out, tuple) else out))

    hooks = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def test_ms_shortcut_adds_membrane_inputs():
    model = build_model("ms_resnet18", in_channels=3, n_classes=10, input_hw=(32, 32), weak_stages=())
    _randomise_bn(model)
    down, plain = model.stages["stage2"].blocks
    assert isinstance(plain, MSBlock) and plain.downsample is None and down.downsample is not None
    seen = _capture(model, torch.randn(T, B, 3, 32, 32), {
        "block": plain, "lif1": plain.lif1, "conv1": plain.conv1, "conv2": plain.conv2,
        "down": down, "down_conv2": down.conv2, "shortcut": down.downsample})
    x, y = seen["block"]
    assert not _binary(x)  # the block's input is a membrane-side (pre-spike) tensor ...
    assert seen["lif1"][0] is x  # ... that the branch spikes first (LIF -> conv -> BN)
    assert _binary(seen["conv1"][0])  # the convs read spikes
    torch.testing.assert_close(y, seen["conv2"][1] + x, rtol=0, atol=0)  # identity on the membrane
    xd, yd = seen["down"]
    assert seen["shortcut"][0] is xd  # the projection shortcut reads the pre-spike input, not spikes
    torch.testing.assert_close(yd, seen["down_conv2"][1] + seen["shortcut"][1], rtol=0, atol=0)


def test_sew_add_is_of_spikes():
    model = build_model("sew_resnet34", in_channels=3, n_classes=10, input_hw=(32, 32), weak_stages=())
    _randomise_bn(model)
    first, second = model.stages["stage1"].blocks[:2]
    down = model.stages["stage2"].blocks[0]
    assert isinstance(first, SEWBlock) and first.downsample is None and down.lif_down is not None
    seen = _capture(model, torch.randn(T, B, 3, 32, 32), {
        "first": first, "first_lif2": first.lif2, "second": second, "down": down, "down_lif2": down.lif2,
        "down_lif_down": down.lif_down})
    x, y = seen["first"]
    s = seen["first_lif2"][1]
    assert _binary(x) and _binary(s)  # the stem's pooled spikes and the branch's spikes
    torch.testing.assert_close(y, x + s, rtol=0, atol=0)  # ADD: g(S, A) = S + A
    assert set(y.unique().tolist()) <= {0.0, 1.0, 2.0}
    assert seen["second"][0] is y  # the sum feeds the next block as it is
    sd, yd = seen["down_lif_down"][1], seen["down"][1]
    assert _binary(sd)  # the projection shortcut spikes before the ADD
    torch.testing.assert_close(yd, sd + seen["down_lif2"][1], rtol=0, atol=0)


def test_tet_block_spikes_after_the_add():
    model = build_model("resnet19", in_channels=3, n_classes=10, input_hw=(16, 16), weak_stages=())
    _randomise_bn(model)
    block = model.stages["stage1"].blocks[1]
    assert isinstance(block, TETBlock) and block.downsample is None
    seen = _capture(model, torch.rand(T, B, 3, 16, 16), {"block": block, "conv2": block.conv2, "lif2": block.lif2})
    x, y = seen["block"]
    assert _binary(x) and _binary(y)
    torch.testing.assert_close(seen["lif2"][0], seen["conv2"][1] + x, rtol=0, atol=0)
    assert model.head.fc1.out_features == 256 and model.head.lif_hidden is not None  # TET's spiking fc 256


def test_count_cli(capsys):
    assert count_main(["--count", "resnet19", "--input", "3", "32", "32", "--classes", "10"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("resnet19") and "12,630,858 parameters deployed" in line
    with pytest.raises(SystemExit):
        count_main(["--count", "resnet20", "--input", "3", "32", "32", "--classes", "10"])
