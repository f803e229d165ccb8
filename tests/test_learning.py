"""A run that is not learning is said once, in one warning line, while it goes on."""

from __future__ import annotations

import math

import pytest

from drt.cli import main
from drt.train.learning import not_learning


@pytest.mark.parametrize("loss, acc, said", [
    (math.log(10), 0.10, True),  # a uniform guess at chance
    (2.6, None, True),  # worse than a uniform guess, not evaluated this epoch
    (math.log(10) - 0.2, 0.10, False),  # the loss moves
    (math.log(10), 0.35, False),  # the accuracy is above chance
])
def test_not_learning_is_a_chance_loss_and_chance_accuracy(loss, acc, said):
    entry = {"epoch": 3, "lr": 0.1, "train_loss": loss, **({"test_acc": acc} if acc is not None else {})}
    why = not_learning(entry, 10)
    assert (why is not None) == said
    if said:
        assert why.startswith("the run is not learning: after epoch 3") and "log 10 = 2.303" in why


def test_a_stalled_run_gets_one_warning_line(capsys, results):
    code = main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--lr", "1e-9", "--no-progress",
                 "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 0 and err.count("drt: warning: the run is not learning") == 1
