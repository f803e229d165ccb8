"""The CKA-SR regulariser as a plug-in of the loop (maths is tested in test_cka.py)."""

from __future__ import annotations

import pytest
import torch

from drt.cka import cka_sr_loss
from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.methods.base import TrainState
from drt.methods.cka_sr import CKASR, CKASROptions
from drt.methods.dense import Dense
from drt.models import create
from drt.train import TrainConfig, train


def _state(model):
    return TrainState(model=model, optimizer=None, loss_fn=torch.nn.functional.cross_entropy,
                      device=torch.device("cpu"), input_shape=(3, 32, 32), num_classes=10, epochs=1,
                      steps_per_epoch=10, seed=0)


def test_term_equals_beta_times_stage_sum_on_resnet_blocks():
    torch.manual_seed(0)
    model = create("resnet20", (3, 32, 32), 10)
    reg = CKASR(CKASROptions(cka_beta=0.5, cka_samples=8, cka_every=1))
    state = _state(model)
    reg.attach(state)
    assert reg.stages == [[f"layer{s}.{b}" for b in range(3)] for s in (1, 2, 3)]
    feats = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))
             for s in reg.stages for n in s]
    out = model(torch.randn(12, 3, 32, 32))
    expected = 0.5 * cka_sr_loss([[feats[n] for n in s] for s in reg.stages], 8)
    got = reg.extra_loss(state, out)
    assert torch.allclose(got, expected, rtol=1e-12) and got.requires_grad
    assert -9 <= float(got.detach()) / 0.5 <= 27  # per stage: 3 diagonal ones + 6 CKAs in [-1, 1]
    for h in hooks:
        h.remove()


def test_added_only_every_m_batches_and_changes_training(digits):
    state = _state(create("mlp", digits.input_shape, 10))
    reg = CKASR(CKASROptions(cka_every=3))
    reg.attach(state)
    calls = []
    for step in range(6):
        state.step = step
        out = state.model(digits.x_train[:16])
        calls.append(reg.extra_loss(state, out) is not None)
    assert calls == [True, False, False, True, False, False]

    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05)

    def fit(beta):
        torch.manual_seed(0)
        m = create("mlp", digits.input_shape, 10)
        regs = [CKASR(CKASROptions(cka_beta=beta, cka_every=1))]
        return train(m, digits, cfg, Dense(), regs, device=torch.device("cpu"))

    a, b = fit(0.0), fit(0.1)
    assert "cka_sr" in b.history[0] and "cka_sr" not in a.history[0]
    assert not torch.equal(a.model.fc1.weight, b.model.fc1.weight)


def test_a_batch_too_small_for_the_estimator_is_skipped_and_a_silent_layer_named(digits):
    state = _state(create("mlp", digits.input_shape, 10))
    reg = CKASR(CKASROptions(cka_every=1))
    reg.attach(state)
    assert reg.extra_loss(state, state.model(digits.x_train[:3])) is None  # a short last batch: no term
    assert reg.extra_loss(state, state.model(digits.x_train[:4])) is not None
    reg.hooks.clear()
    with pytest.raises(DrtError, match="did not run in the forward pass"):
        reg.extra_loss(state, None)


@pytest.mark.parametrize("values, message", [
    ({"cka_beta": -1e-4}, "cka_beta must be >= 0"),
    ({"cka_samples": 3}, "at least 4"),
    ({"cka_every": 0}, "cka_every must be >= 1"),
])
def test_bad_options(values, message):
    with pytest.raises(DrtError, match=message):
        make_config({"reg": "cka-sr", **values})


def test_unknown_feature_layer_lists_valid_names():
    reg = CKASR(CKASROptions(cka_layers=("fc1", "nope")))
    with pytest.raises(DrtError, match="nope.*valid names"):
        reg.attach(_state(create("mlp", (1, 8, 8), 10)))


def test_cka_options_need_the_regulariser():
    with pytest.raises(DrtError, match="do not apply"):
        make_config({"cka_beta": 1e-3})
