"""Drop/grow (SET, RigL, GraNet, SNFS redistribution) on hand-made tensors and a tiny MLP; schedules."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drt.errors import DrtError
from drt.sparse import (
    ExplorationTracker,
    MaskSet,
    by_sign,
    cosine_drop_fraction,
    drop_grow_,
    grad_magnitude,
    granet_prune_,
    granet_sparsity,
    kept_total,
    masks_from_scores,
    prunable,
    random_scores,
    redistribute,
    rigl_drop_fraction,
)

B = [True, True, False, True, True, False, True, False]


def hand_made():
    w = nn.Parameter(torch.tensor([0.5, -0.1, 7.0, 0.3, -0.9, 0.0, 0.05, 0.0]))  # 7.0: a stale inactive value
    masks = MaskSet({"w": torch.tensor(B)})
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt.state[w]["momentum_buffer"] = torch.ones(8)
    return w, masks, opt


def test_rigl_update_exact():
    w, masks, opt = hand_made()
    grow = {"w": torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 1.0, 9.0, 2.0])}
    info = drop_grow_({"w": w}, masks, 0.4, grow, torch.Generator().manual_seed(0), opt)
    # floor(0.4 * 5) = 2 dropped: |0.05| (idx 6), |-0.1| (idx 1); grown among inactive-after-drop: 6 (9.0), 2 (5.0)
    assert masks["w"].tolist() == [True, False, True, True, True, False, True, False]
    assert (info.dropped, info.grown, info.new) == ({"w": 2}, {"w": 2}, {"w": 1})
    assert torch.equal(w.detach(), torch.tensor([0.5, 0.0, 0.0, 0.3, -0.9, 0.0, 0.05, 0.0]))  # new idx 2 at 0
    mom = opt.state[w]["momentum_buffer"].tolist()
    assert mom == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # regrown idx 6 keeps its state


def test_set_drop_closest_to_zero_and_random_grow():
    w = nn.Parameter(torch.tensor([0.5, -0.1, 0.3, -0.9, 0.05, -0.2, 0.7, -0.4, 0.0, 0.0]))
    masks = MaskSet({"w": torch.tensor([True] * 8 + [False] * 2)})
    info = drop_grow_({"w": w}, masks, 0.5, None, torch.Generator().manual_seed(0), drop_groups=by_sign)
    # 2 of 4 positives (0.05, 0.3) and 2 of 4 negatives (-0.1, -0.2) dropped; 4 grown among 6 candidates
    assert info.dropped == {"w": 4} and masks.kept("w") == 8
    kept_for_sure = torch.tensor([0, 3, 6, 7])
    assert masks["w"][kept_for_sure].all()
    for i, v in enumerate([0.5, -0.1, 0.3, -0.9, 0.05, -0.2, 0.7, -0.4]):
        assert w[i].item() == (pytest.approx(v) if masks["w"][i] else 0.0)
    again = MaskSet({"w": torch.tensor([True] * 8 + [False] * 2)})
    w2 = nn.Parameter(torch.tensor([0.5, -0.1, 0.3, -0.9, 0.05, -0.2, 0.7, -0.4, 0.0, 0.0]))
    drop_grow_({"w": w2}, again, 0.5, None, torch.Generator().manual_seed(0), drop_groups=by_sign)
    assert again == masks  # same generator seed -> same update (ranks agree)


def test_drop_is_one_score_function():
    w, masks, _ = hand_made()  # active: 0.5 (0), -0.1 (1), 0.3 (3), -0.9 (4), 0.05 (6)
    grow = {"w": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0])}
    info = drop_grow_({"w": w}, masks, 0.4, grow, torch.Generator().manual_seed(0),
                      drop_score=lambda ws: {n: p.detach() for n, p in ws.items()})  # signed θ: the most negative go
    assert info.dropped == {"w": 2} and masks["w"].tolist() == [True, False, False, True, False, True, True, True]
    assert w.detach().tolist()[:5] == [0.5, 0.0, 0.0, pytest.approx(0.3), 0.0]  # -0.1 and -0.9 dropped
    w, masks, _ = hand_made()
    grow = {"w": torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 1.0])}
    info = drop_grow_({"w": w}, masks, 0.5, grow, torch.Generator().manual_seed(0), drop_groups=by_sign,
                      rounding="ceil")  # per sign: ceil(1.5) = 2 of the positives, ceil(1.0) = 1 of the negatives
    assert info.dropped == {"w": 3}  # 0.05, 0.3 and -0.1, the closest to 0 of each sign
    assert masks["w"].tolist() == [True, False, True, False, True, True, False, True]
    assert [t.tolist() for t in by_sign(torch.tensor([-1.0, 0.0, -0.0, 2.0]))] == [[False, True, True, True],
                                                                                  [True, False, False, False]]


def test_tie_break_is_random_but_seeded():
    picks = set()
    for seed in range(8):
        masks = MaskSet({"w": torch.tensor([True] + [False] * 9)})
        w = nn.Parameter(torch.tensor([0.1] + [0.0] * 9))
        drop_grow_({"w": w}, masks, 1.0, {"w": torch.ones(10)}, torch.Generator().manual_seed(seed))
        picks.add(int(masks["w"].nonzero()[0]))
    assert len(picks) > 1  # equal grow scores: not always the lowest index


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))


def test_rigl_counts_constant_over_training_and_zero_state():
    net = mlp()
    weights = prunable(net)
    masks, _ = masks_from_scores(random_scores(weights, torch.Generator().manual_seed(0)), 0.8, "erk")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    masks.apply_(net, opt)
    counts = {n: masks.kept(n) for n in masks}
    tracker = ExplorationTracker(masks)
    gen, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    t_end, changed = 40, 0
    for step in range(60):
        x, y = torch.randn(16, 10, generator=data), torch.randint(0, 3, (16,), generator=data)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        if step % 5 == 0 and 0 < step < t_end:  # step 0: no momentum yet
            before = masks.state_dict()
            values = {n: p.detach().clone() for n, p in weights.items()}
            alpha = rigl_drop_fraction(step, 0.3, t_end=t_end)
            info = drop_grow_(weights, masks, alpha, grad_magnitude(weights), gen, opt)
            for n in masks:
                assert info.dropped[n] == math.floor(alpha * counts[n]) == info.grown[n]
                fresh = masks[n] & ~before[n]
                kept = masks[n] & before[n]
                assert torch.all(weights[n][fresh] == 0)
                assert torch.all(opt.state[weights[n]]["momentum_buffer"][fresh] == 0)
                assert torch.equal(weights[n][kept], values[n][kept])
                changed += int(fresh.sum())
            tracker.update(masks)
        masks.mask_grads_(net)
        opt.step()
        masks.apply_(net, opt)
        assert {n: masks.kept(n) for n in masks} == counts
    assert changed > 0
    assert tracker.rate() > masks.density() and tracker.rate() == pytest.approx(
        sum(int(t.sum()) for t in tracker.ever.values()) / masks.numel())
    for n, p in weights.items():
        assert torch.all(p[~masks[n]] == 0)


def test_rigl_drop_fraction_schedule_exact():
    assert rigl_drop_fraction(0, 0.3, t_end=100) == pytest.approx(0.3, abs=1e-15)
    assert rigl_drop_fraction(50, 0.3, t_end=100) == pytest.approx(0.15, abs=1e-15)
    assert rigl_drop_fraction(25, 0.3, t_end=100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)), abs=1e-15)
    assert rigl_drop_fraction(100, 0.3, t_end=100) == 0.0 and rigl_drop_fraction(250, 0.3, t_end=100) == 0.0
    for bad in [dict(alpha=0.0), dict(alpha=1.5), dict(t_end=0)]:
        with pytest.raises(DrtError):
            rigl_drop_fraction(1, **{"alpha": 0.3, "t_end": 10, **bad})
    assert cosine_drop_fraction(0, 0.5, t_total=100) == pytest.approx(0.5)
    assert cosine_drop_fraction(100, 0.5, t_total=100) == pytest.approx(0.005)
    assert cosine_drop_fraction(50, 0.5, t_total=100) == pytest.approx(0.005 + 0.495 / 2)


def test_granet_schedule_and_prune():
    assert granet_sparsity(0, 0.0, 0.9, 10, 110) == 0.0
    assert granet_sparsity(60, 0.0, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 / 8)
    assert granet_sparsity(500, 0.5, 0.9, 10, 110) == 0.9
    with pytest.raises(DrtError):
        granet_sparsity(0, 0.9, 0.5, 10, 110)
    net = mlp()
    weights = prunable(net)
    masks = MaskSet.ones(weights)
    opt = torch.optim.Adam(net.parameters())
    F.cross_entropy(net(torch.randn(4, 10)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    n = masks.numel()
    for s in (0.5, 0.8):
        old = masks.state_dict()
        granet_prune_(weights, masks, s, opt)
        assert masks.kept() == kept_total(n, s)
        assert all(not torch.any(masks[k] & ~old[k]) for k in masks)  # only removes
        for k, p in weights.items():
            assert torch.all(p[~masks[k]] == 0) and torch.all(opt.state[p]["exp_avg"][~masks[k]] == 0)
    assert granet_prune_(weights, masks, 0.6, opt) == dict.fromkeys(masks, 0)
    counts = {k: masks.kept(k) for k in masks}
    info = drop_grow_(weights, masks, 0.3, grad_magnitude(weights), torch.Generator(), opt, rounding="ceil")
    assert info.dropped == {k: math.ceil(0.3 * c) for k, c in counts.items()}
    assert {k: masks.kept(k) for k in masks} == counts


def test_bad_inputs():
    w, masks, _ = hand_made()
    with pytest.raises(DrtError, match="drop fraction"):
        drop_grow_({"w": w}, masks, 1.5, None, torch.Generator())
    with pytest.raises(DrtError, match="magnitude_scores, by_sign"):
        drop_grow_({"w": w}, masks, 0.1, None, torch.Generator(), drop_score="random")
    with pytest.raises(DrtError, match="missing"):
        grad_magnitude({"w": w})
    with pytest.raises(DrtError, match="grow scores missing or of the wrong size for w"):
        drop_grow_({"w": w}, masks, 0.4, {"w": torch.ones(3)}, torch.Generator())
    with pytest.raises(DrtError, match="exploration state is for tensors v"):
        ExplorationTracker(masks).load_state_dict({"v": torch.ones(8, dtype=torch.bool)})


def test_nan_grow_scores_are_never_grown_and_dense_layers_are_left_alone():
    w, masks, opt = hand_made()
    grow = {"w": torch.tensor([0.0, 0.0, float("nan"), 0.0, 0.0, 1.0, 9.0, 2.0])}
    drop_grow_({"w": w}, masks, 0.4, grow, torch.Generator().manual_seed(0), opt)
    assert not masks["w"][2]  # the NaN score ranks last, not first (torch.sort puts NaN on top)
    dense = MaskSet({"w": torch.ones(8, dtype=torch.bool)})
    info = drop_grow_({"w": w}, dense, 0.4, None, torch.Generator().manual_seed(0))
    assert info.dropped == {"w": 0} and dense["w"].all()


def test_redistribute_is_proportional_capped_and_exact():
    assert redistribute(10, {"a": 1.0, "b": 1.0}, {"a": 100, "b": 100}) == {"a": 5, "b": 5}
    assert redistribute(10, {"a": 3.0, "b": 1.0}, {"a": 100, "b": 100}) == {"a": 8, "b": 2}  # 7.5, 2.5: first
    # a's share (9) exceeds its room (4): it fills up, the rest goes to b and c in proportion (2:1 of 6)
    assert redistribute(10, {"a": 9.0, "b": 0.6, "c": 0.3}, {"a": 4, "b": 100, "c": 100}) == {"a": 4, "b": 4, "c": 2}
    assert redistribute(7, {"a": 0.0, "b": 0.0}, {"a": 5, "b": 5}) == {"a": 4, "b": 3}  # no signal: even split
    assert redistribute(50, {"a": 1.0, "b": 2.0}, {"a": 3, "b": 4}) == {"a": 3, "b": 4}  # more than all room
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # exact totals and caps on random cases
        n = int(torch.randint(1, 6, (1,), generator=g))
        shares = {str(i): float(torch.rand(1, generator=g)) ** 3 for i in range(n)}
        cap = {k: int(torch.randint(0, 20, (1,), generator=g)) for k in shares}
        total = int(torch.randint(0, 60, (1,), generator=g))
        out = redistribute(total, shares, cap)
        assert sum(out.values()) == min(total, sum(cap.values())) and all(0 <= out[k] <= cap[k] for k in cap)
    for args in [(-1, {"a": 1.0}, {"a": 1}), (1, {"a": float("nan")}, {"a": 1}), (1, {"a": -1.0}, {"a": 1})]:
        with pytest.raises(DrtError, match="redistribute needs"):
            redistribute(*args)


def test_grow_counts_move_weights_between_layers_by_score():
    w = {"a": torch.tensor([5.0, 4.0, 0.1, 0.0, 0.0, 0.0]), "b": torch.tensor([3.0, 0.2, 0.0, 0.0, 0.0, 0.0])}
    masks = MaskSet({"a": torch.tensor([1, 1, 1, 0, 0, 0]).bool(), "b": torch.tensor([1, 1, 0, 0, 0, 0]).bool()})
    grow = {"a": torch.tensor([0.0, 0.0, 0.0, 0.1, 0.3, 0.2]), "b": torch.tensor([0.0, 0.0, 0.9, 0.8, 0.0, 0.7])}
    seen = {}

    def counts(dropped, capacity):
        seen.update(dropped=dict(dropped), capacity=dict(capacity))
        return {"a": 0, "b": 3}

    info = drop_grow_(w, masks, 0.5, grow, torch.Generator().manual_seed(0), rounding="ceil", grow_counts=counts)
    assert seen == {"dropped": {"a": 2, "b": 1}, "capacity": {"a": 5, "b": 5}}  # ceil(1.5), ceil(1)
    assert masks["a"].tolist() == [True, False, False, False, False, False]  # 0.1 and 4.0 dropped, none grown
    assert masks["b"].tolist() == [True, False, True, True, False, True]  # 0.2 dropped; scores 0.9, 0.8, 0.7
    assert info.grown == {"a": 0, "b": 3} and masks.kept() == 5
    assert w["a"].tolist()[:3] == [5.0, 0.0, 0.0] and w["b"].tolist()[:3] == [3.0, 0.0, 0.0]
    with pytest.raises(DrtError, match="grow counts outside"):
        drop_grow_(w, masks, 0.5, grow, torch.Generator(), grow_counts=lambda d, c: {"a": 99, "b": 0})
