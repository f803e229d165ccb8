"""Peers through our loop: Torch-Pruning channel pruning (tp-channel) and torch.nn.utils.prune (torch-prune)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from drt.data import load
from drt.errors import DrtError
from drt.methods import Driver
from drt.methods.dense import Dense
from drt.methods.prune_at_init import MagnitudePrune
from drt.methods.sparse_base import SparseOptions
from drt.methods.torch_prune import TorchPrune, TorchPruneOptions
from drt.methods.tp_channel import TPChannel, TPChannelOptions, prune_channels, replay_, trainable, widths
from drt.models import create
from drt.train import TrainConfig, train

from helpers import stop_at, train_until

CPU = torch.device("cpu")


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, **kw})


@pytest.fixture(scope="module")
def mnist_small():
    return load("mnist5k", subset=600)


def _model(name, data, seed=0, **kw):
    torch.manual_seed(seed)
    return create(name, data.input_shape, data.num_classes, **kw)


class Snapshot(TPChannel):
    """tp-channel that keeps a copy of the network it hands to the loop."""

    def epoch_end(self, state):
        new = super().epoch_end(state)
        if new is not None:
            self.snapshot = copy.deepcopy(new)
        return new


# --- tp-channel ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kw", "data_name"), [
    ("vgg11", {"width": 4}, "digits"), ("resnet20", {"width": 4}, "digits"),
    ("lenet5", {}, "mnist_small"), ("mlp", {}, "digits"), ("conv4", {"width": 4}, "digits"),
])
def test_tp_channel_reaches_target_and_keeps_training(name, kw, data_name, request):
    data = request.getfixturevalue(data_name)
    dense = _model(name, data, **kw)
    n_dense, before = trainable(dense), widths(dense)
    method = Snapshot(TPChannelOptions(tp_target=0.3))
    out = train(dense, data, _cfg(), method, device=CPU)
    f = out.final
    assert f["tp_target"] == round(0.3 * n_dense) and f["params_dense"] == n_dense
    assert abs(f["tp_achieved"] / f["tp_target"] - 1) <= 0.02
    assert f["params_trainable"] == f["tp_achieved"] == trainable(out.model)  # physically smaller, no mask
    assert f["params_masked"] == 0 and f["params_frozen"] == 0
    after = widths(out.model)
    assert f["channels"] == {k: [before[k], after[k]] for k in before}
    last = list(before)[-1]
    assert after[last] == before[last] == data.num_classes  # the classifier keeps its outputs
    assert sum(after.values()) < sum(before.values())
    assert [h.get("tp_prune") for h in out.history] == [1, None]
    if name == "resnet20":  # the LR schedule continues at absolute epochs, as for dense training
        ref = train(_model(name, data, **kw), data, _cfg(), Dense(), device=CPU)
        assert [h["lr"] for h in out.history] == [h["lr"] for h in ref.history]
    # the loop rebuilt the optimizer over the pruned net, which trained on: same shapes, new values
    pruned, final = method.snapshot.state_dict(), out.model.state_dict()
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in final.items()}
    assert not torch.equal(pruned[f"{last}.weight"], final[f"{last}.weight"])


def test_tp_channel_prunes_the_smallest_channels_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for unit in (2, 5):  # two hidden units with zero in- and out-weights: the least important
            model[0].weight[unit] = 0
            model[0].bias[unit] = 0
            model[2].weight[:, unit] = 0
    small, history = prune_channels(model, (5,), 0.25)
    assert history == [["0", True, [2, 5]]]
    assert widths(small) == {"0": 6, "2": 3} and widths(model) == {"0": 8, "2": 3}  # a copy; input untouched
    x = torch.randn(4, 5)
    torch.testing.assert_close(small(x), model(x))  # the removed units contributed nothing
    rebuilt = replay_(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), (5,), history)
    rebuilt.load_state_dict(small.state_dict())
    torch.testing.assert_close(rebuilt(x), small(x))


def test_tp_channel_resume_rebuilds_the_pruned_architecture(digits, tmp_path):
    opts = TPChannelOptions(tp_target=0.4, tp_epoch=1)
    cfg = _cfg(epochs=3)
    full = train(_model("resnet20", digits, width=4), digits, cfg, TPChannel(opts), device=CPU)
    ckpt = tmp_path / "ck.pt"
    train_until(2, _model("resnet20", digits, width=4), digits, cfg, TPChannel(opts), device=CPU, checkpoint=ckpt)
    at_stop = torch.load(ckpt, weights_only=True)["model"]
    resumed = train(_model("resnet20", digits, seed=7, width=4), digits, cfg, TPChannel(opts), device=CPU,
                    checkpoint=ckpt, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["test_acc"] for h in full.history] == [h["test_acc"] for h in resumed.history]
    assert resumed.final["channels"] == full.final["channels"]
    # the pruned net (pruned after epoch 1, saved after epoch 2) trained on in epoch 3
    assert at_stop.keys() == a.keys() and not torch.equal(at_stop["fc.weight"], a["fc.weight"])


@pytest.mark.parametrize(("norm", "global_"), [(2, True), (1, False)])
def test_tp_channel_global_ranking_and_l1(digits, norm, global_):
    opts = TPChannelOptions(tp_target=0.2, tp_global=global_, tp_norm=norm)
    out = train(_model("mlp", digits), digits, _cfg(), TPChannel(opts), device=CPU)
    assert abs(out.final["tp_error"]) <= 0.02 and out.final["params_trainable"] == out.final["tp_achieved"]


def test_tp_channel_at_init_and_absolute_target(digits):
    model = _model("mlp", digits)
    out = train(model, digits, _cfg(epochs=1), TPChannel(TPChannelOptions(tp_epoch=0, tp_target=12000)),
                device=CPU)
    assert out.final["tp_epoch"] == 0 and out.final["tp_target"] == 12000
    assert abs(out.final["params_trainable"] - 12000) <= 240


@pytest.mark.parametrize(("name", "kw", "opts", "match"), [
    ("resnet20", {"width": 4, "shortcut": "pad"}, {}, r"Torch-Pruning cannot prune resnet20 .*supported: "),
    ("mlp", {}, {"tp_target": 60000}, r"target 60,000 .* below the dense 50,610"),
    ("mlp", {}, {"tp_target": 20}, r"nearest channel-pruned count is .* from the target 20 "),
    ("mlp", {}, {"tp_epoch": 2}, r"tp_epoch 2 must be before the last epoch \(2\)"),
])
def test_tp_channel_refuses_before_training(digits, name, kw, opts, match):
    model = _model(name, digits, **kw)
    with pytest.raises(DrtError, match=match) as err:
        train(model, digits, _cfg(), TPChannel(TPChannelOptions(**opts)), device=CPU,
              on_epoch=stop_at(1))  # an error must come from setup, not after an epoch
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("opts", "match"), [
    ({"tp_norm": 3}, "tp_norm must be 1 or 2"), ({"tp_target": 0}, "tp_target"), ({"tp_epoch": -1}, "tp_epoch")])
def test_tp_channel_options_validated(opts, match):
    with pytest.raises(DrtError, match=match):
        TPChannelOptions(**opts)


# --- torch-prune -----------------------------------------------------------------------------------

def test_torch_prune_matches_magnitude_and_keeps_masked_weights_zero(digits):
    model = _model("mlp", digits)
    method = TorchPrune(TorchPruneOptions(sparsity=0.5))
    drv = Driver(method, model, lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9), batches=None, epochs=1,
                 steps_per_epoch=3, input_shape=digits.input_shape, num_classes=digits.num_classes,
                 weight_decay=5e-4)
    ours = MagnitudePrune(SparseOptions(sparsity=0.5))
    ref = _model("mlp", digits)
    Driver(ours, ref, lambda g: torch.optim.SGD(g, lr=0.05), batches=None, epochs=1, steps_per_epoch=1,
           input_shape=digits.input_shape, num_classes=digits.num_classes)
    masks = method.masks()
    assert list(masks) == ["fc1.weight_orig", "fc2.weight_orig", "fc3.weight_orig"]
    for name, m in masks.items():  # torch's global L1 rule = our global magnitude rule
        assert torch.equal(m, ours.masks()[name.replace("_orig", "")]), name
    numel = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == numel - round(0.5 * numel)
    orig0 = {n: model.get_submodule(n).weight_orig.detach().clone() for n in ("fc1", "fc2", "fc3")}
    x, y = digits.x_train[:64], digits.y_train[:64]
    for _ in range(3):
        loss = drv.loss(drv.model(x), y)
        drv.optimizer.zero_grad()
        loss.backward()
        drv.step()
    for n in ("fc1", "fc2", "fc3"):
        layer, kept = model.get_submodule(n), masks[f"{n}.weight_orig"]
        assert (layer.weight[~kept] == 0).all()  # the effective weight, weight_orig * weight_mask
        assert not torch.equal(layer.weight_orig[kept], orig0[n][kept])  # kept weights trained


def test_torch_prune_accounting_and_resume(digits, tmp_path):
    opts = TorchPruneOptions(sparsity=0.8)
    cfg = _cfg(epochs=3)
    full = train(_model("mlp", digits), digits, cfg, TorchPrune(opts), device=CPU)
    f = full.final
    numel = sum(m.numel() for m in full.model.modules() if isinstance(m, nn.Linear) for m in [m.weight])
    masked = round(0.8 * numel)
    assert f["params_masked"] == masked and f["prunable_params"] == numel
    assert f["params_trainable"] == f["params_total"] - masked
    assert f["sparsity_achieved"] == pytest.approx(masked / numel, abs=1e-12)
    assert abs(f["sparsity_achieved"] - 0.8) <= 1 / numel
    assert f["flops_effective"] < f["flops"]
    # global L1 at init empties fc2 (fan-in 300: the smallest init scale), the collapse drt's guard prevents
    assert f["collapsed"] == ["fc2.weight"]
    # made permanent after the last epoch: plain weights, zero where masked
    keys = set(full.model.state_dict())
    assert "fc1.weight" in keys and not any("_orig" in k or "_mask" in k for k in keys)
    zeros = sum(int((m.weight == 0).sum()) for m in full.model.modules() if isinstance(m, nn.Linear))
    assert zeros >= masked
    ckpt = tmp_path / "ck.pt"
    train_until(1, _model("mlp", digits), digits, cfg, TorchPrune(opts), device=CPU, checkpoint=ckpt)
    assert any(k.endswith("weight_orig") for k in torch.load(ckpt, weights_only=True)["model"])
    resumed = train(_model("mlp", digits, seed=3), digits, cfg, TorchPrune(opts), device=CPU, checkpoint=ckpt,
                    resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.final["params_masked"] == masked

