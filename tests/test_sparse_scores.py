"""Exact values of SNIP / GraSP / SynFlow on a hand-made net, purity, and layer collapse at 99%."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drt.errors import DrtError
from drt.sparse import (
    force,
    grasp_scores,
    iterative_snip,
    kept_total,
    magnitude_scores,
    masks_from_scores,
    prunable,
    random_scores,
    snip_scores,
    synflow_prune,
    synflow_scores,
)

W1 = [[1.0, -2.0], [0.5, 1.0], [-1.0, 3.0]]  # (3, 2)
W2 = [[2.0, -1.0, 0.5], [-3.0, 1.0, 1.0]]  # (2, 3)


def tiny(dtype=torch.float64) -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False)).to(dtype)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[2].weight.copy_(torch.tensor(W2))
    return net


def batches(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 2, generator=g, dtype=dtype), torch.tensor([0, 1, 1, 0])),
            (torch.randn(3, 2, generator=g, dtype=dtype), torch.tensor([1, 0, 1]))]


def functional_loss(theta, x, y, T=1.0):
    """The tiny net as a function of its flat parameter vector (independent of nn.Module)."""
    w1, w2 = theta[:6].reshape(3, 2), theta[6:].reshape(2, 3)
    return F.cross_entropy(torch.tanh(x @ w1.T) @ w2.T / T, y)


def theta0():
    return torch.cat([torch.tensor(W1).flatten(), torch.tensor(W2).flatten()]).double()


def test_snip_exact():
    data = batches()
    th = theta0().requires_grad_(True)
    g = sum(torch.autograd.grad(functional_loss(th, x, y), th)[0] for x, y in data)
    expected = (g * th).abs().detach()
    got = snip_scores(tiny(), F.cross_entropy, data)
    assert list(got) == ["0.weight", "2.weight"]
    torch.testing.assert_close(torch.cat([got["0.weight"].flatten(), got["2.weight"].flatten()]), expected)


@pytest.mark.parametrize("T", [1.0, 200.0])
def test_grasp_exact_against_full_hessian(T):
    data = batches()
    th = theta0()
    g = sum(torch.autograd.functional.jacobian(lambda t, x=x, y=y: functional_loss(t, x, y, T), th) for x, y in data)
    H = sum(torch.autograd.functional.hessian(lambda t, x=x, y=y: functional_loss(t, x, y, T), th) for x, y in data)
    keep_score = th * (H @ g)  # GraSP removes the largest -theta*Hg == keeps the largest theta*Hg
    got = grasp_scores(tiny(), F.cross_entropy, data, T=T)
    flat = torch.cat([got["0.weight"].flatten(), got["2.weight"].flatten()])
    torch.testing.assert_close(flat, keep_score, rtol=1e-9, atol=1e-18)
    assert flat.abs().max() > 0


def test_synflow_exact_closed_form():
    # |net| on all-ones (tanh(z) on z >= 0 is not linear, so use a linear net as in the paper's analysis)
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[1].weight.copy_(torch.tensor(W2))
    a1, a2 = torch.tensor(W1).abs().double(), torch.tensor(W2).abs().double()
    # R = 1^T |W2| |W1| 1: dR/d|W1|_ij = colsum(|W2|)_i, dR/d|W2|_ki = rowsum(|W1|)_i
    exp1 = a1 * a2.sum(0)[:, None]
    exp2 = a2 * a1.sum(1)[None, :]
    got = synflow_scores(net, (2,))
    assert got["0.weight"].dtype == torch.float64
    torch.testing.assert_close(got["0.weight"], exp1, rtol=0, atol=0)
    torch.testing.assert_close(got["1.weight"], exp2, rtol=0, atol=0)
    assert got["0.weight"][2, 1].item() == 3.0 * (0.5 + 1.0)  # |W1[2,1]| * (|W2[0,2]| + |W2[1,2]|)
    assert net[0].weight[0, 1].item() == -2.0  # signs of the caller's model untouched


def test_synflow_uses_abs_bn_buffers_in_eval():
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[1].running_mean.copy_(torch.tensor([-1.0, 2.0, -3.0]))
        net[1].running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        net[1].weight.copy_(torch.tensor([-1.0, 0.5, 2.0]))
        net[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
    net.train()
    got = synflow_scores(net, (2,))
    a = torch.tensor(W1).abs().double()
    gamma, var = torch.tensor([1.0, 0.5, 2.0]).double(), torch.tensor([4.0, 1.0, 0.25]).double()
    v = torch.tensor([1.0, 1.0, 2.0]).double()  # |W3|
    # R = sum_i v_i (gamma_i (a_i . 1 - |mu_i|) / sqrt(var_i + eps) + |beta_i|); dR/da_ij = v_i gamma_i / sqrt(.)
    expected = a * (v * gamma / torch.sqrt(var + 1e-5))[:, None]
    torch.testing.assert_close(got["0.weight"], expected)
    assert net.training and net[1].running_mean[0].item() == -1.0


def test_scores_do_not_mutate_model():
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    data = [(torch.randn(6, 2), torch.randint(0, 2, (6,)))]
    snip_scores(net, F.cross_entropy, data)
    grasp_scores(net, F.cross_entropy, data)
    synflow_prune(net, (2,), 0.5, rounds=3)
    force(net, F.cross_entropy, data, 0.5, steps=3)
    iterative_snip(net, F.cross_entropy, data, 0.5, steps=3)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training
    with pytest.raises(DrtError, match="at least one batch"):
        snip_scores(net, F.cross_entropy, [])
    with pytest.raises(DrtError, match="not in model"):
        snip_scores(net, F.cross_entropy, data, names=["9.weight"])


def test_random_and_magnitude_scores():
    params = prunable(tiny())
    a = random_scores(params, torch.Generator().manual_seed(3))
    b = random_scores(params, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) for n in a) and a["0.weight"].shape == (3, 2)
    assert magnitude_scores(params)["2.weight"][1, 0].item() == 3.0


def test_iterative_snip_and_force_exact_counts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    data = [(torch.randn(12, 8), torch.randint(0, 3, (12,)))]
    n = sum(p.numel() for p in prunable(net).values())
    one_shot = masks_from_scores(snip_scores(net, F.cross_entropy, data), 0.9)[0]
    for fn in (iterative_snip, force):
        ms, info = fn(net, F.cross_entropy, data, 0.9, steps=5)
        assert ms.kept() == kept_total(n, 0.9) and all(ms.kept(k) >= 1 for k in ms)
        assert info["achieved_sparsity"] == pytest.approx(1 - kept_total(n, 0.9) / n)
        single, _ = fn(net, F.cross_entropy, data, 0.9, steps=1)
        assert single == one_shot  # one step of either is SNIP


def deep_mlp() -> nn.Module:
    torch.manual_seed(0)
    widths = [20, 64, 48, 64, 32, 48, 40, 10]
    # bias-free: SynFlow's conservation argument (Tanaka et al. 2020) assumes no biases; abs-valued
    # biases inject flow that makes early layers look unimportant
    layers = [nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    with torch.no_grad():
        layers[3].weight.mul_(0.01)  # a layer with much smaller init
    mods = []
    for layer in layers:
        mods += [layer, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def test_layer_collapse_magnitude_vs_synflow():
    net = deep_mlp()
    params = prunable(net)
    n = sum(p.numel() for p in params.values())
    ms, info = masks_from_scores(magnitude_scores(params), 0.99, "global", guard=False)
    empty = [k for k in ms if ms.kept(k) == 0]
    assert "6.weight" in empty and info["guard_fired"] == []
    ms, info = masks_from_scores(magnitude_scores(params), 0.99, "global")
    assert info["guard_fired"] == empty and all(ms.kept(k) >= 1 for k in ms)
    assert ms.kept() == kept_total(n, 0.99)
    ms, info = synflow_prune(net, (20,), 0.99, rounds=100, guard=False)
    assert ms.kept() == kept_total(n, 0.99)
    assert all(ms.kept(k) >= 1 for k in ms) and info["guard_fired"] == []
