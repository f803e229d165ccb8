"""PCN mechanism (drt.pcn): exact k = d equivalence, exact padding, counts, output transform, specs."""

import io
import itertools
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import drt.pcn as pcn
from drt.analysis.pca import k_explained
from drt.errors import DrtError
from drt.models import MODELS, create, model_options
from drt.pcn.narrow import _scores

F64 = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:PCN statistics from"),
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")]


def _rand_bn_(model: nn.Module) -> nn.Module:
    """Non-trivial BN running stats and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


class Odd2d(nn.Module):
    """Convs with stride 2, dilation 2, a 5x5 kernel, non-square kernels / padding, no bias; then Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(6, 8, 5, dilation=2, padding=4, bias=False)
        self.c3 = nn.Conv2d(8, 7, (3, 5), padding=(1, 2))
        self.c4 = nn.Conv2d(7, 5, (3, 5), stride=(2, 1), padding=(2, 1))
        self.c5 = nn.Conv2d(5, 4, 2, padding="same")  # even kernel: asymmetric zero padding
        self.fc = nn.Linear(4 * 5 * 3, 3)

    def forward(self, x):  # (N, 3, 13, 10)
        for c in (self.c1, self.c2, self.c3, self.c4, self.c5):
            x = F.relu(c(x)) + 0.1  # a shifted ReLU so means are far from zero
        return self.fc(torch.flatten(x, 1))


class Odd1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 5, 5, stride=2, padding=2)
        self.c2 = nn.Conv1d(5, 6, 3, dilation=2, padding=2, bias=False)
        self.c3 = nn.Conv1d(6, 4, 4, stride=3, padding=3)
        self.fc = nn.Linear(4 * 5, 2)

    def forward(self, x):  # (N, 2, 21)
        for c in (self.c1, self.c2, self.c3):
            x = torch.sigmoid(c(x))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("net, shape", [(Odd2d, (3, 13, 10)), (Odd1d, (2, 21))])
def test_keep_all_is_exact_and_expand_restores_the_function(net, shape):
    torch.manual_seed(0)
    model = net().double().eval()
    x = _x(80, *shape)
    stats = pcn.collect(model, [x[:40], (x[40:], torch.zeros(40))], exclude_first=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for include_first, plan in itertools.product((False, True), ("factored", "merged")):
        small = pcn.compress(model, stats, include_first=include_first, plan=plan)
        assert set(pcn.plan_of(small).values()) == {plan}
        n_pcn = len(pcn.pcn_layers(small))
        assert n_pcn == len(pcn.eligible_layers(model)[0]) - (0 if include_first else 1)
        fresh = _x(10, *shape, seed=9) * 3  # k = d: exact on any input, not only the statistics' samples
        assert _max_diff(model, small, fresh) < 1e-10
        big = pcn.expand(small)
        assert not pcn.pcn_layers(big) and _max_diff(model, big, fresh) < 1e-10
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert not pcn.pcn_layers(model)
    assert "c1" not in pcn.pcn_layers(pcn.compress(model, stats))  # first layer skipped by default


def _reference_conv(layer, mu, basis, x, pad_first: bool):
    """The paper's exact form (pad x, centre, project, unpadded conv) or the naive one (pad z)."""
    nd = x.dim() - 2
    conv = F.conv1d if nd == 1 else F.conv2d
    pad = [p for p in reversed(layer.padding) for _ in (0, 1)]
    w = torch.einsum("ck,oc...->ok...", basis, layer.weight)
    b = layer.bias + torch.einsum("c,oc...->o", mu, layer.weight)
    centred = lambda t: torch.einsum("nc...,ck->nk...", t - mu.reshape(-1, *[1] * nd), basis)  # noqa: E731
    z = centred(F.pad(x, pad)) if pad_first else F.pad(centred(x), pad)
    return conv(z, w, b, stride=layer.stride, dilation=layer.dilation)


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(6, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (6, 9, 8)),
    (nn.Conv1d(6, 4, 5, stride=2, padding=3), (6, 17)),
])
def test_padding_is_exact_for_k_below_d_and_the_naive_version_is_not(layer, shape):
    torch.manual_seed(0)
    layer = layer.double()
    basis = torch.linalg.qr(_x(6, 6))[0][:, :3]  # k = 3 < d = 6
    mu = _x(6, seed=1) + 2.0
    small = pcn.to_pcn(layer, mu, basis, "conv")
    x = _x(4, *shape, seed=2) + 2.0
    with torch.no_grad():
        out = small(x)
        exact = _reference_conv(layer, mu, basis, x, pad_first=True)
        naive = _reference_conv(layer, mu, basis, x, pad_first=False)
    assert out.shape == exact.shape == layer(x).shape
    assert float((out - exact).abs().max()) < 1e-10
    assert float((naive - exact).abs().max()) > 1e-2  # projecting first, then zero-padding, is wrong


def test_pcn_layer_parameters_and_buffers():
    layer = nn.Linear(5, 3).double()
    basis, mu = torch.linalg.qr(_x(5, 5))[0][:, :2], _x(5, seed=3)
    p = pcn.to_pcn(layer, mu, basis, "fc")
    assert [n for n, _ in p.named_parameters()] == ["weight", "bias"]
    assert sorted(n for n, _ in p.named_buffers()) == ["basis", "mu"]  # frozen: buffers, no grad
    assert torch.allclose(p.weight, layer.weight @ basis) and torch.allclose(p.bias, layer.bias + layer.weight @ mu)
    assert p.drt_frozen_numel() == 5 * 2 + 5 and (p.d, p.k, p.out) == (5, 2, 3)
    x = _x(7, 5, seed=4)
    assert torch.allclose(p(x), F.linear((x - mu) @ basis, p.weight, p.bias), atol=1e-12)
    p(x).sum().backward()
    assert p.weight.grad is not None and not p.basis.requires_grad


def test_unsupported_layers_and_transforming_twice_are_refused():
    with pytest.raises(DrtError, match="padding_mode='reflect'"):
        pcn.to_pcn(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), torch.zeros(2), torch.eye(2), "c")
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
                          nn.Conv2d(4, 3, 1)).double()
    stats = pcn.collect(model, [_x(8, 2, 9, 9)])
    assert "groups=2" in stats.ineligible["2"] and stats.layers == ["4"]  # first layer excluded by default
    with pytest.raises(DrtError, match="'2'"):
        pcn.compress(model, stats, keep={"2": "all"})
    small = pcn.compress(model, stats, plan="factored")
    assert "already a PCN layer" in pcn.collect(small, [_x(8, 2, 9, 9)]).ineligible["4"]
    with pytest.raises(DrtError, match="'4'.*already a PCN layer"):
        pcn.compress(small, stats)
    with pytest.raises(DrtError, match="include_first"):
        pcn.compress(model, stats, keep={"0": 1})
    assert list(pcn.pcn_layers(pcn.compress(model, stats, keep={"*": 2}))) == ["4"]  # a glob skips layer 0


def test_collect_streams_the_actual_inputs_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    model[1].momentum = 0.5
    model.train()
    x = _x(50, 4)
    rm = model[1].running_mean.clone()
    stats = pcn.collect(model, ((x[i:i + 16], None) for i in range(0, 50, 16)), max_samples=40)
    assert stats.samples == 40 and stats.layers == ["3"] and stats.first == ["0"]
    assert model.training and model[1].training and torch.equal(model[1].running_mean, rm)  # eval, restored
    with torch.no_grad():
        model.eval()
        inp = model[:3](x[:40])  # the actual input of layer "3": after BN (running stats) and ReLU
    assert torch.allclose(stats.mean("3"), inp.mean(0), atol=1e-12)
    assert torch.allclose(stats.moments["3"].cov(), torch.cov(inp.T), atol=1e-10)
    halves = pcn.collect(model, [x[:20]]).merge_(pcn.collect(model, [x[20:40]]))
    assert torch.allclose(halves.moments["3"].cov(), stats.moments["3"].cov(), atol=1e-12)
    back = pcn.PCNStats.from_state_dict(pickle.loads(pickle.dumps(stats.state_dict())))
    assert torch.equal(back.eig("3")[0], stats.eig("3")[0]) and back.samples == 40
    with pytest.raises(DrtError, match=r"got 1 observation\(s\) from 1 sample"):
        pcn.collect(model, [x[:1]])
    with pytest.raises(DrtError, match="matches no eligible layer"):
        pcn.collect(model, [x], layers=["nope"])


def test_k_rules_budget_and_per_layer_overrides():
    torch.manual_seed(0)
    model = create("mlp", (20,), 5, hidden=[16, 12, 8]).double()
    stats = pcn.collect(model, [_x(200, 20)])
    assert stats.layers == ["fc2", "fc3", "fc4"]
    ks = pcn.plan_components(model, stats, 0.9)
    assert ks == {n: k_explained(stats.eigvals(n), 0.9) for n in ("fc2", "fc3", "fc4")}
    assert pcn.plan_components(model, stats, {"fc3": 5, "fc[4]": "all"}) == {"fc3": 5, "fc4": 8}
    assert pcn.plan_components(model, stats, width_fraction=0.5) == {"fc2": 8, "fc3": 6, "fc4": 4}
    assert pcn.plan_components(model, stats, 3, width_fraction=0.5, exclude=["fc4"]) == {"fc2": 3, "fc3": 3}
    assert pcn.plan_components(model, stats, eig_threshold=1e9) == {"fc2": 1, "fc3": 1, "fc4": 1}
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert trainable(model) == 689
    for budget in (400, 550, 0.7):
        small = pcn.compress(model, stats, budget=budget)
        limit = budget if isinstance(budget, int) else int(budget * trainable(model))
        assert trainable(small) <= limit and trainable(small) > 0.8 * limit
    for bad in ({"fc3": 13}, {"fc3": 0}, {"fc3": 1.5}, {"fc3": "most"}):
        with pytest.raises(DrtError, match="fc3"):
            pcn.compress(model, stats, keep=bad)
    with pytest.raises(DrtError, match="below the minimum"):
        pcn.compress(model, stats, budget=10)


def test_reference_vgg16_cifar10_parameter_counts():
    torch.manual_seed(0)
    model = create("vgg16", (3, 32, 32), 10)
    convs = [f"conv{i}" for i in range(8, 14)]

    def counts(m):
        layers = [x for x in m.modules() if isinstance(x, nn.Conv2d | nn.Linear | pcn.PCNLayer)]
        trainable = sum(p.numel() for x in layers for p in x.parameters() if p.requires_grad)
        return trainable, sum(x.drt_frozen_numel() for x in layers if isinstance(x, pcn.PCNLayer))

    assert counts(model) == (14_715_594, 0)
    stats = pcn.collect(model, [torch.randn(2, 3, 32, 32)], layers=convs)
    small = pcn.compress(model, stats, keep={**dict.fromkeys(convs[:3], 64), **dict.fromkeys(convs[3:], 32)})
    assert sorted(pcn.pcn_layers(small)) == sorted(convs)
    assert counts(small) == (3_069_642, 133_888)


def _kill_(conv: nn.Module, bn: nn.Module, c: int) -> None:
    """Make output channel c of conv -> bn -> ReLU always zero."""
    with torch.no_grad():
        conv.weight[c] = 0.0
        bn.bias[c], bn.running_mean[c] = -1.0, 0.0


def test_output_transform_removes_dead_channels_exactly_on_vgg():
    torch.manual_seed(0)
    model = _rand_bn_(create("vgg11", (3, 16, 16), 10, width=4)).double().eval()
    dead = {3: [1, 5], 5: [0, 3, 7]}  # conv3 (8 ch) and conv5 (16 ch) outputs
    for i, chans in dead.items():
        for c in chans:
            _kill_(model.get_submodule(f"conv{i}"), model.get_submodule(f"bn{i}"), c)
    x = _x(64, 3, 16, 16)
    stats = pcn.collect(model, [x])
    zero = {}  # channels that are always zero on the data: the forced ones, plus any ReLU left dead
    hooks = [model.get_submodule(f"relu{i}").register_forward_hook(
        lambda m, i, out, i_=i: zero.update({i_: int((out.abs().amax((0, 2, 3)) == 0).sum())})) for i in dead]
    model(x)
    for h in hooks:
        h.remove()
    assert zero[3] >= 2 and zero[5] >= 3
    small = pcn.compress(model, stats, keep=0.99, output=["conv4", "conv6"], output_threshold=1e-8)
    live3, live5 = 16 - zero[3], 32 - zero[5]
    assert (small.conv3.out_channels, small.bn3.num_features, small.conv4.d) == (live3,) * 3
    assert (small.conv5.out_channels, small.bn5.num_features, small.conv6.d) == (live5,) * 3
    assert small.conv4.basis.shape == (live3, k_explained(stats.eigvals("conv4"), 0.99))  # V rows cut, k kept
    base = pcn.compress(model, stats, keep=0.99)  # input transform only
    fresh = _x(16, 3, 16, 16, seed=5)
    assert _max_diff(base, small, fresh) < 1e-10
    keep = {"conv4": live3, "conv6": live5}  # the same by explicit channel counts, eigenvalue-weighted scores
    weighted = pcn.compress(model, stats, keep=0.99, output=keep, output_keep=keep, eigen_weighted=True)
    assert weighted.conv6.d == live5 and _max_diff(base, weighted, fresh) < 1e-10
    tiny = pcn.compress(model, stats, keep=0.99, output=["conv4"], output_keep=2)  # fewer channels than k
    assert tiny.conv4.basis.shape == (2, small.conv4.k) and tiny.conv3.out_channels == 2
    rebuilt = pcn.rebuild(create("vgg11", (3, 16, 16), 10, width=4).double(), pcn.pcn_spec(tiny))
    rebuilt.load_state_dict(tiny.state_dict())
    assert _max_diff(tiny, rebuilt.eval(), fresh) == 0.0
    with pytest.raises(DrtError, match=r"output_keep for layer 'conv4' must be an int in \[1, 16\]"):
        pcn.compress(model, stats, keep=0.99, output=["conv4"], output_keep=17)


STREAM1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
STREAM2 = ["layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]


def test_resnet_shared_basis_inner_kill_and_joint_stream_narrowing():
    torch.manual_seed(0)
    model = _rand_bn_(create("resnet20", (3, 16, 16), 10, width=4)).double().eval()
    bn_of = lambda n: n[:-1] + "1" if n.endswith("shortcut.0") else n.replace("conv", "bn")  # noqa: E731
    for names, c in ((STREAM1, 2), (STREAM2, 5)):  # a dead channel of the stage-1 and stage-2 streams
        for n in names:
            _kill_(model.get_submodule(n), model.get_submodule(bn_of(n)), c)
    _kill_(model.layer3.get_submodule("1.conv1"), model.layer3.get_submodule("1.bn1"), 3)  # inner conv
    x = _x(48, 3, 16, 16)
    stats = pcn.collect(model, [x])
    assert stats.key("layer2.0.shortcut.0") == "layer2.0.conv1"  # one basis for conv1 + projection
    assert pcn.plan_components(model, stats, {"layer2.0.conv1": 2}) == {"layer2.0.conv1": 2,
                                                                        "layer2.0.shortcut.0": 2}
    projections = [n for n in pcn.plan_components(model, stats) if "shortcut" in n]
    assert projections == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]  # identity shortcuts: no layer
    spaces = pcn.channel_spaces(model, (3, 16, 16))
    stream2 = next(s for s in spaces if "layer2.0.shortcut.0" in s.producers)
    assert sorted(stream2.producers) == sorted(STREAM2) and "layer3.0.shortcut.0" in dict(stream2.readers)
    small = pcn.compress(model, stats, keep=0.99, output=True, output_threshold=1e-8)
    sc, c1 = small.layer2[0].shortcut[0], small.layer2[0].conv1
    assert sc.shared and not c1.shared and sc.basis_key == "layer2.0.conv1" and torch.equal(sc.basis, c1.basis)
    assert sc.drt_frozen_numel() == 0 < c1.drt_frozen_numel()
    assert small.conv1.out_channels == small.layer1[2].conv2.out_channels == small.layer2[0].conv1.d == 3
    assert small.layer2[0].shortcut[1].num_features == small.layer3[0].shortcut[0].d == 7
    assert small.layer3[1].conv1.out_channels == small.layer3[1].conv2.d == 15
    assert small.layer3[2].conv2.out_channels == small.fc.d == 16  # no dead channel: stream 3 kept whole
    assert _max_diff(pcn.compress(model, stats, keep=0.99), small, _x(16, 3, 16, 16, seed=5)) < 1e-10


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 3), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))


def test_output_transform_refuses_unsupported_graphs_naming_the_layer():
    model = Cat().double()
    stats = pcn.collect(model, [_x(8, 2, 6, 6)])
    with pytest.raises(DrtError, match="input channels of layer 'c'.*cat"):
        pcn.compress(model, stats, output=True, output_keep=2)
    pad = create("resnet20", (3, 8, 8), 10, width=4, shortcut="pad").double().eval()
    stats = pcn.collect(pad, [_x(16, 3, 8, 8)])
    with pytest.raises(DrtError, match="layer 'layer1.0.conv1'.*getitem in 'layer2.0.shortcut'"):
        pcn.compress(pad, stats, keep=2, output=True)
    small = pcn.compress(pad, stats, keep=2, output=["layer*.conv2"])  # inner convs still narrow
    assert small.layer1[0].conv1.out_channels == small.layer1[0].conv2.d == 2
    tokens = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()  # Linear on (N, T, d)
    stats = pcn.collect(tokens, [_x(8, 7, 5)])
    assert _max_diff(tokens, pcn.compress(tokens, stats, plan="factored"), _x(3, 7, 5)) < 1e-10  # input: fine
    with pytest.raises(DrtError, match="layer '2'.*not 2-D"):
        pcn.compress(tokens, stats, keep=2, output=True)


def test_scores_are_l1_loadings_optionally_eigen_weighted():
    layer = pcn.to_pcn(nn.Linear(4, 2).double(), torch.zeros(4, dtype=F64),
                       torch.tensor([[0.6, 0.0], [0.8, 0.0], [0.0, -1.0], [0.0, 0.0]], dtype=F64), "fc")
    assert _scores(layer, 1, None).tolist() == pytest.approx([0.6, 0.8, 1.0, 0.0])
    vals = torch.tensor([3.0, 1.0, 0.5, 0.0], dtype=F64)
    assert _scores(layer, 1, vals).tolist() == pytest.approx([1.8, 2.4, 1.0, 0.0])
    assert _scores(layer, 2, None).tolist() == pytest.approx([1.4, 1.0])  # flatten: 2 features per channel


def _zoo_cases():
    for name in MODELS.names():
        kind = MODELS.meta(name).get("inputs", "any")
        shape = {"image": (3, 16, 16), "signal": (1, 40)}.get(kind, (1, 6, 6))
        opts = {"width": 4} if "width" in model_options(name) and name != "lenet5" else {}  # lenet5 width = fc1 units
        if "hidden" in model_options(name):
            opts["hidden"] = [24, 12]
        yield pytest.param(name, shape, opts, id=name)


@pytest.mark.parametrize("name, shape, opts", list(_zoo_cases()))
def test_every_zoo_model_exact_narrowable_and_rebuildable(name, shape, opts):
    torch.manual_seed(0)
    model = _rand_bn_(create(name, shape, 10, **opts)).double().eval()
    x = _x(24, *shape)
    stats = pcn.collect(model, [x])
    scale = float(model(x).detach().abs().max())  # deep ResNets with random BN reach ~1e7
    for plan in ("factored", "merged"):
        small = pcn.compress(model, stats, plan=plan)
        assert pcn.pcn_layers(small) and _max_diff(model, small, x) < 1e-10 * scale
        assert _max_diff(model, pcn.expand(small), x) < 1e-10 * scale
    if name == "vit":  # tokens carry their channels last: the channel graph refuses, by name, for now
        with pytest.raises(DrtError, match="on a tensor that is not 2-D"):
            pcn.compress(model, stats, keep=0.8, output=[f"blocks.{i}.fc2" for i in range(4)])
        narrow = pcn.compress(model, stats, keep=0.8)
    else:
        narrow = pcn.compress(model, stats, keep=0.8, output=True)
        n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert n_params(narrow) < n_params(small) and pcn.pcn_spec(narrow)["resized"]  # producers were cut
    # plain PyTorch save / load: state dict + JSON spec, rebuilt on a fresh zoo model
    buf = io.BytesIO()
    torch.save({"state": narrow.state_dict(), "spec": json.dumps(pcn.pcn_spec(narrow))}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    loaded = pcn.rebuild(create(name, shape, 10, **opts).double(), json.loads(ckpt["spec"]))
    loaded.load_state_dict(ckpt["state"])
    loaded.eval()
    assert _max_diff(narrow, loaded, x) == 0.0
    assert pcn.pcn_spec(loaded) == pcn.pcn_spec(narrow)


def test_subspace_overlaps_between_collections():
    torch.manual_seed(0)
    model = create("mlp", (10,), 3, hidden=[12, 8]).double()
    a = pcn.collect(model, [_x(300, 10)])
    b = pcn.collect(model, [_x(300, 10, seed=1)])
    same = pcn.subspace_overlaps(a, a, keep=4)
    assert same.keys() == {"fc2", "fc3"} and all(v == pytest.approx(1.0) for v in same.values())
    other = pcn.subspace_overlaps(a, b, keep=4)
    assert all(0.5 < v <= 1.0 + 1e-12 for v in other.values())  # same distribution: similar subspaces
    assert pcn.subspace_overlaps(a, b, keep="all")["fc2"] == pytest.approx(1.0)  # k = d: whole space


def test_flops_per_sample_count_the_projection_not_the_per_batch_bias_folding():
    from drt.analysis.cost import forward_flops
    from drt.pcn.layers import PCNLinear

    d, k, out = 40, 7, 12
    layer = PCNLinear(d, k, out)  # its mean is folded into the bias once per batch, not per sample
    assert forward_flops(layer, (d,)) == 2 * (d * k + k * out)
    assert forward_flops(nn.Linear(d, out), (d,)) == 2 * d * out


def test_compressed_and_rebuilt_models_do_not_inherit_the_originals_hooks():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    seen = []
    for m in model:
        m.register_forward_hook(lambda mod, i, o: seen.append(mod))  # e.g. a regulariser's feature capture
    stats = pcn.collect(model, [_x(40, 6)])
    seen.clear()
    small = pcn.compress(model, stats, keep="all", output=True)
    big = pcn.expand(small)
    rebuilt = pcn.rebuild(model, pcn.pcn_spec(small))
    for net in (small, big, rebuilt):
        net(_x(4, 6))
    assert seen == []
    model(_x(4, 6))
    assert len(seen) == 5  # the original keeps its own


class ChannelMean(nn.Module):
    """Averages over the channels of a map whose channel count equals its height (shape looks unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(16, 3)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))).mean(1).flatten(1))


def test_a_channel_reduction_is_not_mistaken_for_a_spatial_one():
    model = ChannelMean().double()
    spaces = {sp.readers[0][0]: sp for sp in pcn.channel_spaces(model, (2, 4, 4)) if sp.readers}
    assert spaces["c"].blocked  # b's channels are averaged away: c reads no channel space of b


def _mlp(*widths: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double()


def test_models_pcn_must_not_silently_change_are_refused_or_kept_intact():
    from torch.nn.utils import prune

    x = _x(64, 6)
    m = _mlp(6, 8, 8, 3)
    prune.l1_unstructured(m[0], "weight", amount=0.5)  # the first layer: kept, so its pruning must survive
    small = pcn.compress(m, pcn.collect(m, [x]), keep="all")
    assert hasattr(small[0], "weight_orig") and (small[0].weight == 0).sum() == 24
    torch.testing.assert_close(small(x), m(x))
    prune.l1_unstructured(m[2], "weight", amount=0.5)  # a layer PCN would replace
    with pytest.raises(DrtError, match="'2' computes its weight through a hook"):
        pcn.compress(m, pcn.collect(m, [x]), keep="all", plan="factored")
    tied = _mlp(6, 8, 8, 8)
    tied[4].weight = tied[2].weight
    with pytest.raises(DrtError, match="'2' shares its weight with '4.weight'"):
        pcn.compress(tied, pcn.collect(tied, [x]), keep=2)
    frozen = _mlp(6, 8, 8, 3).requires_grad_(False)
    small = pcn.compress(frozen, pcn.collect(frozen, [x]), keep=3)
    assert not any(p.requires_grad for p in small.parameters())  # a frozen layer stays frozen


def test_only_a_layer_reading_the_network_input_is_first():
    emb = nn.Sequential(nn.Embedding(10, 6), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    tokens = torch.randint(0, 10, (64, 2), generator=torch.Generator().manual_seed(0))
    stats = pcn.collect(emb, [tokens])
    assert stats.first == [] and set(stats.layers) == {"2", "4"}  # behind an embedding
    assert set(pcn.pcn_layers(pcn.compress(emb, stats, keep={"2": 4}))) == {"2"}
    assert pcn.collect(_mlp(6, 8, 3), [_x(16, 6)]).first == ["0"]


def test_bad_batches_and_options_are_clear_errors():
    m, x = _mlp(6, 8, 8, 3), _x(64, 6)
    one = pcn.collect(m, x)  # a single tensor is one batch, not an iterable of samples
    assert one.samples == 64 and one.sample_shape == (6,)
    with pytest.raises(DrtError, match="NaN or Inf"):
        pcn.collect(m, [torch.cat([x, torch.full((1, 6), float("nan"), dtype=F64)])])
    with pytest.raises(DrtError, match=r"the model failed on a batch of shape \(64, 7\)"):
        pcn.collect(m, [_x(64, 7)])
    with pytest.raises(DrtError, match="no Linear/Conv1d/Conv2d layer"):
        pcn.collect(nn.Sequential(nn.Conv3d(1, 2, 1)), [torch.randn(2, 1, 2, 2, 2)])
    stats = pcn.collect(m, [x])
    with pytest.raises(DrtError, match="eigenvalue threshold must be a number >= 0"):
        pcn.compress(m, stats, keep="all", eig_threshold=float("nan"))
    with pytest.raises(DrtError, match="pass output=True"):
        pcn.compress(m, stats, keep=3, output_keep=2)
    with pytest.raises(DrtError, match="output_keep 'nope' matches no PCN layer"):
        pcn.compress(m, stats, keep=3, output=True, output_keep={"nope": 2})
    with pytest.raises(DrtError, match="threshold must be a number >= 0"):
        pcn.compress(m, stats, keep=3, output=True, output_threshold=float("nan"))
    with pytest.raises(DrtError, match="nothing to transform"):
        pcn.compress(m, pcn.collect(m, [x], layers=["0"]), keep="all")
