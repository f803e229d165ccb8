"""Random-subspace training: the projection, the exact gradient of φ, θ - θ₀ in span(P), resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from drt.cli import main
from drt.errors import DrtError
from drt.methods import Driver
from drt.methods.subspace import Subspace, SubspaceOptions, sparse_projection
from drt.models import create
from drt.train import TrainConfig, train

from helpers import train_until

CPU = torch.device("cpu")


def _mlp(digits, seed=0):
    torch.manual_seed(seed)
    return create("mlp", digits.input_shape, digits.num_classes, hidden=[64, 32])


def _cfg(epochs=3):
    return TrainConfig(epochs=epochs, batch_size=64, lr=1.0, seed=1)  # a step in φ moves θ by ~d/N of one


def test_sparse_projection_has_unit_columns_and_the_asked_density():
    p = sparse_projection(10_000, 50, 0.01, torch.Generator().manual_seed(0))
    dense = p.to_dense()
    torch.testing.assert_close(dense.norm(dim=0), torch.ones(50))
    per_column = (dense != 0).sum(0)
    assert per_column.max() <= 100 and per_column.min() >= 95  # 100 draws with replacement, few repeats
    assert torch.equal(dense, sparse_projection(10_000, 50, 0.01, torch.Generator().manual_seed(0)).to_dense())


def test_phi_gradient_is_the_projected_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    method = Subspace(SubspaceOptions(subspace_dim=7, subspace_density=0.3))
    drv = Driver(method, net, lambda g: torch.optim.SGD(g, lr=0.1), batches=None, epochs=1, steps_per_epoch=1,
                 input_shape=(5,), num_classes=3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    phi = torch.randn(7, requires_grad=True)  # the reference: autograd through θ₀ + Pφ
    theta = method.theta0 + torch.sparse.mm(method.proj, phi.unsqueeze(1)).squeeze(1)
    named, offset, params = dict(net.named_parameters()), 0, {}
    for name, p in named.items():
        params[name] = theta[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    nn.functional.cross_entropy(torch.func.functional_call(net, params, (x,)), y).backward()
    with torch.no_grad():
        method.phi.copy_(phi)
        method.after_step(drv.state)  # the model now holds θ₀ + Pφ
    drv.loss(drv.net(x), y).backward()
    drv.after_backward()
    torch.testing.assert_close(method.phi.grad, phi.grad, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in net.parameters())
    assert drv.optimizer.param_groups[0]["params"] == [method.phi]


def test_training_stays_in_the_subspace_and_learns(digits):
    model = _mlp(digits)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    method = Subspace(SubspaceOptions(subspace_dim=1000))
    out = train(model, digits, _cfg(), method, device=CPU)
    moved = torch.nn.utils.parameters_to_vector(out.model.parameters()).detach() - theta0
    torch.testing.assert_close(moved, torch.sparse.mm(method.proj, method.phi.detach().unsqueeze(1)).squeeze(1))
    assert moved.abs().max() > 0 and out.final["test_acc"] > 0.8  # 1000 of 50,610 directions suffice here
    n = theta0.numel()
    assert out.final["params_trainable"] == 1000 and out.final["params_total"] == n + 1000
    assert out.final["params_stored"] == 1001
    assert out.final["projection_nonzeros"] <= 1000 * math.ceil(math.sqrt(n))


def test_resume_matches_uninterrupted_run(digits, tmp_path):
    full_method = Subspace(SubspaceOptions(subspace_dim=200))
    full = train(_mlp(digits), digits, _cfg(), full_method, device=CPU)
    ckpt = tmp_path / "ck.pt"
    train_until(1, _mlp(digits), digits, _cfg(), Subspace(SubspaceOptions(subspace_dim=200)), device=CPU,
                checkpoint=ckpt)
    method = Subspace(SubspaceOptions(subspace_dim=200))
    resumed = train(_mlp(digits, seed=9), digits, _cfg(), method, device=CPU, checkpoint=ckpt, resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(method.phi, full_method.phi)


def test_bad_input(capsys, tmp_path):
    for kwargs, message in [({"subspace_dim": 0}, "subspace_dim must be a positive integer"),
                            ({"subspace_density": 1.5}, r"subspace_density must be in \(0, 1\]")]:
        with pytest.raises(DrtError, match=message):
            SubspaceOptions(**kwargs)
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--hidden", "8", "--epochs", "1", "--no-progress",
            "--method", "subspace", "--subspace-dim", "100000", "--results-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "subspace_dim 100000 must be below the model's 610 parameters" in err[0]
