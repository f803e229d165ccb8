"""Time to accuracy: per-epoch wall-clock in the loop's history, and the time to a dense target."""

from __future__ import annotations

import pytest
import torch

from drt.experiments.tta import annotate, clock, time_to
from drt.methods.dense import Dense
from drt.models import create
from drt.train import TrainConfig, train


def _run(rid, method, accs, times, epochs=3, subset=None):
    config = {"data": {"dataset": "d", "subset": subset}, "model": {"model": "m"}, "train": {"epochs": epochs},
              "method": method}
    pairs = enumerate(zip(accs, times, strict=True))
    history = [{"epoch": i + 1, "test_acc": a, "wall_clock": t} for i, (a, t) in pairs]
    return {"id": rid, "status": "done", "config": config, "metrics": {"test_acc": accs[-1]}}, history


def test_time_to_target_against_the_dense_reference_exactly():
    made = [_run("d0", "dense", [0.5, 0.7, 0.80], [10, 20, 30]),
            _run("d1", "dense", [0.6, 0.78, 0.82], [12, 24, 36]),
            _run("p", "pcn", [0.7, 0.806, 0.81], [8, 14, 20]),
            _run("s", "set", [0.3, 0.5, 0.6], [5, 10, 15]),
            _run("other", "pcn", [0.9, 0.9, 0.9], [1, 2, 3], subset=100)]  # other data: no reference
    histories = {run["id"]: h for run, h in made}
    tta = annotate([run for run, _ in made], histories.__getitem__)
    target = 0.81 - 0.005  # mean dense final accuracy minus half a point
    assert tta["p"]["tta_target"] == pytest.approx(target)
    assert tta["p"]["time_to_target"] == 14 and tta["p"]["dense_time_to_target"] == 36
    assert tta["p"]["tta_vs_dense"] == pytest.approx(14 / 36)
    assert tta["d0"]["time_to_target"] is None and tta["d1"]["time_to_target"] == 36
    assert tta["s"]["time_to_target"] is None and tta["s"]["tta_vs_dense"] is None
    assert "other" not in tta
    assert time_to(histories["p"], 0.7) == 8 and time_to(histories["p"], 0.95) is None


def test_clock_of_old_histories_sums_training_and_method_time():
    old = [{"train_time": 2.0, "method_time": 0.5}, {"train_time": 3.0}]
    assert clock(old) == [2.5, 5.5]


def test_the_loop_records_the_training_clock_and_evaluation_time_apart(digits):
    torch.manual_seed(0)
    model = create("mlp", digits.input_shape, digits.num_classes, hidden=[16])
    result = train(model, digits, TrainConfig(epochs=3, batch_size=64, lr=0.05), Dense(), device=torch.device("cpu"))
    h = result.history
    walls = [e["wall_clock"] for e in h]
    assert walls == sorted(walls) and all(e["eval_time"] > 0 for e in h)
    assert walls[-1] == pytest.approx(result.final["train_time"])  # the clock ends at the run's training time
    assert result.final["eval_time"] == pytest.approx(sum(e["eval_time"] for e in h))
    assert walls[0] >= h[0]["train_time"]


def test_a_small_dense_model_is_timed_to_the_full_models_accuracy():
    made = [_run("full", "dense", [0.6, 0.7, 0.80], [10, 20, 30]),
            _run("small", "dense", [0.6, 0.79, 0.81], [5, 9, 13])]
    made[0][0]["metrics"]["params_trainable"], made[1][0]["metrics"]["params_trainable"] = 1000, 300
    made[1][0]["config"]["model"]["width"] = 8
    histories = {run["id"]: h for run, h in made}
    tta = annotate([run for run, _ in made], histories.__getitem__)
    assert tta["small"]["tta_target"] == pytest.approx(0.795) and tta["small"]["time_to_target"] == 13
    assert tta["full"]["time_to_target"] == 30 and tta["small"]["tta_vs_dense"] == pytest.approx(13 / 30)


def test_the_reference_is_the_dense_recipe_with_the_best_accuracy():
    made = [_run("good", "dense", [0.6, 0.7, 0.80], [10, 20, 30]),
            _run("weak", "dense", [0.3, 0.4, 0.50], [10, 20, 30]),  # another recipe of the same model
            _run("p", "pcn", [0.6, 0.7, 0.79], [9, 18, 27])]
    made[0][0]["config"]["train"]["warmup_epochs"], made[1][0]["config"]["train"]["warmup_epochs"] = 1, 0
    histories = {run["id"]: h for run, h in made}
    tta = annotate([run for run, _ in made], histories.__getitem__)
    assert tta["p"]["tta_target"] == pytest.approx(0.795)  # not the mean over both recipes (0.645)
    assert tta["p"]["time_to_target"] is None and tta["weak"]["time_to_target"] is None
    assert tta["good"]["time_to_target"] == 30
