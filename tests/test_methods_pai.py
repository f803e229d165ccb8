"""Pruning-at-init methods through the real loop, and a smoke test over every registered method."""

from __future__ import annotations

import pytest
import torch

from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.experiments.runner import run
from drt.methods import METHODS, Method
from drt.methods.prune_at_init import SNIP, ScoredOptions
from drt.models import create
from drt.sparse import kept_total, prunable
from drt.train import train

PAI = ["random", "magnitude", "snip", "grasp", "synflow", "iter-snip", "force"]


def _fit(digits, method, epochs=2, optimizer="sgd", **opts):
    from drt.train import TrainConfig

    torch.manual_seed(0)
    model = create("conv4", digits.input_shape, digits.num_classes, width=8)
    cls = METHODS.get(method)
    m = cls(cls.Options(**opts))
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, weight_decay=5e-4, optimizer=optimizer)
    return m, train(model, digits, cfg, m, device=torch.device("cpu"))


@pytest.mark.parametrize("method", PAI)
def test_exact_sparsity_and_masked_weights_stay_zero(digits, method):
    extra = {"prune_rounds": 10} if method in ("synflow", "iter-snip", "force") else {}
    m, out = _fit(digits, method, sparsity=0.9, **extra)
    weights = prunable(out.model)
    total = sum(w.numel() for w in weights.values())
    kept = sum(int(m.mask[n].sum()) for n in weights)
    assert kept == kept_total(total, 0.9)  # exact count, not approximately 10%
    assert out.final["sparsity_achieved"] == pytest.approx(1 - kept / total, abs=1e-12)
    for n, w in weights.items():
        assert torch.all(w[~m.mask[n]] == 0), n
        assert min(int(m.mask[n].sum()) for n in weights) >= 1  # guard: no empty layer
    assert out.final["params_masked"] == total - kept
    assert out.final["flops_effective"] < out.final["flops"]


class Probe(Method):
    """A plug-in that keeps a handle on the loop's optimizer."""

    def after_step(self, state):
        self.optimizer = state.optimizer


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_state_of_masked_weights_is_zero(digits, optimizer):
    from drt.train import TrainConfig

    torch.manual_seed(0)
    model = create("conv4", digits.input_shape, digits.num_classes, width=8)
    method, probe = SNIP(ScoredOptions(sparsity=0.8)), Probe()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, weight_decay=5e-4, optimizer=optimizer)
    out = train(model, digits, cfg, method, [probe], device=torch.device("cpu"))
    checked = 0
    for name, p in prunable(out.model).items():
        off = ~method.mask[name]
        assert torch.count_nonzero(p[off]) == 0
        for key, value in probe.optimizer.state[p].items():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert torch.count_nonzero(value[off]) == 0, (name, key)
                assert torch.count_nonzero(value[~off]) > 0, (name, key)  # the kept ones do train
                checked += 1
    assert checked >= len(method.mask)


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk", "global"])
def test_distributions_hit_the_target(digits, distribution):
    m, out = _fit(digits, "snip", epochs=1, sparsity=0.95, distribution=distribution)
    weights = prunable(out.model)
    total = sum(w.numel() for w in weights.values())
    assert sum(int(x.sum()) for x in m.mask.values()) == kept_total(total, 0.95)
    layers = {r["name"]: r for r in out.final["layers"]}
    if distribution != "global":
        assert all(r["target"] is not None for r in layers.values())


@pytest.mark.parametrize("values, message", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"distribution": "nope"}, "valid: "),
    ({"score_batches": 0}, "score_batches must be >= 1"),
    ({"method": "grasp", "grasp_temperature": 0}, "grasp_temperature > 0"),
    ({"method": "grasp", "grasp_per_class": 0}, "grasp_per_class >= 1"),
    ({"method": "synflow", "prune_rounds": 0}, "prune_rounds must be >= 1"),
    ({"method": "force", "prune_rounds": 0}, "prune_rounds must be >= 1"),
])
def test_bad_options(values, message):
    with pytest.raises(DrtError, match=message):
        make_config({"method": "snip", **values})


def test_iterative_methods_need_global_distribution(digits):
    with pytest.raises(DrtError, match="global"):
        _fit(digits, "synflow", epochs=1, sparsity=0.5, distribution="erk", prune_rounds=2)
    with pytest.raises(DrtError, match="synflow is data-free"):
        _fit(digits, "synflow", epochs=1, sparsity=0.5, score_batches=2, prune_rounds=2)
    for method in ("synflow", "iter-snip", "force"):  # they would silently prune the layer anyway
        with pytest.raises(DrtError, match="--dense-first/--dense-last are not supported"):
            _fit(digits, method, epochs=1, sparsity=0.5, dense_first=True, prune_rounds=2)


def test_more_score_batches_than_the_data_has_is_a_clear_error(digits):
    with pytest.raises(DrtError, match=r"score_batches 99 asks for more batches than the training data has \(\d+\)"):
        _fit(digits, "snip", epochs=1, sparsity=0.5, score_batches=99)


def test_snip_mask_is_deterministic(digits):
    a, _ = _fit(digits, "snip", epochs=1, sparsity=0.9)
    b, _ = _fit(digits, "snip", epochs=1, sparsity=0.9)
    assert a.mask.checksum() == b.mask.checksum()


@pytest.mark.parametrize("method", METHODS.names())
def test_every_registered_method_trains(results, method):
    """Each method trains a BN conv net one epoch end to end and reports its accounting."""
    cls = METHODS.get(method)
    values = {"dataset": "digits", "model": "resnet20", "width": 4, "epochs": 1, "batch_size": 128,
              "method": method}
    names = set(cls.Options.__dataclass_fields__)
    if "sparsity" in names:
        values["sparsity"] = 0.5
    if "prune_rounds" in names:
        values["prune_rounds"] = 5
    if "freeze" in names:
        values["freeze"] = "conv1"
    if "pcn_epoch" in names or "tp_epoch" in names:
        values["epochs"] = 2
    m = run(make_config(values), results, log=lambda *_: None)
    assert 0 <= m["test_acc"] <= 1 and m["params_trainable"] <= m["params_total"]
    if "sparsity" in names:
        assert m["params_trainable"] < m["params_total"]
