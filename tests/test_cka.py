"""CKA / HSIC estimators, the CKA-SR loss, feature hooks and CKA analysis."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from drt.analysis.cka_analysis import cka_table, layer_cka
from drt.analysis.hooks import FeatureHooks
from drt.cka import (
    MinibatchCKA,
    aug_cka_loss,
    cka_from_grams,
    cka_matrix,
    cka_sr_loss,
    cka_sr_reference,
    gram_linear,
    gram_rbf,
    hsic,
    linear_cka,
    stacked_unbiased_cka,
    u_centre,
)
from drt.errors import DrtError
from drt.experiments.plots import cka_heatmap

F64 = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orth(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_g(seed), dtype=F64))
    return q


def _hsic1_transcribed(k: torch.Tensor, l: torch.Tensor) -> float:
    """Song et al. 2012 unbiased HSIC, written out with explicit sums (no vector tricks)."""
    n = k.shape[0]
    kt = [[0.0 if i == j else float(k[i, j]) for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else float(l[i, j]) for j in range(n)] for i in range(n)]
    tr = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sk, sl = sum(map(sum, kt)), sum(map(sum, lt))
    kl1 = sum(kt[i][m] * lt[m][j] for i in range(n) for m in range(n) for j in range(n))
    return (tr + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))


# --- exact values on tiny inputs -------------------------------------------------------------

def test_one_dimensional_biased_cka_is_squared_correlation():
    x = torch.tensor([[1.0], [2.0], [4.0], [7.0], [3.0]], dtype=F64)
    y = torch.tensor([[0.5], [1.0], [1.0], [3.0], [-2.0]], dtype=F64)
    r = torch.corrcoef(torch.cat([x, y], 1).T)[0, 1]
    assert torch.allclose(linear_cka(x, y), r**2, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_is_one(unbiased):
    x = torch.randn(10, 3, 4, generator=_g(0))
    assert abs(linear_cka(x, x, unbiased=unbiased).item() - 1.0) < 1e-12
    assert linear_cka(x, x, unbiased=unbiased).dtype == F64


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 7.0, 1e6])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(unbiased, scale):
    x = torch.randn(12, 6, generator=_g(1), dtype=F64)
    y = x[:, :5] @ torch.randn(5, 9, generator=_g(2), dtype=F64) + 0.5 * torch.randn(12, 9, generator=_g(3))
    base = linear_cka(x, y, unbiased=unbiased)
    assert 0.2 < base.item() < 0.99
    for xa, ya in [(x @ _orth(6, 4), y), (x, y @ _orth(9, 5)), (scale * x, y), (x, scale * y)]:
        assert abs(linear_cka(xa, ya, unbiased=unbiased).item() - base.item()) < 1e-10


@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_a_large_constant_offset(unbiased):
    x = torch.randn(12, 6, generator=_g(1), dtype=F64)
    y = x @ torch.randn(6, 4, generator=_g(2), dtype=F64) + torch.randn(12, 4, generator=_g(3), dtype=F64)
    base = linear_cka(x, y, unbiased=unbiased).item()
    for offset in (1e2, 1e3, 1e5):  # the guard's floor is relative to the centred Grams, not the raw ones
        assert abs(linear_cka(x + offset, y - offset, unbiased=unbiased).item() - base) < 1e-6
        assert abs(linear_cka(x + offset, x + offset, unbiased=unbiased).item() - 1.0) < 1e-6
        kx, ky = gram_linear(x + offset), gram_linear(y)
        assert abs(cka_from_grams(kx, ky, unbiased=unbiased).item() - base) < 1e-6
    mb = MinibatchCKA(unbiased=unbiased)
    mb.update([x + 1e3], [y])
    assert abs(mb.compute()[0, 0].item() - base) < 1e-6  # one batch: the plain estimate


def test_unbiased_estimator_is_centred_on_zero_for_unrelated_features():
    draws, n, d = 2000, 8, 256
    x = torch.randn(draws, n, d, generator=_g(6), dtype=F64)
    y = torch.randn(draws, n, d, generator=_g(7), dtype=F64)
    kx, ky = gram_linear(x), gram_linear(y)  # (draws, n, n), batched
    unb, bia = cka_from_grams(kx, ky, unbiased=True), cka_from_grams(kx, ky, unbiased=False)
    assert unb.shape == (draws,)
    assert abs(unb.mean().item()) < 0.03
    assert bia.mean().item() > 0.5
    assert abs(unb[0].item() - linear_cka(x[0], y[0], unbiased=True).item()) < 1e-12


# --- agreement with the reference formulas ----------------------------------------------------

def test_unbiased_hsic_and_u_centring_match_transcribed_formula():
    x = torch.randn(7, 5, generator=_g(8), dtype=F64)
    y = torch.randn(7, 3, generator=_g(9), dtype=F64) + 2.0
    k, l = gram_linear(x), gram_rbf(y)
    ref = _hsic1_transcribed(k, l)
    assert abs(hsic(k, l, unbiased=True).item() - ref) < 1e-10
    assert abs(((u_centre(k) * u_centre(l)).sum() / (7 * 4)).item() - ref) < 1e-10


def test_biased_hsic_matches_trace_formula():
    k = gram_linear(torch.randn(6, 4, generator=_g(10), dtype=F64))
    l = gram_linear(torch.randn(6, 2, generator=_g(11), dtype=F64))
    h = torch.eye(6, dtype=F64) - 1.0 / 6
    assert abs(hsic(k, l).item() - (torch.trace(k @ h @ l @ h) / 25).item()) < 1e-12


def test_stacked_all_pairs_equals_pairwise_loop():
    feats = [torch.randn(9, c, 3, generator=_g(20 + c)) for c in (1, 2, 3, 5)]
    feats.append(feats[1] * 3 + 1)  # an exact copy up to scale/shift
    stacked = stacked_unbiased_cka(feats)
    loop = torch.tensor([[linear_cka(a, b, unbiased=True).item() for b in feats] for a in feats], dtype=F64)
    assert torch.allclose(stacked, loop, atol=1e-12)
    assert abs(stacked[1, 4].item() - 1.0) < 1e-12
    assert torch.allclose(cka_matrix(feats), cka_matrix(feats, feats), atol=1e-14)


def test_cka_sr_loss_matches_naive_reference():
    stages = [[torch.randn(16, 4, 3, 3, generator=_g(30 + i)) for i in range(3)],
              [torch.randn(16, 8, generator=_g(40 + i)) for i in range(2)]]
    for n in (8, -1):
        fast, naive = cka_sr_loss(stages, n_samples=n), cka_sr_reference(stages, n_samples=n)
        assert fast.dtype == F64 and fast.shape == ()
        assert abs(fast.item() - naive.item()) < 1e-10
    # i = j pairs contribute 1 each: 3 + 2 diagonal terms, off-diagonal pairs counted twice
    m0, m1 = (stacked_unbiased_cka([f[:8] for f in s]) for s in stages)
    assert abs(cka_sr_loss(stages).item() - (m0.sum() + m1.sum()).item()) < 1e-12
    assert abs(m0.diagonal().sum().item() - 3.0) < 1e-12


def test_aug_cka_loss_is_mean_biased_cka_over_unordered_pairs():
    feats = [torch.randn(10, d, generator=_g(50 + d)) for d in (3, 6, 12)]
    pairs = [linear_cka(a[:8], b[:8]).item() for a, b in itertools.combinations(feats, 2)]
    assert abs(aug_cka_loss(feats).item() - sum(pairs) / 3) < 1e-12
    assert abs(aug_cka_loss([feats[:1], feats[1:]]).item() - sum(pairs) / 3) < 1e-12


def test_rbf_kernel_self_similarity_and_unknown_kernel():
    feats = [torch.randn(10, 4, generator=_g(60)), torch.randn(10, 7, generator=_g(61))]
    m = cka_matrix(feats, kernel="rbf")
    assert torch.allclose(m.diagonal(), torch.ones(2, dtype=F64), atol=1e-12)
    with pytest.raises(DrtError, match="linear, rbf"):
        cka_matrix(feats, kernel="cosine")


# --- gradients and numerical stability --------------------------------------------------------

@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck_linear_cka(unbiased):
    x = torch.randn(6, 4, generator=_g(70), dtype=F64, requires_grad=True)
    y = torch.randn(6, 3, generator=_g(71), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: linear_cka(a, b, unbiased=unbiased), (x, y))


def test_gradcheck_cka_sr_loss():
    ts = [torch.randn(6, 2, 3, generator=_g(80 + i), dtype=F64, requires_grad=True) for i in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: cka_sr_loss([[a, b], [c]], n_samples=5), tuple(ts))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kind", ["zero", "constant", "constant_rows"])
def test_constant_or_zero_features_give_zero_and_finite_grads(unbiased, kind):
    n = 11  # not a power of 2: centring leaves rounding residue (~1e-17), which the guard must catch
    x = {"zero": torch.zeros(n, 5), "constant": torch.full((n, 5), 0.1),
         "constant_rows": torch.tensor([0.3, -1.0, 7.0, 0.1, 2.0]).repeat(n, 1)}[kind]
    x = x.double().requires_grad_()
    y = torch.randn(n, 4, generator=_g(90), dtype=F64, requires_grad=True)
    for fn in (lambda: linear_cka(x, y, unbiased=unbiased), lambda: linear_cka(x, x, unbiased=unbiased)):
        v = fn()
        gx, gy = torch.autograd.grad(v, (x, y), allow_unused=True, materialize_grads=True)
        assert v.item() == 0.0
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    loss = cka_sr_loss([[x, y, x]], n_samples=-1)
    gx, gy = torch.autograd.grad(loss, (x, y))
    assert abs(loss.item() - 1.0) < 1e-12  # only CKA(y, y) = 1 survives
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


# --- errors -----------------------------------------------------------------------------------

def test_fewer_than_four_samples_unbiased_raises():
    x = torch.randn(3, 4)
    with pytest.raises(DrtError, match="minimum is 4"):
        linear_cka(x, x, unbiased=True)
    with pytest.raises(DrtError, match="minimum is 4"):
        hsic(gram_linear(x), gram_linear(x), unbiased=True)
    with pytest.raises(DrtError, match="CKA-SR needs at least 4 samples for the unbiased estimator; got n=3"):
        cka_sr_loss([[torch.randn(16, 4), torch.randn(16, 4)]], n_samples=3)
    assert linear_cka(x, x).item() == pytest.approx(1.0)  # biased works with 3


def test_mismatched_batch_sizes_raise():
    a, b = torch.randn(8, 4), torch.randn(9, 4)
    with pytest.raises(DrtError, match="batch size"):
        linear_cka(a, b)
    with pytest.raises(DrtError, match="batch size"):
        cka_sr_loss([[a], [b]])
    with pytest.raises(DrtError, match="batch size"):
        cka_matrix([a], [b])


# --- minibatch CKA ----------------------------------------------------------------------------

@pytest.mark.parametrize("unbiased", [False, True])
def test_minibatch_cka_identical_data_has_unit_diagonal(unbiased):
    acc = MinibatchCKA(unbiased=unbiased)
    q = _orth(6, 100)
    for i in range(4):
        x = torch.randn(10, 6, generator=_g(101 + i), dtype=F64)
        acc.update([x, x[:, :3]], [2.0 * x @ q, x[:, :3] + 1.0])  # b: same data up to invariances
    m = acc.compute()
    assert m.shape == (2, 2) and acc.batches == 4
    assert torch.allclose(m.diagonal(), torch.ones(2, dtype=F64), atol=1e-12)
    assert m[0, 1].item() < 0.95


def test_minibatch_cka_single_batch_equals_biased_cka():
    feats = [torch.randn(12, d, generator=_g(110 + d)) for d in (2, 5)]
    acc = MinibatchCKA(unbiased=False)
    acc.update(feats)
    assert torch.allclose(acc.compute(), cka_matrix(feats), atol=1e-12)


# --- hooks and analysis -----------------------------------------------------------------------

def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))


def test_feature_hooks_capture_shapes_and_reject_unknown_names():
    model = _tiny_model()
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    with FeatureHooks(model, ["3", "1"]) as hooks:
        model(x)
        assert list(hooks.features) == ["3", "1"]
        assert hooks.features["1"].shape == (5, 4, 4, 4) and hooks.features["3"].shape == (5, 10)
        assert hooks.features["1"].requires_grad
        hooks.clear()
        assert hooks.features == {}
    model(x)
    assert hooks.features == {}  # removed on exit
    with FeatureHooks(model, ["1"], detach=True) as hooks:
        model(x)
        assert not hooks.features["1"].requires_grad
    with pytest.raises(DrtError, match=r"'conv9'.*valid names: 0, 1, 2, 3"):
        FeatureHooks(model, ["conv9"])


def test_layer_cka_heatmap_and_table(tmp_path):
    model = _tiny_model().train()
    data = [(torch.randn(16, 1, 4, 4, generator=_g(120 + i)), torch.zeros(16)) for i in range(3)]
    names = ["0", "1", "3"]
    m = layer_cka(model, data, names, max_batches=2)
    assert m.shape == (3, 3) and model.training
    assert torch.allclose(m.diagonal(), torch.ones(3, dtype=F64), atol=1e-10)
    assert torch.allclose(m, m.T, atol=1e-12)
    other = layer_cka(model, data, names, model_b=_tiny_model(), names_b=["1"], unbiased=True)
    assert other.shape == (3, 1) and abs(other[1, 0].item() - 1.0) < 1e-10  # identical init (seed 0)
    png = cka_heatmap(m, names, names, tmp_path / "sub" / "cka.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    table = cka_table(m, names, names).splitlines()
    assert table[0] == "| | 0 | 1 | 3 |" and len(table) == 5 and table[2].startswith("| 0 | 1.000 |")


def test_nan_features_give_nan_and_wrong_shapes_are_refused():
    x = torch.randn(16, 8, dtype=torch.float64)
    assert torch.isnan(linear_cka(torch.full((16, 8), float("nan"), dtype=torch.float64), x))
    with pytest.raises(DrtError, match="lists of feature tensors"):
        cka_matrix(x)
    with pytest.raises(DrtError, match="a list of lists of feature tensors"):
        cka_sr_loss([x, x])
    with pytest.raises(DrtError, match="got a 0-D tensor"):
        linear_cka(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(DrtError, match="n_samples must be"):
        cka_sr_loss([[x, x]], n_samples=2.5)
