"""MaskSet: selection, in-place application to weights / grads / optimizer state, persistence, export."""

import pytest
import torch
from torch import nn

from drt.errors import DrtError
from drt.sparse import MaskSet, masks_from_scores, prunable, random_scores


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def random_masks(model: nn.Module, sparsity: float = 0.8, seed: int = 0) -> MaskSet:
    scores = random_scores(prunable(model), torch.Generator().manual_seed(seed))
    return masks_from_scores(scores, sparsity, "erk")[0]


def test_prunable_selection():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(2, 3, 3)
            self.c3 = nn.Conv3d(3, 3, 1)
            self.bn = nn.BatchNorm3d(3)
            self.block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
            self.head = nn.Linear(4, 2, bias=False)
            self.tied = self.head  # tied modules appear once

    net = Net()
    assert list(prunable(net)) == ["c1.weight", "c3.weight", "block.0.weight", "head.weight"]
    assert list(prunable(net, include_bias=True)) == [
        "c1.weight", "c1.bias", "c3.weight", "c3.bias", "block.0.weight", "block.0.bias", "head.weight"]
    assert "bn.weight" in prunable(net, include_bn=True) and "block.1.weight" not in prunable(net, include_bn=True)
    assert list(prunable(net, exclude=["head.*", "c1.weight"])) == ["c3.weight", "block.0.weight"]
    assert prunable(net)["head.weight"] is net.head.weight


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adagrad (generic state)": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "rmsprop (generic state)": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9),
}


def _train(model, opt, masks, steps, apply_state=True):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if masks is not None:
            masks.mask_grads_(model)
        opt.step()
        if masks is not None:
            masks.apply_(model, opt if apply_state else None)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_weights_and_state_stay_zero(name):
    model = small_net()
    opt = OPTIMIZERS[name](model.parameters())
    _train(model, opt, None, 3)  # dense steps first: the optimizer state is non-zero everywhere
    masks = random_masks(model)
    before = {n: p.detach().clone() for n, p in prunable(model).items()}
    masks.apply_(model, opt)
    _train(model, opt, masks, 50)
    params = prunable(model)
    for n, m in masks.items():
        p = params[n]
        assert torch.all(p[~m] == 0), n
        assert not torch.equal(p[m], before[n][m]), f"{n}: active weights did not train"
        per_weight = [t for t in opt.state[p].values() if torch.is_tensor(t) and t.shape == p.shape]
        assert per_weight, "optimizer keeps per-weight state"
        for t in per_weight:
            assert torch.all(t[~m] == 0), n


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adamw"])
def test_stale_state_would_revive_weights(name):
    """Control for the test above: masking weights but not optimizer state lets pruned weights move."""
    model = small_net()
    opt = OPTIMIZERS[name](model.parameters())
    _train(model, opt, None, 3)
    masks = random_masks(model)
    masks.apply_(model)
    _train(model, opt, masks, 1, apply_state=False)
    p, m = model[0].weight, masks["0.weight"]
    opt.step()  # one more step without re-applying: stale momentum moves pruned weights
    assert torch.any(p[~m] != 0)


def test_unmaskable_optimizer_state_raises():
    class Factored(torch.optim.Optimizer):  # Adafactor-like: row statistics, not the parameter's shape
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["row"] = torch.zeros(p.shape[0] + 1)

    model = small_net()
    opt = Factored(model.parameters())
    opt.step()
    with pytest.raises(DrtError, match="'row' of Factored"):
        random_masks(model).apply_(model, opt)


def test_mask_grads_and_validation():
    model = small_net()
    masks = random_masks(model)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 6, 6)), torch.tensor([0, 1, 2, 3])).backward()
    masks.mask_grads_(model)
    for n, p in prunable(model).items():
        assert torch.all(p.grad[~masks[n]] == 0) and torch.any(p.grad[masks[n]] != 0)
    assert model[0].bias.grad.abs().sum() > 0  # unmasked tensors untouched
    with pytest.raises(DrtError, match="bool"):
        MaskSet({"0.weight": torch.ones(8, 3, 3, 3)})
    with pytest.raises(DrtError, match="not in model"):
        MaskSet({"nope.weight": torch.ones(2, dtype=torch.bool)}).apply_(model)
    with pytest.raises(DrtError, match="shape"):
        masks["0.weight"] = torch.ones(3, dtype=torch.bool)


def test_density_report_and_checksum():
    masks = MaskSet({"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, False]])})
    assert masks.kept() == 4 and masks.numel() == 8 and masks.density() == 0.5 and masks.sparsity() == 0.5
    assert masks.density("a") == 0.25 and masks.sparsity("b") == 0.25
    rows = masks.report({"a": 0.25, "b": 0.75}, guarded=["a"])
    assert rows[0] == {"name": "a", "numel": 4, "kept": 1, "target": 0.25, "achieved": 0.25, "guard": True}
    assert rows[-1] == {"name": "overall", "numel": 8, "kept": 4, "target": 0.5, "achieved": 0.5, "guard": True}
    rows = masks.report({"a": None, "b": 0.75})  # global allocations have no per-layer target
    assert rows[-1]["target"] is None and rows[1]["target"] == 0.75
    text = MaskSet.format_report(masks.report(overall_target=0.5, guarded=["a"]))
    assert text.splitlines()[-1].split()[:5] == ["overall", "8", "4", "50.00", "50.00"] and "FIRED" in text
    same = MaskSet({n: m.clone() for n, m in masks.items()})
    assert same == masks and same.checksum() == masks.checksum()
    flipped = MaskSet({"a": torch.tensor([False, True, False, False]), "b": masks["b"]})
    assert flipped != masks and flipped.checksum() != masks.checksum()
    assert 0 <= masks.checksum() < 2**63


def test_state_dict_roundtrip_weights_only(tmp_path):
    model = small_net()
    masks = random_masks(model)
    torch.save({"masks": masks.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["masks"]
    assert MaskSet(loaded) == masks
    other = random_masks(model, seed=5)
    assert other != masks
    other.load_state_dict(loaded)
    assert other == masks and other.checksum() == masks.checksum()
    with pytest.raises(DrtError, match="expected"):
        other.load_state_dict({"x": torch.ones(1, dtype=torch.bool)})


def test_compact_export_roundtrip(tmp_path):
    model = small_net()
    masks = random_masks(model, 0.9)
    masks.apply_(model)
    model.train()(torch.randn(16, 3, 6, 6))  # non-trivial BN running stats
    model.eval()
    compact = masks.to_compact(model)
    stored = sum(e["value"].numel() for e in compact["sparse"].values())
    assert stored == masks.kept()
    torch.save(compact, tmp_path / "sparse.pt")
    loaded = torch.load(tmp_path / "sparse.pt", weights_only=True)
    torch.manual_seed(123)
    fresh = small_net().eval()
    for p in fresh.parameters():
        nn.init.normal_(p)
    restored = MaskSet.from_compact(fresh, loaded)
    assert restored == masks
    x = torch.randn(5, 3, 6, 6)
    assert torch.equal(fresh(x), model(x))
    zeroed = masks.apply_to_state_dict({n: torch.ones_like(t) for n, t in model.state_dict().items()})
    assert int(zeroed["0.weight"].sum()) == masks.kept("0.weight")
    with pytest.raises(DrtError, match="format"):
        MaskSet.from_compact(fresh, {"dense": {}})


def test_flop_counts_weight_masked_layers_by_density():
    from drt.analysis.cost import flop_counts

    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    dense = 2 * 10 * 20 + 2 * 20 * 5  # one sample: a multiply and an add per weight
    mask = torch.zeros(20, 10, dtype=torch.bool)
    mask[:, :3] = True  # 30% of the first layer kept
    assert flop_counts(model, (10,)) == (dense, dense)
    assert flop_counts(model, (10,), {"0.weight": mask}) == (dense, dense - round(0.7 * 2 * 10 * 20))
