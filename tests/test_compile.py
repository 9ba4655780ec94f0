"""`train.compile`: the network compiled in place (torch.compile, inductor) gives the eager logits and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from models.nets import build_model
from models.losses import tssd_loss


@pytest.mark.slow  # ~30-60 s on 2 CPU cores: inductor compiles the unrolled T-step graph, forward and backward
def test_compiled_training_step_matches_eager() -> None:
    torch.manual_seed(0)
    eager = build_model("small", in_channels=2, n_classes=4, input_hw=(16, 16), t_ref=2)
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=False)  # as pipeline.train does
    x_s = torch.poisson(torch.full((2, 8, 2, 16, 16), 0.6))
    x_t = torch.poisson(torch.full((4, 8, 2, 16, 16), 0.3))
    y = torch.randint(0, 4, (8,))
    outs = {}
    for name, net in (("eager", eager), ("compiled", compiled)):
        net.train()
        loss, _ = tssd_loss(net(x_s), y, teacher=net(x_t), method="tssd")
        loss.backward()
        outs[name] = (net(x_s).logits.detach(), {k: p.grad.clone() for k, p in net.named_parameters()})
    (le, ge), (lc, gc) = outs["eager"], outs["compiled"]
    assert list(dict(compiled.state_dict())) == list(dict(eager.state_dict()))  # checkpoints unchanged
    torch.testing.assert_close(lc, le, rtol=1e-4, atol=1e-4)
    for k in ge:
        torch.testing.assert_close(gc[k], ge[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
    assert any(g.abs().sum() > 0 for g in ge.values())


def test_train_config_has_compile_off_by_default() -> None:
    from pipeline.runs import TrainConfig

    assert TrainConfig().compile is False
