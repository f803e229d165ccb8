"""Baselines at equal trainable parameters: a *small dense* net, and the Torch-Pruning peer of PCN.

The question every reviewer asks of a compressed network: is it better than simply training a
smaller dense one? ``small_dense_options`` narrows the model's width option (``width`` for conv
nets and ResNets, every ``hidden`` size scaled uniformly for the MLP) so that its trainable count is
as close as possible to a target; ``small_dense_for_runs`` plans one such run per finished
compressed result (and seed) in a results store, ``tp_channel_for_runs`` the channel-pruning peer.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from drt.errors import DrtError
from drt.experiments.config import NOT_TRAINING, RunConfig, make_config
from drt.experiments.loading import config_from_dict, load_data
from drt.methods.base import NoOptions
from drt.models import create, model_options

Shape = tuple[tuple[int, ...], int]  # (input shape, number of classes)


def dense_trainable(model: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> int:
    """Trainable parameter count of model ``model`` with ``options``, built on the meta device (no memory)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        net = create(model, tuple(input_shape), num_classes, **options)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def width_family(model: str, input_shape: Sequence[int], num_classes: int,
                 base_options: dict[str, Any] | None = None) -> tuple[int, Callable[[int], dict[str, Any]]]:
    """(largest width, width -> model options): the model's one-integer family of narrower nets.

    ``width`` models: width 1..base. ``mlp``: the first hidden size 1..base, every hidden size
    scaled by the same factor (rounded, at least 1).
    """
    base = dict(base_options or {})
    takes = model_options(model)
    if "width" in takes:
        top = base.get("width") or takes["width"]
        return top, lambda w: {**base, "width": w}
    if "hidden" in takes:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            net = create(model, tuple(input_shape), num_classes, **base)
        sizes = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)][:-1]
        if not sizes:
            raise DrtError(f"small dense: {model} without hidden layers has no width to shrink")
        return sizes[0], lambda h: {**base, "hidden": [max(1, round(s * h / sizes[0])) for s in sizes]}
    raise DrtError(f"small dense: model {model!r} has no width option (needs 'width' or 'hidden')")


def small_dense_options(model: str, input_shape: Sequence[int], num_classes: int, target_trainable: int,
                        base_options: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """(model options, achieved trainable count): the width whose dense count is nearest the target.

    Searches integer widths from 1 to the base model's (``base_options``, else the default); ties go
    to the smaller net. DrtError if the target is below the width-1 net or above the base model.
    """
    top, family = width_family(model, input_shape, num_classes, base_options)
    count = {}

    def n(w: int) -> int:
        if w not in count:
            count[w] = dense_trainable(model, input_shape, num_classes, **family(w))
        return count[w]

    if target_trainable < n(1):
        raise DrtError(f"small dense: target {target_trainable:,} trainable parameters is below the smallest "
                       f"{model} ({n(1):,} at width 1)")
    if target_trainable > n(top):
        raise DrtError(f"small dense: target {target_trainable:,} trainable parameters is above the {model} at "
                       f"its own width {top} ({n(top):,}); small dense only narrows")
    lo, hi = 1, top  # n(lo) <= target <= n(hi); the count grows with the width
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if n(mid) <= target_trainable else (lo, mid)
    w = lo if target_trainable - n(lo) <= n(hi) - target_trainable else hi
    return family(w), n(w)


def relative_error(achieved: int, target: float) -> float:
    """achieved / target - 1 (signed)."""
    return achieved / target - 1


def small_dense_config(cfg: RunConfig, target: float, shape: Shape | None = None) -> RunConfig:
    """``cfg`` as plain dense training of its model narrowed to ``target`` trainable parameters.

    Same data, training settings and seed; method dense, no regularisers. ``shape`` (input shape,
    classes) saves loading the data set to learn them.
    """
    return _small_dense(cfg, target, shape or data_shape(cfg))[0]


def _small_dense(cfg: RunConfig, target: float, shape: Shape) -> tuple[RunConfig, int]:
    options, achieved = small_dense_options(cfg.model.model, shape[0], shape[1], round(target), cfg.model.options())
    hidden = options.get("hidden")
    model = dataclasses.replace(cfg.model, width=options.get("width"),
                                hidden=tuple(hidden) if hidden is not None else None)
    small = dataclasses.replace(cfg, model=model, method="dense", method_options=NoOptions(), reg=(), reg_options=())
    return small, achieved


def data_shape(cfg: RunConfig) -> Shape:
    """(input shape, classes) of the run's data set, loaded as the runner loads it."""
    data = load_data(cfg.data)
    return tuple(data.input_shape), int(data.num_classes)


def groups(runs: Sequence[dict[str, Any]], methods: Callable[[str], bool]) -> list[list[dict[str, Any]]]:
    """Finished runs of the selected methods grouped by their settings apart from the seed, in store order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") != "done" or not methods(r["config"]["method"]):
            continue
        if (r.get("metrics") or {}).get("params_trainable") is None:
            continue
        c = json.loads(json.dumps(r["config"]))
        c["train"].pop("seed", None)
        for section in ("data", "train"):
            for k in NOT_TRAINING:
                c[section].pop(k, None)
        out.setdefault(json.dumps(c, sort_keys=True), []).append(r)
    return list(out.values())


def _unique(configs: list[RunConfig]) -> list[RunConfig]:
    seen: dict[str, RunConfig] = {}
    for c in configs:
        seen.setdefault(c.run_id(), c)
    return list(seen.values())


def small_dense_plan(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per compressed result (non-dense method) and seed: source label, target, achieved, config.

    The target is the group's mean final ``params_trainable`` over its seeds, so every seed of a
    result gets the same small net.
    """
    rows, shapes = [], {}
    for group in groups(runs, lambda m: m != "dense"):
        target = statistics.fmean(r["metrics"]["params_trainable"] for r in group)
        for r in group:
            cfg = config_from_dict(r["config"])
            key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
            if key not in shapes:
                shapes[key] = data_shape(cfg)
            small, achieved = _small_dense(cfg, target, shapes[key])
            rows.append({"source": r["label"], "source_id": r["id"], "target": target, "achieved": achieved,
                         "error": relative_error(achieved, target), "config": small})
    return rows


def small_dense_for_runs(runs: Sequence[dict[str, Any]]) -> list[RunConfig]:
    """Small-dense configs for finished compressed runs of a store (``Store.runs()``), without duplicates."""
    return _unique([row["config"] for row in small_dense_plan(runs)])


def tp_channel_for_runs(runs: Sequence[dict[str, Any]], source: str = "pcn") -> list[RunConfig]:
    """Torch-Pruning peers (``tp-channel``) of finished ``source`` runs: same data, model, training and
    seeds, target = the group's mean trainable count, pruning after the source's transform epoch."""
    out = []
    for group in groups(runs, lambda m: m == source):
        target = round(statistics.fmean(r["metrics"]["params_trainable"] for r in group))
        epoch = group[0]["metrics"].get("pcn_epoch") or 1
        for r in group:
            c = r["config"]
            flat = {**c["data"], **c["model"], **c["train"], "method": "tp-channel", "tp_target": target,
                    "tp_epoch": int(epoch)}
            out.append(make_config(flat))
    return _unique(out)
