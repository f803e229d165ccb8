"""Layer densities, exact counts, global top-k and the layer-collapse guard (tiny hand-made inputs)."""

import math

import pytest
import torch

from drt.errors import DrtError
from drt.sparse import global_topk, kept_total, layer_counts, layer_densities, masks_from_scores, random_scores

MIXES = {
    "convnet": {"c1.weight": (16, 3, 3, 3), "c2.weight": (32, 16, 3, 3), "c3.weight": (64, 32, 3, 3),
                "fc.weight": (10, 64)},
    "mlp": {"l1.weight": (100, 50), "l2.weight": (100, 100), "l3.weight": (10, 100)},
    "tiny+big": {"t.weight": (2, 3), "big.weight": (200, 100), "mid.weight": (50, 40), "k.weight": (7, 5, 3)},
}
SPARSITIES = [0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99]


@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("kind", ["uniform", "er", "erk"])
@pytest.mark.parametrize("dense_first", [False, True])
def test_exact_counts_every_distribution(mix, kind, dense_first):
    shapes = MIXES[mix]
    numels = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(numels.values())
    first = next(iter(shapes))
    for s in SPARSITIES:
        budget = (1 - s) * total
        if dense_first and numels[first] > budget:
            with pytest.raises(DrtError, match=first):
                layer_densities(shapes, s, kind, dense_first=True)
            continue
        dens = layer_densities(shapes, s, kind, dense_first=dense_first)
        assert sum(dens[n] * numels[n] for n in shapes) == pytest.approx(budget, rel=1e-9)
        assert all(0 < d <= 1 for d in dens.values())
        if dense_first:
            assert dens[first] == 1.0
        counts = layer_counts(numels, dens, s)
        assert sum(counts.values()) == round((1 - s) * total) == kept_total(total, s)
        assert all(1 <= counts[n] <= numels[n] for n in shapes)
        # and through masks_from_scores with random scores: the MaskSet achieves the same counts
        scores = random_scores({n: torch.empty(sh) for n, sh in shapes.items()}, torch.Generator().manual_seed(0))
        ms, info = masks_from_scores(scores, s, kind, dense_first=dense_first)
        assert ms.kept() == kept_total(total, s)
        assert {n: ms.kept(n) for n in shapes} == counts
        assert info["achieved_sparsity"] == pytest.approx(1 - kept_total(total, s) / total, abs=0)


@pytest.mark.parametrize("mix", list(MIXES))
def test_global_distribution_exact(mix):
    shapes = MIXES[mix]
    total = sum(math.prod(s) for s in shapes.values())
    scores = random_scores({n: torch.empty(sh) for n, sh in shapes.items()}, torch.Generator().manual_seed(1))
    for s in SPARSITIES:
        ms, info = masks_from_scores(scores, s, "global")
        assert ms.kept() == kept_total(total, s)
        assert all(ms.kept(n) >= 1 for n in ms)
        assert info["targets"] == dict.fromkeys(shapes)


def test_erk_is_proportional_to_raw_and_caps_saturated_layers():
    shapes = {"t": (4, 2), "big": (500, 400), "mid": (60, 50, 3, 3)}
    dens = layer_densities(shapes, 0.5, "erk")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    budget = 0.5 * sum(numel.values())
    assert dens["t"] == 1.0  # raw 0.75 * eps >> 1 -> dense, eps re-solved over the others
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    eps = (budget - numel["t"]) / (raw["big"] * numel["big"] + raw["mid"] * numel["mid"])
    assert dens["big"] == pytest.approx(eps * raw["big"], rel=1e-12)
    assert dens["mid"] == pytest.approx(eps * raw["mid"], rel=1e-12)
    # ER ignores kernel dims: (n_out + n_in) / (n_out n_in)
    er = layer_densities({"a": (8, 4, 3, 3), "b": (16, 8, 3, 3)}, 0.5, "er")
    assert er["a"] / er["b"] == pytest.approx((12 / 32) / (24 / 128))


def test_erk_resolves_until_stable():
    # two small layers saturate one after the other
    shapes = {"s1": (3, 2), "s2": (20, 10), "big": (400, 300)}
    dens = layer_densities(shapes, 0.3, "erk")
    assert dens["s1"] == dens["s2"] == 1.0 and dens["big"] < 1
    assert sum(dens[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(0.7 * 120206)


def test_unreachable_target_names_saturated_layers():
    shapes = {"a": (10, 10), "big": (100, 100), "c": (10, 10)}
    for kind in ("uniform", "er", "erk"):
        with pytest.raises(DrtError, match="big"):
            layer_densities(shapes, 0.99, kind, dense=["big"])
        with pytest.raises(DrtError, match="a, c"):
            layer_densities(shapes, 0.99, kind, dense_first=True, dense_last=True)
    with pytest.raises(DrtError, match="big"):
        masks_from_scores({n: torch.rand(s) for n, s in shapes.items()}, 0.99, "global", dense=["big"])
    with pytest.raises(DrtError, match="not among"):
        layer_densities(shapes, 0.5, "erk", dense=["nope"])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    scores = {"a": torch.rand(4, 4)}
    with pytest.raises(DrtError, match=r"\[0, 1\)"):
        layer_densities({"a": (4, 4)}, bad)
    with pytest.raises(DrtError, match=r"\[0, 1\)"):
        global_topk(scores, bad)
    with pytest.raises(DrtError, match=r"\[0, 1\)"):
        masks_from_scores(scores, bad, "erk")


def test_unknown_distribution_lists_valid():
    with pytest.raises(DrtError, match="global, uniform, er, erk"):
        masks_from_scores({"a": torch.rand(3)}, 0.5, "bogus")


def test_layer_counts_largest_remainder_and_guard():
    # quotas 2.5 each, total round(7.5) = 8 (halves up): the remainder goes to the earlier layers
    assert layer_counts({"a": 10, "b": 10, "c": 10}, dict.fromkeys("abc", 0.25), 0.75) == {"a": 3, "b": 3, "c": 2}
    numels, dens = {"a": 990, "b": 10}, {"a": 10 / 990, "b": 0.0}
    assert layer_counts(numels, dens, 0.99, guard=False) == {"a": 10, "b": 0}
    assert layer_counts(numels, dens, 0.99) == {"a": 9, "b": 1}
    with pytest.raises(DrtError, match="not the"):
        layer_counts({"a": 10}, {"a": 0.9}, 0.5)


def test_global_topk_ties_and_guard_exact():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 2.0]), "b": torch.tensor([2.0, 0.5])}
    masks, fired = global_topk(scores, 0.5, guard=False)  # keep 3; ties at 2.0 go to the lower index
    assert masks["a"].tolist() == [True, False, True, True] and masks["b"].tolist() == [False, False]
    assert fired == []
    masks, fired = global_topk(scores, 0.5)
    assert masks["a"].tolist() == [True, False, True, False] and masks["b"].tolist() == [True, False]
    assert fired == ["b"]
    with pytest.raises(DrtError, match="NaN"):
        global_topk({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(DrtError, match="fewer than"):
        global_topk({"a": torch.rand(10), "b": torch.rand(10), "c": torch.rand(10)}, 0.95)


def test_per_layer_guard_reported():
    # uniform 1% of (990 + 10): quotas 9.9 and 0.1 -> largest remainder gives b nothing; guard moves one
    scores = {"a": torch.rand(990), "b": torch.rand(10)}
    ms, info = masks_from_scores(scores, 0.99, "uniform", guard=False)
    assert (ms.kept("a"), ms.kept("b")) == (10, 0) and info["guard_fired"] == []
    ms, info = masks_from_scores(scores, 0.99, "uniform")
    assert (ms.kept("a"), ms.kept("b")) == (9, 1) and info["guard_fired"] == ["b"]
    assert int(scores["b"].argmax()) == int(ms["b"].nonzero()[0])  # the guard keeps b's best weight
