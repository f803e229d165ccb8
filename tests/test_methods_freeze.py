"""Freezing through the real loop: frozen weights bit-identical, honest counts, FreezeNet export, bad input."""

from __future__ import annotations

import pytest
import torch

from drt.analysis.cost import param_counts
from drt.cli import main
from drt.errors import DrtError
from drt.methods.freeze import (
    BNOnly,
    FreezeLayers,
    FreezeLayersOptions,
    FreezeNet,
    FreezeNetOptions,
    load_freezenet,
    match_frozen,
)
from drt.models import create
from drt.sparse import kept_total, prunable
from drt.train import TrainConfig, train

from helpers import train_until

CPU = torch.device("cpu")
SEED = 3


def _model(digits, name, **options):
    torch.manual_seed(SEED)
    return create(name, digits.input_shape, digits.num_classes, **options)


CASES = {
    "freezenet": (lambda: FreezeNet(FreezeNetOptions(sparsity=0.8)), "conv4", {"width": 8}),
    "bn-only": (lambda: BNOnly(), "resnet20", {"width": 4}),
    "freeze-layers": (lambda: FreezeLayers(FreezeLayersOptions(freeze=("conv1", "fc2.*"), freeze_fraction=0.3)),
                      "conv4", {"width": 8}),
}
OPTIMIZERS = {"sgd": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-2},
              "adamw": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.5}}


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("case", CASES)
def test_frozen_weights_stay_bit_identical_and_counts_match(digits, case, opt):
    make, name, options = CASES[case]
    model, method = _model(digits, name, **options), make()
    theta0 = {k: v.clone() for k, v in model.named_parameters()}
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 128, "lr": 0.05, "seed": SEED, **OPTIMIZERS[opt]})
    result = train(model, digits, cfg, method, device=CPU)
    trained = method.frozen_masks()
    assert trained, "a freezing method must report what it froze"
    changed = 0
    for n, p in result.model.named_parameters():
        frozen = ~trained[n] if n in trained else torch.zeros_like(p, dtype=torch.bool)
        assert torch.equal(p[frozen], theta0[n][frozen]), n  # bit-identical, weight decay included
        changed += int((p != theta0[n]).sum())
        if n in method.whole:
            assert not p.requires_grad
    counts = param_counts(result.model, method.masks(), trained)
    if case == "freezenet":  # stored as its trained entries plus the init seed
        counts["stored"] = counts["trainable"] + 1
    assert counts == {k[len("params_"):]: v for k, v in result.final.items() if k.startswith("params_")}
    assert counts["trainable"] == changed and counts["frozen"] == counts["total"] - changed > 0
    assert result.final["frozen_params"] == counts["frozen"]


def test_freezenet_freezes_exactly_the_target_fraction_by_saliency(digits):
    method = FreezeNet(FreezeNetOptions(sparsity=0.9))
    result = train(_model(digits, "conv4", width=8), digits, TrainConfig(epochs=1, batch_size=128, seed=SEED), method,
                   device=CPU)
    numel = sum(p.numel() for p in prunable(result.model).values())
    trained = sum(int(m.sum()) for m in method.frozen_masks().values())
    assert trained == kept_total(numel, 0.9)
    assert result.final["frozen_of_prunable"] == 1 - kept_total(numel, 0.9) / numel
    assert not any(n.endswith("bias") for n in method.frozen_masks())  # biases (and BN) train


def test_freezenet_compact_export_round_trips_to_the_same_function(digits, tmp_path):
    method = FreezeNet(FreezeNetOptions(sparsity=0.9))
    result = train(_model(digits, "conv4", width=8), digits, TrainConfig(epochs=1, batch_size=128, seed=SEED), method,
                   device=CPU)
    compact = method.export(result.model, "conv4", width=8)
    torch.save(compact, tmp_path / "fn.pt")
    loaded = load_freezenet(torch.load(tmp_path / "fn.pt", weights_only=True))
    for (n, a), b in zip(result.model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    x = digits.x_test[:64]
    assert torch.equal(result.model.eval()(x), loaded.eval()(x))
    stored = sum(e["value"].numel() for e in compact["trained"].values()) + sum(
        t.numel() for t in compact["dense"].values())
    assert stored < sum(p.numel() for p in result.model.parameters()) / 3  # weights + seed, not dense θ
    assert result.final["params_stored"] == result.final["params_trainable"] + 1  # the accounting says the same
    trained_params = sum(e["value"].numel() for e in compact["trained"].values()) + sum(
        p.numel() for n, p in result.model.named_parameters() if n in compact["dense"])
    assert trained_params == result.final["params_trainable"]
    method.spec["seed"] += 1
    with pytest.raises(DrtError, match="differ from create"):
        method.export(result.model, "conv4", width=8)


def test_freeze_layers_patterns_fraction_and_resume(digits, tmp_path):
    model = _model(digits, "resnet20", width=4)
    names = match_frozen(model, ["layer1.*", "conv1"])
    assert names[0] == "conv1.weight" and all(n.startswith("layer1.") for n in names[1:])
    assert len(names) == 1 + 3 * 6  # 3 blocks x (conv1, bn1 (2), conv2, bn2 (2))
    with pytest.raises(DrtError, match=r"--freeze layer9, nope match no module .* valid modules: conv1, bn1, "):
        match_frozen(model, ["layer9", "nope", "fc"])
    opts = FreezeLayersOptions(freeze=("fc3",), freeze_fraction=0.25)
    cfg = TrainConfig(epochs=3, batch_size=128, seed=SEED)
    full = train(_model(digits, "conv4", width=8), digits, cfg, FreezeLayers(opts), device=CPU)
    method = FreezeLayers(opts)

    train_until(1, _model(digits, "conv4", width=8), digits, cfg, method, device=CPU, checkpoint=tmp_path / "ck.pt")
    for n, m in method.frozen_masks().items():
        if n in method.whole:
            continue
        assert int((~m).sum()) == int(0.25 * m.numel() + 0.5), n  # exact count per tensor
    resumed = train(_model(digits, "conv4", width=8), digits, cfg, FreezeLayers(opts), device=CPU,
                    checkpoint=tmp_path / "ck.pt", resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert full.final["params_trainable"] == resumed.final["params_trainable"]


def test_bad_freezing_inputs(digits):
    mlp = _model(digits, "mlp", hidden=[16])
    with pytest.raises(DrtError, match="model mlp has no BatchNorm"):
        train(mlp, digits, TrainConfig(epochs=1), BNOnly(), device=CPU)
    with pytest.raises(DrtError, match="needs --freeze"):
        train(mlp, digits, TrainConfig(epochs=1), FreezeLayers(), device=CPU)
    with pytest.raises(DrtError, match="nothing left to train"):
        train(mlp, digits, TrainConfig(epochs=1), FreezeLayers(FreezeLayersOptions(freeze=("*",))), device=CPU)
    with pytest.raises(DrtError, match="freeze_fraction"):
        FreezeLayersOptions(freeze_fraction=1.5)
    with pytest.raises(DrtError, match="sparsity"):
        FreezeNetOptions(sparsity=1.0)


def test_freezing_cli(capsys, tmp_path):
    base = ["train", "--dataset", "digits", "--model", "conv4", "--width", "8", "--epochs", "1", "--no-progress",
            "--results-dir", str(tmp_path)]
    assert main([*base, "--method", "freezenet", "--sparsity", "0.9"]) == 0
    assert main([*base, "--method", "freeze-layers", "--freeze", "conv1,fc1.*"]) == 0
    assert main([*base, "--method", "freeze-layers", "--freeze", "conv9"]) == 2
    assert "valid modules: conv1" in capsys.readouterr().err
    assert main([*base, "--method", "bn-only"]) == 2
