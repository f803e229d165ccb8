"""Time to accuracy: the training wall-clock at which a run first reaches a target held-out accuracy.

The target of a run is its dense reference's final test accuracy minus ``margin`` (default 0.5
points): the mean over the finished dense runs with the same data (data set, subset, validation
split, augmentation, image size), the same model and the same number of epochs. Where dense runs of
the model at several sizes (``width``, ``hidden``) are stored, the reference is the largest: a
small-dense baseline is timed to the full model's accuracy, not to its own; where dense runs of that
size were trained with several recipes (learning rate, warm-up, ...), the reference is the recipe with
the best mean accuracy: a method is timed to the best dense figure in the store, never to a weaker
one. The clock
is a run's training wall-clock (set-up, steps, statistics and transforms; evaluation excluded) at
the end of the first evaluated epoch whose test accuracy reaches the target; a run that never
reaches it has none. Runs recorded before the clock was kept per epoch count their epochs' training
and method time (their set-up time is not known).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from drt.experiments.config import NOT_TRAINING

DEFAULT_MARGIN = 0.005
DATA_KEYS = ("dataset", "subset", "val_size", "augment", "image_size")
SIZE_KEYS = ("width", "hidden")  # a narrower model of the same name is compared with the full one


def clock(history: Sequence[dict[str, Any]]) -> list[float]:
    """Training wall-clock (s) at the end of each epoch of ``history``."""
    out, total = [], 0.0
    for h in history:
        total += h.get("train_time", 0.0) + h.get("method_time", 0.0)
        out.append(float(h["wall_clock"]) if "wall_clock" in h else total)
    return out


def time_to(history: Sequence[dict[str, Any]], target: float, metric: str = "test_acc") -> float | None:
    """Wall-clock of the first epoch whose ``metric`` is at least ``target``; None if none is."""
    for h, t in zip(history, clock(history), strict=True):
        if metric in h and h[metric] >= target - 1e-12:
            return t
    return None


def reference_key(config: dict[str, Any]) -> str:
    """What a run is compared on: its data, model (but its size) and epochs (not the method or its recipe)."""
    data = {k: config["data"].get(k) for k in DATA_KEYS}
    model = {k: v for k, v in config["model"].items() if k not in SIZE_KEYS}
    return json.dumps([data, model, config["train"]["epochs"]], sort_keys=True)


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.mean(r["metrics"].get(key, 0) for r in runs)


def _reference(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the dense runs of the model size with the most trainable parameters, those of the recipe with
    the best mean test accuracy."""
    by_size: dict[str, list[dict[str, Any]]] = {}
    for r in refs:
        by_size.setdefault(json.dumps(r["config"]["model"], sort_keys=True), []).append(r)
    largest = max(by_size.values(), key=lambda rs: _mean(rs, "params_trainable"))
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for r in largest:
        recipe = {k: v for k, v in r["config"]["train"].items() if k not in ("seed", *NOT_TRAINING)}
        by_recipe.setdefault(json.dumps(recipe, sort_keys=True), []).append(r)
    return max(by_recipe.values(), key=lambda rs: _mean(rs, "test_acc"))


def annotate(runs: Iterable[dict[str, Any]], history: Callable[[str], list[dict[str, Any]]],
             margin: float = DEFAULT_MARGIN) -> dict[str, dict[str, Any]]:
    """Per finished run id: ``tta_target``, ``time_to_target`` (s or None), ``dense_time_to_target``
    (mean over the dense reference runs that reach it) and ``tta_vs_dense`` (ratio); runs without a
    finished dense reference are left out. ``history(run_id)`` gives a run's per-epoch records."""
    done = [r for r in runs if r.get("status") == "done" and r.get("metrics")]
    dense: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        if r["config"]["method"] == "dense" and not r["config"].get("reg"):
            dense.setdefault(reference_key(r["config"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for key, all_refs in dense.items():
        refs = _reference(all_refs)
        target = statistics.mean(r["metrics"]["test_acc"] for r in refs) - margin
        ref_times = [t for r in refs if (t := time_to(history(r["id"]), target)) is not None]
        ref_time = statistics.mean(ref_times) if ref_times else None
        for r in done:
            if reference_key(r["config"]) != key:
                continue
            t = time_to(history(r["id"]), target)
            out[r["id"]] = {"tta_target": target, "time_to_target": t, "dense_time_to_target": ref_time,
                            "tta_vs_dense": t / ref_time if t is not None and ref_time else None}
    return out
