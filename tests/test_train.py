"""The training loop: schedules, resume equality, NaN handling, checkpoints, AMP."""

from __future__ import annotations

import math

import pytest
import torch

from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.experiments.runner import run
from drt.methods import Method
from drt.methods.dense import Dense
from drt.models import create
from drt.train import TrainConfig, lr_at, train
from drt.train.checkpoint import load_checkpoint

from helpers import Interrupted, train_until


def test_lr_schedules_follow_absolute_epochs():
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="multistep", milestones=(5, 7.5), gamma=0.1)
    assert lr_at(cfg, 4.99, 0.01) == 1.0
    assert lr_at(cfg, 5.0, 0.01) == pytest.approx(0.1)
    assert lr_at(cfg, 8.0, 0.01) == pytest.approx(0.01)
    cos = TrainConfig(epochs=10, lr=2.0, schedule="cosine")
    assert lr_at(cos, 0, 0.1) == 2.0 and lr_at(cos, 5, 0.1) == pytest.approx(1.0)
    assert lr_at(cos, 10, 0.1) == pytest.approx(0.0, abs=1e-12)
    warm = TrainConfig(epochs=10, lr=1.0, schedule="constant", warmup_epochs=2)
    assert lr_at(warm, 0, 0.5) == pytest.approx(0.25) and lr_at(warm, 3, 0.5) == 1.0


def _model(digits, seed=0):
    torch.manual_seed(seed)
    return create("mlp", digits.input_shape, digits.num_classes, hidden=[32])


def test_resume_matches_uninterrupted_run(digits, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, seed=3)
    full = train(_model(digits), digits, cfg, Dense(), device=torch.device("cpu"), augment="crop-flip")

    ckpt = tmp_path / "ck.pt"

    train_until(2, _model(digits), digits, cfg, Dense(), device=torch.device("cpu"), augment="crop-flip",
                checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 2
    # a fresh process would build a fresh (differently initialised) model: resume must not care
    resumed = train(_model(digits, seed=99), digits, cfg, Dense(), device=torch.device("cpu"),
                    augment="crop-flip", checkpoint=ckpt, resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert [h["test_acc"] for h in full.history] == [h["test_acc"] for h in resumed.history]
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


class NaNAtEpoch(Method):
    def extra_loss(self, state, output):
        return torch.tensor(float("nan")) if state.epoch == 1 else None


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(digits, tmp_path):
    ckpt = tmp_path / "ck.pt"
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    with pytest.raises(DrtError, match=r"loss became nan at epoch 2.*last good checkpoint kept"):
        train(_model(digits), digits, cfg, NaNAtEpoch(), device=torch.device("cpu"), checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-drt"])
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "ck.pt"
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 1, "x": torch.zeros(1000)}, path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    else:
        torch.save({"weights": 1}, path)
    with pytest.raises(DrtError, match="checkpoint"):
        load_checkpoint(path)


def test_checkpoint_refuses_code_execution(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"model": {}, "epoch": 1, "evil": Interrupted}, path)  # a class needs unpickling of code
    with pytest.raises(DrtError, match="corrupted"):
        load_checkpoint(path)


def test_amp_bfloat16_on_cpu_trains(digits):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, amp=True)
    out = train(_model(digits), digits, cfg, Dense(), device=torch.device("cpu"))
    assert out.final["test_acc"] > 0.5 and math.isfinite(out.final["train_loss"])


def test_runner_records_run_and_skips_finished(results):
    cfg = make_config({"dataset": "digits", "model": "mlp", "hidden": (32,), "epochs": 2, "batch_size": 64})
    first = run(cfg, results, log=lambda *_: None)
    assert not first["skipped"] and first["test_acc"] > 0.5
    assert first["params_trainable"] == first["params_total"] == 64 * 32 + 32 + 32 * 10 + 10
    assert first["flops"] == 2 * (64 * 32 + 32 * 10)  # torch counts a multiply-add as 2, bias adds as 0
    second = run(cfg, results, log=lambda *_: None)
    assert second["skipped"] and second["test_acc"] == first["test_acc"]
    from drt.experiments.store import Store

    store = Store(results / "drt.sqlite")
    (row,) = store.runs()
    assert row["status"] == "done" and row["env"]["torch"] == torch.__version__
    assert row["config"]["train"]["epochs"] == 2 and len(store.epochs(row["id"])) == 2
    # --force --resume on a finished run trains it again (its final checkpoint is not "resumed")
    old = [e["train_time"] for e in store.epochs(row["id"])]
    third = run(cfg, results, force=True, resume=True, log=lambda *_: None)
    assert not third["skipped"] and [e["train_time"] for e in store.epochs(row["id"])] != old


def test_eval_every_skips_test_evaluation_between_and_is_not_part_of_the_identity(digits):
    cfg = TrainConfig(epochs=4, batch_size=128, lr=0.05, eval_every=3)
    out = train(_model(digits), digits, cfg, Dense(), device=torch.device("cpu"))
    assert [("test_acc" in h) for h in out.history] == [False, False, True, True]  # every 3rd and the last
    assert out.final["test_acc"] == out.history[-1]["test_acc"]
    base = {"dataset": "digits", "epochs": 4}
    assert make_config({**base, "eval_every": 3}).run_id() == make_config(base).run_id()
    with pytest.raises(DrtError, match="eval_every must be a positive integer"):
        make_config({**base, "eval_every": 0})
