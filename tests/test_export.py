"""NIR export (models/nir_export.py, pipeline/export.py), checked by running the written file in Norse, snnTorch and
NIR's reference interpreter (nirtorch) -- code we did not write -- against our own network."""

from __future__ import annotations

import copy

import pytest
import torch

nir = pytest.importorskip("nir")
pytest.importorskip("snntorch")

from models.nets import SpikingNet, build_model  # noqa: E402
from models.neurons import LIF  # noqa: E402
from models.nir_export import NIRExportError, to_nir  # noqa: E402
from pipeline.runs import save_checkpoint  # noqa: E402
from tests.nir_importers import import_nirtorch_li_threshold, import_norse, import_snntorch  # noqa: E402

HW = (16, 16)
T_S = 2


def _data(n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes: a bright blob in one quadrant of both polarities, plus noise; event counts as frames."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.poisson(torch.full((T, n, 2, *HW), 0.3), generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[:, i, :, r * 8 + 2:r * 8 + 6, q * 8 + 2:q * 8 + 6] += torch.poisson(torch.full((T, 2, 4, 4), 2.0 / T * 2),
                                                                           generator=g)
    return x, y


def _trained(arch_kw: dict | None = None, neuron: dict | None = None) -> SpikingNet:
    """The small net after 15 SGD steps (BatchNorm statistics and weights away from their initial values)."""
    torch.manual_seed(0)
    net = build_model("small", in_channels=2, n_classes=4, input_hw=HW, weak_stages=(), t_ref=T_S, neuron=neuron,
                      **(arch_kw or {}))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = _data(64, T_S, seed=1)
    for _ in range(15):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x).logits.mean(0), y).backward()
        opt.step()
    return net.deploy()


def _hard(net: SpikingNet) -> SpikingNet:
    """Our net with a reset to zero instead of the subtraction (what NIR's LIF node means)."""
    from norse.torch.functional.reset import reset_value

    hard = copy.deepcopy(net)
    for m in hard.modules():
        if isinstance(m, LIF):
            m.p = m.p._replace(reset_method=reset_value)
    return hard


def _roundtrip(graph, tmp_path):
    nir.write(tmp_path / "model.nir", graph)
    return nir.read(tmp_path / "model.nir")


def _compare(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(prediction agreement of the time-averaged logits, max |logit difference|)."""
    agree = (ref.mean(0).argmax(1) == got.mean(0).argmax(1)).float().mean().item()
    return agree, (ref - got).abs().max().item()


@pytest.fixture(scope="module")
def net() -> SpikingNet:
    return _trained()


@pytest.fixture(scope="module")
def test_x() -> torch.Tensor:
    return _data(24, T_S, seed=2)[0]


def test_the_test_net_is_not_trivial(net: SpikingNet, test_x: torch.Tensor) -> None:
    out = net(test_x, record_rates=True)
    assert all(0.02 < r < 0.8 for r in out.rates.values()), out.rates  # spikes and silences, in every layer
    assert len(set(out.logits.mean(0).argmax(1).tolist())) > 1


def test_norse_with_subtract_reset_reproduces_ours(net: SpikingNet, test_x: torch.Tensor, tmp_path) -> None:
    graph, info = to_nir(net, HW)
    g = _roundtrip(graph, tmp_path)
    assert g.metadata["reset"] == "subtract" and float(g.metadata["dt_s"]) == info.dt_s
    with torch.no_grad():
        ref = net(test_x).logits
    agree, diff = _compare(ref, import_norse(g, dt_s=info.dt_s, soft=True)(test_x))
    assert agree == 1.0 and diff < 1e-4, (agree, diff)


@pytest.mark.parametrize("importer", ["norse", "snntorch"])
def test_default_importers_give_the_hard_reset_net(importer: str, net: SpikingNet, test_x: torch.Tensor,
                                                   tmp_path) -> None:
    """NIR's LIF resets to v_reset: both importers, as they are, run our net with a hard reset -- exactly."""
    graph, info = to_nir(net, HW)
    g = _roundtrip(graph, tmp_path)
    run = import_norse(g, dt_s=info.dt_s, soft=False) if importer == "norse" else import_snntorch(g)
    with torch.no_grad():
        ref_hard, ref_soft = _hard(net)(test_x).logits, net(test_x).logits
    agree, diff = _compare(ref_hard, run(test_x))
    assert agree == 1.0 and diff < 1e-4, (agree, diff)
    assert (ref_hard - ref_soft).abs().max() > 1e-3  # the two resets do differ on this net


def test_li_threshold_graph_is_exact_in_nir_semantics(net: SpikingNet, test_x: torch.Tensor, tmp_path) -> None:
    graph, info = to_nir(net, HW, neuron="li_threshold")
    g = _roundtrip(graph, tmp_path)
    kinds = {type(n).__name__ for n in g.nodes.values()}
    assert {"LI", "Threshold", "Scale"} <= kinds and "LIF" not in kinds
    with torch.no_grad():
        ref = net(test_x).logits
    agree, diff = _compare(ref, import_nirtorch_li_threshold(g, dt_s=info.dt_s)(test_x))
    assert agree == 1.0 and diff < 1e-4, (agree, diff)


def test_avgpool_nodes_for_snntorch(net: SpikingNet, test_x: torch.Tensor, tmp_path) -> None:
    graph, _ = to_nir(net, HW, pool="avg")
    g = _roundtrip(graph, tmp_path)
    assert sum(isinstance(n, nir.AvgPool2d) for n in g.nodes.values()) == 3
    assert not any(isinstance(n, nir.SumPool2d) for n in g.nodes.values())
    with torch.no_grad():
        ref = _hard(net)(test_x).logits
    agree, diff = _compare(ref, import_snntorch(g)(test_x))
    assert agree == 1.0 and diff < 1e-4, (agree, diff)


def test_export_at_another_T_folds_the_time_normalisation(net: SpikingNet, tmp_path) -> None:
    x4 = _data(12, 4, seed=3)[0]
    graph, info = to_nir(net, HW, T=4)
    assert info.input_scale == 2.0
    with torch.no_grad():
        ref = net(x4).logits  # the net scales 4-step inputs by 4 / T_s itself
    agree, diff = _compare(ref, import_norse(_roundtrip(graph, tmp_path), dt_s=info.dt_s, soft=True)(x4))
    assert agree == 1.0 and diff < 1e-4, (agree, diff)


def test_batchnorm_is_folded_exactly() -> None:
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 5, 3, padding=1, bias=True), torch.nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    from models.nir_export import _fold_bn

    w, b = _fold_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    folded = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    ref = bn.double()(conv.double()(x))
    assert torch.allclose(folded, ref, atol=1e-10)


def test_max_pool_is_refused_naming_the_layer() -> None:
    net = build_model("gesture_net", in_channels=2, n_classes=11, input_hw=(32, 32), weak_stages=(), t_ref=2).deploy()
    with pytest.raises(NIRExportError, match=r"stages\.stage1\.pool.*MaxPool2d"):
        to_nir(net, (32, 32))


def test_bad_choices_are_refused(net: SpikingNet) -> None:
    with pytest.raises(ValueError, match="neuron="):
        to_nir(net, HW, neuron="izhikevich")
    with pytest.raises(ValueError, match="pool="):
        to_nir(net, HW, pool="max")


def test_cli_writes_the_run_graph(net: SpikingNet, tmp_path, capsys) -> None:
    from pipeline.export import main

    run = tmp_path / "run"
    run.mkdir()
    args = {"arch": "small", "in_channels": 2, "n_classes": 4, "input_hw": list(HW), "weak_stages": [],
            "neuron": {}, "t_ref": T_S}
    save_checkpoint({"model": net.state_dict(), "model_args": args}, run / "checkpoint.pt")
    assert main([str(run)]) == 0
    g = nir.read(run / "model.nir")
    assert int(g.metadata["T"]) == T_S and int(g.metadata["n_classes"]) == 4
    assert not list(run.glob("*.tmp*")) and sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "model.nir"]
    assert main([str(tmp_path / "nothing")]) == 2
    assert "train first" in capsys.readouterr().err
