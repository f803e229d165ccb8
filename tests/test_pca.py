"""Streaming PCA statistics, k rules and subspace overlap (drt.analysis.pca): exact values on tiny tensors."""

import math
import pickle

import pytest
import torch

from drt.analysis.pca import (
    BudgetUnit,
    RunningMoments,
    as_observations,
    explained_variance,
    k_budget,
    k_explained,
    k_fixed,
    k_threshold,
    k_width_fraction,
    subspace_overlap,
)
from drt.errors import DrtError

F64 = torch.float64


def _data(n: int = 300, d: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=F64) @ torch.randn(d, d, generator=g, dtype=F64) + 3.0


def test_streaming_moments_equal_batch_computation():
    x = _data().float()
    m = RunningMoments(6)
    for chunk in x.split(37):
        m.update(chunk)  # float32 in, float64 sums inside
    x = x.double()
    assert m.n == 300
    assert torch.allclose(m.mean(), x.mean(0), atol=1e-10, rtol=0)
    assert torch.allclose(m.cov(), torch.cov(x.T), atol=1e-10, rtol=0)  # centred, / (N - 1)


def test_merging_halves_equals_whole_and_state_roundtrip():
    x = _data()
    whole, a, b = RunningMoments(6), RunningMoments(6), RunningMoments(6)
    whole.update(x)
    a.update(x[:100])
    b.update(x[100:])
    merged = a + b
    assert a.n == 100  # `+` does not mutate
    for t1, t2 in zip(merged.tensors(), whole.tensors(), strict=True):
        assert torch.allclose(t1, t2, atol=1e-9, rtol=0)
    a.add_(b)
    assert torch.allclose(a.cov(), whole.cov(), atol=1e-12, rtol=0)
    back = RunningMoments.from_state_dict(pickle.loads(pickle.dumps(whole.state_dict())))
    assert torch.equal(back.cov(), whole.cov())


def test_eig_sorted_descending_and_reconstructs_cov():
    m = RunningMoments(6)
    m.update(_data())
    vals, vecs = m.eig()
    assert vals.dtype == F64 and bool((vals[:-1] >= vals[1:]).all())
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, m.cov(), atol=1e-10)
    assert bool((vecs.abs().argmax(0) == vecs.argmax(0)).all())  # sign convention: largest entry positive


def test_conv_observation_layout():
    x = torch.arange(2 * 3 * 4 * 5, dtype=F64).reshape(2, 3, 4, 5)  # (N, C, H, W)
    obs = as_observations(x, channels_last=False)
    assert obs.shape == (2 * 4 * 5, 3)
    assert torch.equal(obs[1 * 20 + 2 * 5 + 3], x[1, :, 2, 3])  # row (n, h, w) holds the C channels
    sig = torch.randn(4, 3, 7)  # Conv1d (N, C, L)
    assert torch.equal(as_observations(sig, channels_last=False)[2 * 7 + 5], sig[2, :, 5])
    lin = torch.randn(4, 5, 6)  # Linear on (N, T, d)
    assert as_observations(lin, channels_last=True).shape == (20, 6)
    pooled = as_observations(torch.ones(2, 3, 16, 6), channels_last=False, pool_to=4)
    assert pooled.shape == (2 * 4 * 4, 3)  # 16 -> 4, 6 -> 4; only dims larger than pool_to shrink


SPECTRUM = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.5, 0.0], dtype=F64)  # total 8


def test_k_rules_on_hand_made_spectrum():
    assert [k_explained(SPECTRUM, f) for f in (0.5, 0.75, 0.8, 0.9, 1.0)] == [1, 2, 3, 4, 5]
    assert torch.allclose(explained_variance(SPECTRUM)[:3], torch.tensor([0.5, 0.75, 0.875], dtype=F64))
    assert k_threshold(SPECTRUM, 1.0) == 3 and k_threshold(SPECTRUM, 0.5) == 5
    assert k_threshold(SPECTRUM, 100.0) == 1  # at least one component
    assert k_width_fraction(10, 0.25) == 3 and k_width_fraction(10, 0.2) == 2 and k_width_fraction(3, 0.01) == 1
    assert k_fixed(6, 6) == 6


@pytest.mark.parametrize("call", [
    lambda: k_fixed(0, 6, "conv3"), lambda: k_fixed(7, 6, "conv3"), lambda: k_fixed(True, 6, "conv3"),
    lambda: k_explained(SPECTRUM, 0.0, "conv3"), lambda: k_explained(SPECTRUM, 1.5, "conv3"),
    lambda: k_width_fraction(6, -0.1, "conv3"), lambda: k_threshold(SPECTRUM, -1.0, "conv3"),
])
def test_bad_k_or_fraction_is_a_one_line_error_naming_the_layer(call):
    with pytest.raises(DrtError, match="conv3") as err:
        call()
    assert "\n" not in str(err.value)


def test_rank_deficient_and_constant_inputs_keep_one_component_without_nan():
    x = _data(50, 4)
    x[:, 2] = 0.0  # a dead ReLU channel
    m = RunningMoments(4)
    m.update(x)
    vals, vecs = m.eig()
    assert torch.isfinite(vals).all() and torch.isfinite(vecs).all() and vals[-1].abs() < 1e-12
    assert k_explained(vals, 1.0) == 3  # the dead direction is never needed
    const = RunningMoments(3)
    const.update(torch.ones(10, 3))
    vals, vecs = const.eig()
    assert float(vals.abs().max()) == 0.0 and torch.isfinite(vecs).all()
    assert k_explained(vals, 0.99) == 1 and k_threshold(vals, 0.1) == 1
    with pytest.raises(DrtError, match="at least 2"):
        one = RunningMoments(3)
        one.update(torch.ones(1, 3))
        one.cov()


def test_budget_allocation_by_variance_per_parameter():
    units = {"a": BudgetUnit(torch.tensor([10.0, 5.0, 1.0]), cost=10, cap=3),
             "b": BudgetUnit(torch.tensor([1.0, 1.0, 1.0, 1.0]), cost=1, cap=4),
             "c": BudgetUnit(torch.tensor([1.0, 0.0]), cost=1, cap=2)}
    # minimum 12 (k = 1 each); gains per parameter: b 0.25 (x3) > a 5/16/10 > a 1/16/10; c's 0 never added
    assert k_budget(units, 12) == {"a": 1, "b": 1, "c": 1}
    assert k_budget(units, 15) == {"a": 1, "b": 4, "c": 1}
    assert k_budget(units, 24) == {"a": 1, "b": 4, "c": 1}  # a's next component costs 10 > 9 left
    assert k_budget(units, 25) == {"a": 2, "b": 4, "c": 1}
    assert k_budget(units, 10**6) == {"a": 3, "b": 4, "c": 1}
    for budget in range(12, 40):
        ks = k_budget(units, budget)
        assert sum(ks[n] * u.cost for n, u in units.items()) <= budget
    with pytest.raises(DrtError, match="minimum 12"):
        k_budget(units, 11)


def test_subspace_overlap():
    eye = torch.eye(4, dtype=F64)
    assert subspace_overlap(eye[:, :2], eye[:, :2]) == pytest.approx(1.0)
    assert subspace_overlap(eye[:, :2], eye[:, 2:]) == pytest.approx(0.0)
    rot = eye[:, :2] @ torch.tensor([[math.cos(1), -math.sin(1)], [math.sin(1), math.cos(1)]], dtype=F64)
    assert subspace_overlap(eye[:, :2], rot) == pytest.approx(1.0)  # same subspace, other basis
    half = torch.stack([eye[0], (eye[1] + eye[2]) / math.sqrt(2)], 1)
    assert subspace_overlap(eye[:, :2], half) == pytest.approx(0.75)  # (1 + 1/2) / 2
    with pytest.raises(DrtError):
        subspace_overlap(eye[:, :2], torch.eye(3)[:, :2])
