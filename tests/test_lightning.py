"""DrtCallback inside a real Lightning Trainer (CPU, digits): PCN transforms, RigL reaches its sparsity."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch", reason="optional dependency `lightning` is not installed "
                                                   "(pip install lightning)")

from drt.errors import DrtError  # noqa: E402
from drt.integrations.lightning import DrtCallback  # noqa: E402
from drt.methods.cka_sr import CKASR, CKASROptions  # noqa: E402
from drt.methods.dst import DSTOptions, RigL  # noqa: E402
from drt.methods.pcn import PCN, PCNOptions  # noqa: E402
from drt.models import create  # noqa: E402
from drt.pcn import pcn_layers  # noqa: E402


class Net(L.LightningModule):
    """The pattern the README shows: the network as ``self.model``, the drt term added to the loss."""

    def __init__(self, model: torch.nn.Module, add_extra: bool = True) -> None:
        super().__init__()
        self.model, self.add_extra = model, add_extra

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        return loss + self.drt.extra_loss(out) if self.add_extra else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)


def _fit(digits, callback, hidden, epochs=3, add_extra=True) -> tuple[Net, L.Trainer]:
    torch.manual_seed(0)
    net = Net(create("mlp", digits.input_shape, digits.num_classes, hidden=hidden), add_extra)
    ds = torch.utils.data.TensorDataset(digits.x_train, digits.y_train)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers etc.
        trainer.fit(net, loader)
    return net, trainer


def _accuracy(model, digits) -> float:
    with torch.no_grad():
        return float((model.eval()(digits.x_test).argmax(1) == digits.y_test).float().mean())


def test_pcn_transforms_inside_lightning_and_keeps_training(digits):
    cb = DrtCallback(PCN(PCNOptions(pcn_epoch="1", pcn_keep="8", pcn_samples=500)))
    net, trainer = _fit(digits, cb, hidden=[32, 32])
    layers = pcn_layers(net.model)
    assert set(layers) == {"fc2", "fc3"} and all(int(m.k) == 8 for m in layers.values())
    assert cb.summary()["pcn_epoch"] == 1
    # the optimizer was rebuilt from configure_optimizers over the new network's parameters
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in net.model.parameters()}
    assert any(s["momentum_buffer"] is not None for s in trainer.optimizers[0].state.values())  # it stepped
    assert _accuracy(net.model, digits) > 0.8


def test_rigl_inside_lightning_reaches_its_sparsity(digits):
    cb = DrtCallback(RigL(DSTOptions(sparsity=0.8, delta_t=5)))
    net, _ = _fit(digits, cb, hidden=[64, 32], epochs=3)
    summary = cb.summary()
    assert summary["updates"] > 0
    assert summary["sparsity_achieved"] == pytest.approx(0.8, abs=1e-3)
    params = dict(net.model.named_parameters())
    for name, mask in cb.method.masks().items():
        assert int(params[name][~mask].count_nonzero()) == 0, name
    assert _accuracy(net.model, digits) > 0.5  # it learned (a plain Driver loop: 0.68 after 3 epochs)


def test_regulariser_term_must_be_added_to_the_loss(digits):
    cb = DrtCallback(RigL(DSTOptions(sparsity=0.5, delta_t=5)), [CKASR(CKASROptions(cka_every=1))])
    with pytest.raises(DrtError, match="extra_loss"):
        _fit(digits, cb, hidden=[32, 32], epochs=1, add_extra=False)
