"""Edge-popup: straight-through score gradient, weights never trained, exact subnetwork sizes, resume, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from drt.cli import main
from drt.errors import DrtError
from drt.experiments.store import Store
from drt.methods import Driver
from drt.methods.popup import EdgePopup, PopupOptions, signed_constant
from drt.models import create
from drt.sparse import prunable
from drt.train import TrainConfig, train

from helpers import train_until

CPU = torch.device("cpu")


def _mlp(digits, seed=0):
    torch.manual_seed(seed)
    return create("mlp", digits.input_shape, digits.num_classes, hidden=[64, 32])


def _cfg(epochs=3, seed=1):
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.1, seed=seed)


def test_score_gradient_is_straight_through():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    method = EdgePopup(PopupOptions(sparsity=0.5))
    drv = Driver(method, net, lambda g: torch.optim.SGD(g, lr=0.1), batches=None, epochs=1, steps_per_epoch=1,
                 input_shape=(5,), num_classes=3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    # the reference: autograd through W0 * topk(|s|) with the top-k treated as the identity in backward
    leaves = {n: s.detach().clone().requires_grad_(True) for n, s in method.scores.items()}
    eff = {n: method.fixed[n] * (method.mask[n].float() + leaves[n].abs() - leaves[n].abs().detach())
           for n in leaves}
    out = torch.func.functional_call(net, {**dict(net.named_parameters()), **eff}, (x,))
    nn.functional.cross_entropy(out, y).backward()
    drv.loss(drv.net(x), y).backward()
    drv.after_backward()
    for n, s in method.scores.items():
        torch.testing.assert_close(s.grad, leaves[n].grad, rtol=1e-5, atol=1e-7)
        assert net.get_parameter(n).grad is None  # the weights' own gradient is dropped
    assert drv.optimizer.param_groups[0]["params"] == list(method.scores.values())  # only scores are stepped


def test_weights_are_never_trained_and_subnetworks_have_exact_sizes(digits):
    model = _mlp(digits)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = EdgePopup(PopupOptions(sparsity=0.7, popup_scale_fan=True))
    out = train(model, digits, _cfg(), method, device=CPU)
    params = dict(out.model.named_parameters())
    for n, p in params.items():
        if n in method.fixed:  # W0 = ±gain/sqrt(fan_in * the layer's kept fraction), signs of the init; masked
            w0 = signed_constant(init[n], method.mask.density(n))
            assert torch.equal(method.fixed[n], w0) and torch.equal(p.detach(), w0 * method.mask[n])
            assert int(method.mask[n].sum()) == math.floor(0.3 * p.numel() + 0.5)  # uniform: top-k per layer
            assert torch.equal(method.mask[n], method.scores[n].detach().abs() >= method.scores[n].detach().abs()
                               [method.mask[n]].min())  # the kept weights are those of the largest |score|
        else:
            assert torch.equal(p.detach(), init[n]), n  # biases: bit-identical to their initial value
    assert out.final["test_acc"] > 0.85  # a random net holds a good subnetwork
    n_scores = sum(p.numel() for p in prunable(out.model).values())
    assert out.final["scores_trained"] == n_scores == out.final["params_trainable"]
    assert out.final["sparsity_achieved"] == pytest.approx(0.7, abs=1e-3)
    assert out.final["flops_effective"] < 0.35 * out.final["flops"]


def test_resume_matches_uninterrupted_run(digits, tmp_path):
    full_method = EdgePopup(PopupOptions(sparsity=0.5))
    full = train(_mlp(digits), digits, _cfg(epochs=3), full_method, device=CPU)
    ckpt = tmp_path / "ck.pt"

    train_until(1, _mlp(digits), digits, _cfg(epochs=3), EdgePopup(PopupOptions(sparsity=0.5)), device=CPU,
                checkpoint=ckpt)
    method = EdgePopup(PopupOptions(sparsity=0.5))
    resumed = train(_mlp(digits, seed=9), digits, _cfg(epochs=3), method, device=CPU, checkpoint=ckpt, resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert all(torch.equal(method.scores[n], s) for n, s in full_method.scores.items())
    assert method.mask == full_method.mask


def test_default_signed_constant_is_unscaled(digits):
    model = _mlp(digits)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = EdgePopup()  # k = 0.5, no scale_fan: the paper's main setting
    Driver(method, model, lambda g: torch.optim.SGD(g, lr=0.1), batches=None, epochs=1, steps_per_epoch=1,
           input_shape=digits.input_shape, num_classes=digits.num_classes)
    for n, w0 in method.fixed.items():
        fan_in = init[n].shape[1]
        assert torch.equal(w0.abs().unique(), torch.tensor([math.sqrt(2 / fan_in)]))
        assert torch.equal(w0.sign(), init[n].sign())


def test_bad_input():
    with pytest.raises(DrtError, match="popup_weights must be one of signed-constant, init"):
        PopupOptions(popup_weights="kaiming")
    with pytest.raises(DrtError, match=r"sparsity must be in \[0, 1\)"):
        PopupOptions(sparsity=1.0)
    with pytest.raises(DrtError, match="no conv or linear weights"):
        Driver(EdgePopup(), nn.Sequential(nn.BatchNorm1d(3)), lambda g: torch.optim.SGD(g, lr=0.1), batches=None,
               epochs=1, steps_per_epoch=1, input_shape=(3,), num_classes=3)


def test_cli_trains_and_records(capsys, results):
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--no-progress",
            "--method", "edge-popup", "--sparsity", "0.5", "--results-dir", str(results)]
    assert main(argv) == 0, capsys.readouterr().err
    (run,) = Store(results / "drt.sqlite").runs()
    m = run["metrics"]
    assert m["scores_trained"] == m["params_trainable"] and m["sparsity_achieved"] == pytest.approx(0.5, abs=1e-3)
    assert main([*argv[:-4], "--method", "edge-popup", "--popup-weights", "x", "--results-dir", str(results)]) == 2
    assert "invalid choice: 'x'" in capsys.readouterr().err
