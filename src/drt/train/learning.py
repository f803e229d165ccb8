"""Is a run learning? A check on one epoch's record, for a warning while the run goes on."""

from __future__ import annotations

import math
from typing import Any

LOSS_SLACK = 0.05  # a training loss within this of log(classes) has learnt nothing
ACC_SLACK = 0.02  # a test accuracy within this of 1/classes is chance


def not_learning(entry: dict[str, Any], num_classes: int) -> str | None:
    """Why the epoch in ``entry`` (the loop's record) shows no learning, or None if it does.

    Not learning: the training loss is still at the cross-entropy of a uniform guess, log(classes),
    and the test accuracy (where evaluated) is at chance, 1/classes.
    """
    if num_classes < 2 or "train_loss" not in entry:
        return None
    chance_loss = math.log(num_classes)
    if entry["train_loss"] < chance_loss - LOSS_SLACK:
        return None
    acc = entry.get("test_acc")
    if acc is not None and acc > 1 / num_classes + ACC_SLACK:
        return None
    seen = f" and test accuracy {100 * acc:.2f}%" if acc is not None else ""
    return (f"the run is not learning: after epoch {entry['epoch']} the training loss is {entry['train_loss']:.3f} "
            f"(a uniform guess: log {num_classes} = {chance_loss:.3f}){seen}; the usual cause is the learning rate "
            f"(lr {entry['lr']:.3g} at the epoch's end; too large blows the loss up, too small leaves it): try "
            "another --lr, --warmup-epochs 1, or a recipe (`drt list recipes`)")
