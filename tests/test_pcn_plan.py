"""PCN execution plans: factored / merged / untouched, shared projections, chosen by counted FLOPs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import drt.pcn as pcn
from drt.errors import DrtError
from drt.models import create
from drt.pcn.layers import PCNConv1d, PCNConv2d, PCNLinear
from drt.pcn.plan import PROJECTION_COST, blocked, plan_cost, train_flops

F64 = torch.float64


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _pcn_layer(cls, d, k, out, **conv):
    torch.manual_seed(1)
    layer = cls(d, k, out, **conv, dtype=F64) if conv else cls(d, k, out, dtype=F64)
    basis = torch.linalg.qr(torch.randn(d, d, dtype=F64))[0][:, :k]
    with torch.no_grad():
        layer.basis.copy_(basis)
        layer.mu.copy_(torch.randn(d, dtype=F64))
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


CASES = [
    (PCNLinear, {}, (5, 9)),
    (PCNConv2d, {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}, (2, 9, 7, 6)),
    (PCNConv2d, {"kernel_size": (3, 2), "stride": 1, "padding": 2, "dilation": 2}, (2, 9, 8, 5)),
    (PCNConv2d, {"kernel_size": 1, "stride": 2, "padding": 0, "dilation": 1}, (2, 9, 7, 7)),
    (PCNConv1d, {"kernel_size": 5, "stride": 3, "padding": 2, "dilation": 1}, (3, 9, 17)),
]


@pytest.mark.parametrize("cls, conv, shape", CASES)
def test_merged_and_factored_compute_the_same_function_and_the_same_gradient(cls, conv, shape):
    x = _x(*shape)
    outs, grads = [], []
    for mode in ("factored", "merged"):
        layer = _pcn_layer(cls, 9, 4, 6, **conv)
        layer.exec_mode = mode
        x_ = x.clone().requires_grad_()
        y = layer(x_)
        (y * _x(*y.shape, seed=3)).sum().backward()
        outs.append(y.detach())
        grads.append((layer.weight.grad, layer.bias.grad, x_.grad))
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert cls.from_spec(json.loads(json.dumps(layer.spec()))).exec_mode == "merged"  # the plan is in the spec


def test_keep_all_leaves_every_layer_untouched_under_auto():
    torch.manual_seed(0)
    model = create("resnet20", (3, 8, 8), 10, width=4).double().eval()
    stats = pcn.collect(model, [_x(32, 3, 8, 8)])
    small = pcn.compress(model, stats)  # keep="all", plan="auto": nothing saves parameters
    assert not pcn.pcn_layers(small)
    for a, b in zip(model.state_dict().values(), small.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_factored_convolution_is_counted_at_the_channels_its_kernel_pays_for():
    assert [blocked(k, 16) for k in (1, 8, 9, 11, 16)] == [8, 8, 16, 16, 16] and blocked(13, 12) == 12
    torch.manual_seed(0)
    net = create("vgg11", (3, 16, 16), 10, width=16).double().eval()
    stats = pcn.collect(net, [_x(64, 3, 16, 16)])
    small = pcn.compress(net, stats, keep={"conv2": 11, "conv3": 5}, batch_size=8)
    # conv2 (d=16): k=11 is paid as 16 channels, so factored saves nothing; conv3 (d=32): k=5 as 8, it does
    assert {n: pcn.plan_of(small)[n] for n in ("conv2", "conv3")} == {"conv2": "merged", "conv3": "factored"}


def test_auto_plan_never_picks_the_costlier_form():
    torch.manual_seed(0)
    model = create("vgg11", (3, 16, 16), 10, width=32).double().eval()
    mlp = create("mlp", (64,), 10, hidden=[64, 64]).double().eval()
    for net, shape, keep, batch, expect in (
        (model, (3, 16, 16), {"conv2": 2, "conv5": 31, "fc": 3}, 8, {"conv2": "factored", "fc": "factored"}),
        # Linear: d*k + k*out against d*out (+ forming W'V^T once per step)
        (mlp, (64,), {"fc2": 48, "fc3": 8}, 256, {"fc2": "merged", "fc3": "factored"}),
    ):
        stats = pcn.collect(net, [_x(64, *shape)])
        small = pcn.compress(net, stats, keep=keep, batch_size=batch)
        plans = pcn.plan_of(small)
        assert {n: plans[n] for n in expect} == expect
        for name, mode in plans.items():
            layer, in_shape = small.get_submodule(name), tuple(stats.input_shapes[name])
            other = "merged" if mode == "factored" else "factored"
            assert plan_cost([layer], [mode], in_shape, batch) <= plan_cost([layer], [other], in_shape, batch)
            factored = [layer], ["factored"], in_shape, batch
            extra = plan_cost(*factored) - train_flops(*factored)
            spatial = in_shape[1:] if len(in_shape) > 1 else ()
            conv = not isinstance(layer, pcn.PCNLinear)
            assert extra == (PROJECTION_COST * batch * layer.k * int(torch.tensor(spatial).prod()) if conv else 0)
        x = _x(4, *shape)
        ref = pcn.compress(net, stats, keep=keep, plan="factored")
        assert torch.allclose(small(x), ref(x), atol=1e-10)


class CountingShared(nn.Module):
    """Two convs and a 1x1 strided projection reading one tensor (a ResNet block's pattern)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 6, 1, stride=2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.a(h) + self.b(h)


def test_a_shared_basis_is_projected_once_per_forward():
    torch.manual_seed(0)
    model = CountingShared().double().eval()
    x = _x(16, 2, 8, 8)
    stats = pcn.collect(model, [x])
    assert stats.key("b") == "a"
    small = pcn.compress(model, stats, keep=3, plan="factored")
    shared = small.a.projection
    assert shared is not None and small.b.projection is shared
    calls = []
    for layer in (small.a, small.b):
        original = layer.project
        layer.project = lambda t, f=original: calls.append(1) or f(t)
    for _ in range(3):
        small(x)
    assert len(calls) == 3 and shared.computed == 3  # one projection per forward, not one per reader
    unshared = pcn.compress(model, stats, keep=3, plan="factored")
    for layer in (unshared.a, unshared.b):
        layer.projection = None
    assert torch.allclose(small(x), unshared(x), atol=1e-12)
    small.train()
    loss = small(x).square().sum()
    loss.backward()  # the shared z carries both readers' gradients
    unshared.train()
    unshared(x).square().sum().backward()
    assert torch.allclose(small.stem.weight.grad, unshared.stem.weight.grad, atol=1e-10)


def test_spec_round_trip_and_rebuild_keep_the_plan_and_the_sharing():
    torch.manual_seed(0)
    model = create("resnet20", (3, 8, 8), 10, width=4).double().eval()
    stats = pcn.collect(model, [_x(32, 3, 8, 8)])
    small = pcn.compress(model, stats, keep=3, batch_size=4)
    spec = json.loads(json.dumps(pcn.pcn_spec(small)))
    rebuilt = pcn.rebuild(create("resnet20", (3, 8, 8), 10, width=4).double(), spec)
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.eval()
    assert pcn.plan_of(rebuilt) == pcn.plan_of(small)
    shortcut, conv1 = rebuilt.layer2[0].shortcut[0], rebuilt.layer2[0].conv1
    if shortcut.exec_mode == conv1.exec_mode == "factored":
        assert shortcut.projection is conv1.projection is not None
    x = _x(3, 3, 8, 8)
    assert torch.equal(rebuilt(x), small(x))
    big = pcn.expand(small)
    assert not pcn.pcn_layers(big) and torch.allclose(big(x), small(x), atol=1e-10)


def test_unknown_plan_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    stats = pcn.collect(model, [_x(20, 4)])
    with pytest.raises(DrtError, match="unknown PCN execution plan 'fast'; valid: auto, factored, merged"):
        pcn.compress(model, stats, keep=2, plan="fast")
    with pytest.raises(DrtError, match="unknown PCN execution plan"):
        PCNLinear(4, 2, 3, exec_mode="fused")



@pytest.mark.parametrize("budget_of, fraction", [("params", 0.25), ("params", 0.5), ("flops", 0.5), ("flops", 0.7)])
def test_a_budget_is_a_target_met_within_a_few_percent(budget_of, fraction):
    from drt.analysis.cost import forward_flops

    torch.manual_seed(0)
    model = create("vgg11", (3, 16, 16), 10, width=16).double().eval()
    stats = pcn.collect(model, [_x(128, 3, 16, 16)])
    size = {"params": lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad),
            "flops": lambda m: forward_flops(m, (3, 16, 16))}[budget_of]
    for keep in (0.99, "all"):  # a variance rule does not cap a budget: it fills up to the target
        small = pcn.compress(model, stats, keep=keep, budget=fraction, budget_of=budget_of, min_fraction=1 / 16)
        achieved = size(small) / size(model)
        assert fraction - 0.03 <= achieved <= fraction + 0.01, (keep, achieved)
    ks = {n: m.k for n, m in pcn.pcn_layers(small).items()}
    assert all(k >= -(-m.d // 16) for k, m in zip(ks.values(), pcn.pcn_layers(small).values(), strict=True))
