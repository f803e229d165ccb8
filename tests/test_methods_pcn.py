"""PCN as a training method: transform timing, optimizer rebuild, schedule, resume, composition."""

from __future__ import annotations

import pytest
import torch

from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.methods.cka_sr import CKASR, CKASROptions
from drt.methods.dense import Dense
from drt.methods.pcn import PCN, PCNOptions
from drt.models import create
from drt.pcn import parse_keep, pcn_layers
from drt.train import TrainConfig, train

from helpers import train_until

CPU = torch.device("cpu")


def _model(data, seed=0):
    torch.manual_seed(seed)
    return create("conv4", data.input_shape, data.num_classes, width=8)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 4, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-3, **kw})


def test_transform_after_epoch_keeps_schedule_and_freezes_basis(digits):
    pcn = PCN(PCNOptions(pcn_epoch="2", pcn_keep="0.9"))
    out = train(_model(digits), digits, _cfg(), pcn, device=CPU)
    dense = train(_model(digits), digits, _cfg(), Dense(), device=CPU)
    assert [h.get("pcn_transform") for h in out.history] == [None, 2, None, None]
    assert [h["lr"] for h in out.history] == [h["lr"] for h in dense.history]  # absolute-epoch schedule
    layers = pcn_layers(out.model)
    assert layers and "conv1" not in layers  # the first layer is never transformed by default
    assert out.final["params_trainable"] < dense.final["params_trainable"]
    assert out.final["params_frozen"] == sum(m.drt_frozen_numel() for m in layers.values())
    # V and mu are buffers: not trained, untouched by weight decay in the epochs after the transform
    # (constant LR so that the first two epochs of a 3-epoch and a 4-epoch run are identical)
    opts = PCNOptions(pcn_epoch="2", pcn_keep="0.9")
    longer = train(_model(digits), digits, _cfg(schedule="constant"), PCN(opts), device=CPU)
    layers = pcn_layers(longer.model)
    shorter = train(_model(digits), digits, _cfg(epochs=3, schedule="constant"), PCN(opts), device=CPU)
    for name, m in layers.items():
        assert {n for n, _ in m.named_parameters()} == {"weight", "bias"}
        other = pcn_layers(shorter.model)[name]
        assert torch.equal(m.basis, other.basis) and torch.equal(m.mu, other.mu), name
        assert not torch.equal(m.weight, other.weight), name  # while W' did train
    assert out.final["pcn_epoch"] == 2
    # costs: the transformed model's step time; the statistics pass and surgery counted as method time
    assert [bool(h.get("rebuilt")) for h in out.history] == [False, True, False, False]
    assert out.final["step_time"] == pytest.approx(sum(h["step_time"] for h in out.history[2:]) / 2)
    assert out.history[1]["method_time"] > 0 and out.final["method_time"] >= out.history[1]["method_time"]
    steps = sum(h["train_time"] for h in out.history)
    assert out.final["train_time"] == pytest.approx(steps + out.final["method_time"])


def test_resume_after_transform_is_identical(digits, tmp_path):
    opts = PCNOptions(pcn_epoch="1", pcn_keep="0.9", pcn_output=True)
    full = train(_model(digits), digits, _cfg(), PCN(opts), device=CPU)
    ckpt = tmp_path / "ck.pt"

    train_until(2, _model(digits), digits, _cfg(), PCN(opts), device=CPU, checkpoint=ckpt)
    resumed = train(_model(digits, seed=5), digits, _cfg(), PCN(opts), device=CPU, checkpoint=ckpt, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["test_acc"] for h in full.history] == [h["test_acc"] for h in resumed.history]


def test_auto_epoch_transforms_when_subspaces_settle(digits):
    pcn = PCN(PCNOptions(pcn_epoch="auto", pcn_auto_overlap=0.5, pcn_keep="0.9"))
    out = train(_model(digits), digits, _cfg(epochs=5), pcn, device=CPU)
    assert out.final["pcn_epoch"] == 2  # first overlap is measured after epoch 2 and exceeds 0.5
    assert 0.5 <= out.history[1]["pcn_overlap"] <= 1.0 + 1e-9


def test_auto_epoch_with_per_layer_keep_measures_only_the_named_layers(digits):
    pcn = PCN(PCNOptions(pcn_epoch="auto", pcn_auto_overlap=0.2, pcn_keep="fc2=8"))
    out = train(_model(digits), digits, _cfg(epochs=6), pcn, device=CPU)  # latest: epoch 3
    assert out.final["pcn_epoch"] == 2 and 0.2 <= out.history[1]["pcn_overlap"] <= 1.0 + 1e-9
    assert list(pcn_layers(out.model)) == ["fc2"]


def test_latest_epoch_bounds_auto(digits):
    pcn = PCN(PCNOptions(pcn_epoch="auto", pcn_auto_overlap=1.0, pcn_auto_latest=3, pcn_keep="0.9"))
    out = train(_model(digits), digits, _cfg(epochs=5), pcn, device=CPU)
    assert out.final["pcn_epoch"] == 3


def test_composes_with_cka_sr(digits):
    reg = CKASR(CKASROptions(cka_every=1))
    out = train(_model(digits), digits, _cfg(epochs=3), PCN(PCNOptions(pcn_epoch="1")), [reg], device=CPU)
    assert all("cka_sr" in h for h in out.history)  # hooks re-attached to the transformed model
    assert out.history[-1]["cka_sr"] != out.history[0]["cka_sr"]


def test_keep_parsing():
    assert parse_keep("all") == "all" and parse_keep("64") == 64 and parse_keep("0.99") == 0.99
    assert parse_keep("conv8=64, fc=0.9") == {"conv8": 64, "fc": 0.9}
    with pytest.raises(DrtError):
        parse_keep("lots")


@pytest.mark.parametrize("values, message", [
    ({"pcn_epoch": "0"}, "pcn_epoch must be a positive integer or 'auto'"),
    ({"pcn_epoch": "soon"}, "pcn_epoch"),
    ({"pcn_keep": "x=y"}, "keep rule"),
    ({"sparsity": 0.9}, "do not apply to method 'pcn'"),  # PCN + a sparse mask: refused
    ({"pcn_keep": "0"}, "an int k must be >= 1"),
    ({"pcn_keep": "1.5"}, r"variance fraction in \(0, 1\]"),
    ({"pcn_keep": "fc1=0"}, "an int k must be >= 1"),
    ({"pcn_width_fraction": 1.5}, "pcn_width_fraction must be in"),
    ({"pcn_budget": 2.5}, "pcn_budget must be a fraction"),
    ({"pcn_output_keep": 1.5}, "pcn_output_keep must be"),
    ({"pcn_auto_latest": 0}, "pcn_auto_latest must be >= 1"),
])
def test_bad_options(values, message):
    with pytest.raises(DrtError, match=message):
        make_config({"method": "pcn", **values})


@pytest.mark.parametrize("options, message", [
    ({"pcn_keep": "nope*=8"}, "pcn_keep: 'nope\\*' matches no eligible layer"),
    ({"pcn_exclude": ("fc9",)}, "pcn_exclude: 'fc9' matches no eligible layer"),
    ({"pcn_keep": "fc2=999"}, "pcn keep 999 for layer 'fc2' exceeds its input width"),
    ({"pcn_epoch": "auto", "pcn_auto_latest": 3}, "pcn_auto_latest 3 must be before the last epoch"),
])
def test_layer_rules_are_checked_before_training(digits, options, message):
    epochs = []
    with pytest.raises(DrtError, match=message):
        train(_model(digits), digits, _cfg(epochs=3), PCN(PCNOptions(**options)), device=CPU,
              on_epoch=epochs.append)
    assert epochs == []


def test_output_transform_on_an_unsupported_graph_fails_before_training(digits):
    torch.manual_seed(0)
    model = create("resnet20", digits.input_shape, digits.num_classes, width=4, shortcut="pad")
    epochs = []
    with pytest.raises(DrtError, match="--pcn-output cannot narrow the input channels of layer 'layer1.0.conv1'"):
        train(model, digits, _cfg(epochs=3), PCN(PCNOptions(pcn_output=True)), device=CPU, on_epoch=epochs.append)
    assert epochs == []


def test_transform_epoch_must_precede_the_end(digits):
    with pytest.raises(DrtError, match="before the last epoch"):
        train(_model(digits), digits, _cfg(epochs=2), PCN(PCNOptions(pcn_epoch="2")), device=CPU)


def test_bad_k_is_a_clear_error(digits):
    with pytest.raises(DrtError, match="k"):
        train(_model(digits), digits, _cfg(epochs=2), PCN(PCNOptions(pcn_epoch="1", pcn_keep="100000")), device=CPU)


def test_a_k_beyond_a_layer_width_is_refused_before_training(digits):
    seen = []
    with pytest.raises(DrtError, match=r"number of components k must be an int in \[1, \d+\]; got 100000"):
        train(_model(digits), digits, _cfg(), PCN(PCNOptions(pcn_epoch="2", pcn_keep="100000")), device=CPU,
              on_epoch=seen.append)
    assert seen == []  # not after an epoch of training
