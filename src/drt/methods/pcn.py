"""PCN as a training method: train dense for E epochs, transform by PCA of layer inputs, continue.

Waleffe & Rekatsinas 2020. After epoch E (or, with ``--pcn-epoch auto``, once the principal
subspaces of consecutive epochs overlap by at least ``--pcn-auto-overlap``), statistics are
collected in eval mode on un-augmented training samples, the model is compressed, the loop
rebuilds the optimizer (weight decay on W' and b' only: V and μ are frozen buffers) and the LR
schedule continues at absolute epochs. The checkpoint carries the transformed architecture.

Under torch.distributed each rank collects the statistics of its part of the first ``--pcn-samples``
samples of the global order and the raw sums are all-reduced before the eigen-decomposition, so
every rank builds the identical basis (and the same one a single process would).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

from torch import nn

from drt import dist
from drt.analysis.cost import forward_flops
from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.options import opt
from drt.pcn import (
    PCNStats,
    channel_spaces,
    collect,
    compress,
    pcn_layers,
    pcn_spec,
    plan_components,
    rebuild,
    subspace_overlaps,
)
from drt.pcn.layers import weight_of
from drt.pcn.select import KeepArg, parse_keep
from drt.pcn.stats import eligible_layers, select_layers
from drt.pcn.transform import check_replaceable

TransformEpoch = int | Literal["auto"]


def parse_epoch(text: str) -> TransformEpoch:
    """When to transform, from its text: ``auto`` (when the subspaces settle) or an epoch >= 1."""
    if text == "auto":
        return "auto"
    if not (text.isdigit() and int(text) >= 1):
        raise DrtError(f"pcn_epoch must be a positive integer or 'auto', got {text!r}")
    return int(text)


def check_layer_rules(model: nn.Module, keep: KeepArg, exclude: Iterable[str]) -> None:
    """DrtError if a keep or exclude pattern matches no eligible layer, or a fixed k exceeds a layer's width."""
    eligible, _ = eligible_layers(model)
    select_layers(eligible, list(exclude), eligible, "pcn_exclude")
    for pat, rule in (keep.items() if isinstance(keep, dict) else []):  # a global k is checked at the transform
        for name in select_layers(eligible, [pat], eligible, "pcn_keep"):
            d = weight_of(eligible[name]).shape[1]  # in_features / in_channels (groups = 1)
            if isinstance(rule, int) and rule > d:
                raise DrtError(f"pcn keep {rule} for layer {name!r} exceeds its input width {d}")


def check_output_graph(model: nn.Module, input_shape: tuple[int, ...], keep: KeepArg,
                       exclude: Iterable[str]) -> None:
    """DrtError now if the output transform would refuse a channel space read by a layer it may transform."""
    eligible, _ = eligible_layers(model)
    candidates = set(eligible) - set(select_layers(eligible, list(exclude), eligible)) if exclude else set(eligible)
    if isinstance(keep, dict):
        candidates &= {n for pat in keep for n in select_layers(eligible, [pat], eligible)}
    for sp in channel_spaces(model, tuple(input_shape)):
        readers = [n for n, _ in sp.readers if n in candidates]
        if readers and sp.blocked and "are the network input" not in sp.blocked:  # first layers: never PCN
            raise DrtError(f"--pcn-output cannot narrow the input channels of layer {readers[0]!r}: they "
                           f"{sp.blocked[0]}; train without --pcn-output (or name layers in drt.pcn.compress)")


def rank_share(batches: Iterable[Any], total: int) -> Iterator[Any]:
    """This rank's part of the first ``total`` samples of a sharded loader's global order.

    ``batches`` are this rank's ``(x, y)`` chunks of global batches (rank r holds the r-th of W equal
    chunks, as ``TensorLoader`` shards); without torch.distributed they pass through unchanged.
    """
    rank, world = dist.current().rank, dist.current().world_size
    before = 0  # samples of the global order before this batch
    for x, y in batches:
        if world == 1:
            yield x, y
            continue
        take = min(len(x), max(0, total - before - rank * len(x)))
        if take > 0:
            yield x[:take], y[:take]
        before += len(x) * world
        if before >= total:
            return


@dataclass(frozen=True)
class PCNOptions:
    title: ClassVar[str] = "PCN"
    pcn_epoch: str = opt("1", "transform after this epoch, or 'auto' (when subspaces settle)")
    pcn_keep: str = opt("0.99", "components kept: all | variance fraction | k | name=rule,... (per layer)")
    pcn_width_fraction: float | None = opt(None, "cap k at this fraction of each layer's width (paper rule)")
    pcn_eig_threshold: float | None = opt(None, "keep eigenvalues >= this (paper rule)")
    pcn_budget: float | None = opt(None, "global budget (a target: k is allocated up to it): a count, or a "
                                         "fraction < 1 of the trainable parameters or forward FLOPs (--pcn-budget-of)")
    pcn_budget_of: str = opt("params", "what --pcn-budget counts: trainable parameters or forward FLOPs per sample",
                             ("params", "flops"))
    pcn_min_fraction: float = opt(1 / 16, "floor on k for variance rules and budgets: this fraction of each "
                                          "layer's width (0 = none)")
    pcn_exec: str = opt("auto", "execution plan per layer: auto (fewest counted training FLOPs; layers keeping "
                                "everything stay untouched) | factored | merged", ("auto", "factored", "merged"))
    pcn_output: bool = opt(False, "also remove producer channels (output transform)")
    pcn_output_keep: float | None = opt(None, "output transform: channels kept (count, or fraction < 1)")
    pcn_eigen_weighted: bool = opt(False, "output transform: eigenvalue-weighted channel scores")
    pcn_exclude: tuple[str, ...] = opt((), "layers (names or glob patterns) never transformed")
    pcn_samples: int = opt(5000, "training samples for the statistics")
    pcn_pool_to: int | None = opt(None, "average-pool conv maps larger than this before the statistics")
    pcn_auto_overlap: float = opt(0.9, "auto: transform when mean subspace overlap reaches this")
    pcn_auto_latest: int | None = opt(None, "auto: transform at this epoch at the latest (default half of training)")

    def __post_init__(self) -> None:
        _ = self.epoch, self.keep  # parsed once, here (a bad rule fails at the boundary), then cached
        if self.pcn_samples < 2:
            raise DrtError(f"pcn_samples must be >= 2, got {self.pcn_samples}")
        if not 0 < self.pcn_auto_overlap <= 1:
            raise DrtError(f"pcn_auto_overlap must be in (0, 1], got {self.pcn_auto_overlap}")
        for name, value, ok, want in (
            ("pcn_width_fraction", self.pcn_width_fraction, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("pcn_eig_threshold", self.pcn_eig_threshold, lambda v: v >= 0, ">= 0"),
            ("pcn_budget", self.pcn_budget, lambda v: v > 0 and (v < 1 or float(v).is_integer()),
             "a fraction in (0, 1) or a whole count"),
            ("pcn_output_keep", self.pcn_output_keep, lambda v: v > 0 and (v <= 1 or float(v).is_integer()),
             "a fraction in (0, 1] or a whole count"),
            ("pcn_pool_to", self.pcn_pool_to, lambda v: v >= 1, ">= 1"),
            ("pcn_auto_latest", self.pcn_auto_latest, lambda v: v >= 1, ">= 1"),
            ("pcn_min_fraction", self.pcn_min_fraction, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ):
            if value is not None and not ok(value):
                raise DrtError(f"{name} must be {want}, got {value}")
        if not self.pcn_output and (self.pcn_output_keep is not None or self.pcn_eigen_weighted):
            raise DrtError("pcn_output_keep and pcn_eigen_weighted set the output transform: add pcn_output")

    @cached_property
    def epoch(self) -> TransformEpoch:
        """``pcn_epoch`` parsed: an epoch >= 1, or "auto"."""
        return parse_epoch(self.pcn_epoch)

    @cached_property
    def keep(self) -> KeepArg:
        """``pcn_keep`` parsed: "all", a k, a variance fraction, or {layer pattern: rule}."""
        return parse_keep(self.pcn_keep)

    def compress_kwargs(self) -> dict[str, Any]:
        keep_out = self.pcn_output_keep
        if keep_out is not None and keep_out > 1:  # a count; 1.0 is the fraction "keep all"
            keep_out = int(keep_out)
        budget = self.pcn_budget
        if budget is not None and budget >= 1:
            budget = int(budget)
        return {"keep": self.keep, "width_fraction": self.pcn_width_fraction,
                "eig_threshold": self.pcn_eig_threshold, "budget": budget, "budget_of": self.pcn_budget_of,
                "min_fraction": self.pcn_min_fraction, "output": self.pcn_output, "output_keep": keep_out,
                "eigen_weighted": self.pcn_eigen_weighted, "exclude": self.pcn_exclude, "plan": self.pcn_exec}


@METHODS.register("pcn", help="Principal Component Networks: shrink layers by PCA of their inputs (Waleffe 2020)")
class PCN(Method):
    Options = PCNOptions

    def __init__(self, options: PCNOptions | None = None) -> None:
        super().__init__(options)
        self.spec: dict[str, Any] | None = None
        self.epoch_done: int | None = None
        self.prev: PCNStats | None = None
        self.overlaps: list[float] = []
        self.before: int | None = None
        self.before_flops: int | None = None
        self.batch_size = 128  # the training batch, for the execution plan's cost model

    def setup(self, state: TrainState) -> None:
        o = self.options
        if o.epoch != "auto" and o.epoch >= state.epochs:
            raise DrtError(f"pcn_epoch {o.epoch} must be before the last epoch ({state.epochs})")
        if pcn_layers(state.model):
            raise DrtError("the model already has PCN layers; transforming twice is not supported")
        if o.epoch == "auto" and o.pcn_auto_latest is not None and o.pcn_auto_latest >= state.epochs:
            raise DrtError(f"pcn_auto_latest {o.pcn_auto_latest} must be before the last epoch ({state.epochs})")
        check_layer_rules(state.model, o.keep, o.pcn_exclude)  # now, not after E epochs
        self.dry_run(state)
        if o.pcn_output:
            check_output_graph(state.model, state.input_shape, o.keep, o.pcn_exclude)
        world = dist.current().world_size
        first = next(iter(state.training_batches()), None)
        if first is not None:
            self.batch_size = len(first[0])
        if world > 1:  # every rank must see samples, or one fails alone while the others wait in all-reduce
            per_rank = len(next(iter(state.training_batches()))[0])
            if o.pcn_samples < world * per_rank:
                raise DrtError(f"pcn_samples {o.pcn_samples} is below one global batch ({world} x {per_rank}); "
                               "under DDP every rank must contribute statistics")

    def plan(self, model: nn.Module, stats: PCNStats, keep: KeepArg | None = None) -> dict[str, int]:
        """The components ``compress`` would keep per layer under these options (``keep`` overrides)."""
        kw = self.options.compress_kwargs()
        return plan_components(model, stats, kw["keep"] if keep is None else keep,
                               width_fraction=kw["width_fraction"], eig_threshold=kw["eig_threshold"],
                               budget=kw["budget"], budget_of=kw["budget_of"], min_fraction=kw["min_fraction"],
                               exclude=kw["exclude"])

    def dry_run(self, state: TrainState) -> None:
        """Plan the transform on one batch's statistics, so that a k beyond a layer's width, a model with
        nothing to transform or a layer PCN cannot replace is an error now rather than after E epochs."""
        x = next(iter(state.training_batches()), None)
        if x is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one batch: rank-deficient covariances are expected
            probe = collect(state.model, [x[0]], max_samples=len(x[0]), pool_to=self.options.pcn_pool_to)
        ks = self.plan(state.model, probe)
        if not ks:
            raise DrtError(f"PCN: no layer to transform in this model (layers with statistics: "
                           f"{', '.join(probe.layers) or 'none'}; the first layer is never transformed)")
        check_replaceable(state.model, ks)

    def stats(self, state: TrainState) -> PCNStats:
        """Input statistics of ``pcn_samples`` training samples, summed over ranks."""
        o = self.options
        batches = rank_share(state.training_batches(), o.pcn_samples)
        return collect(state.model, batches, max_samples=o.pcn_samples, pool_to=o.pcn_pool_to).all_reduce_()

    def due(self, state: TrainState) -> tuple[bool, PCNStats | None]:
        o = self.options
        if o.epoch != "auto":
            return state.epoch == o.epoch, None
        latest = o.pcn_auto_latest or max(1, state.epochs // 2)
        cur = self.stats(state)
        if self.prev is not None:
            ks = self.plan(state.model, cur, o.keep if o.keep != "all" else 0.99)
            overlaps = subspace_overlaps(self.prev, cur, ks)  # over the layers the transform would change
            mean = sum(overlaps.values()) / max(len(overlaps), 1)
            self.overlaps.append(mean)
            state.log["pcn_overlap"] = mean
            if mean >= o.pcn_auto_overlap:
                return True, cur
        self.prev = cur
        return state.epoch >= latest, cur

    def epoch_end(self, state: TrainState) -> nn.Module | None:
        if self.spec is not None or state.epoch >= state.epochs:
            return None
        go, stats = self.due(state)
        if not go:
            return None
        stats = stats or self.stats(state)
        self.before = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
        self.before_flops = forward_flops(state.model, state.input_shape, state.device)
        small = compress(state.model, stats, **self.options.compress_kwargs(), batch_size=self.batch_size)
        self.spec, self.epoch_done, self.prev = pcn_spec(small), state.epoch, None
        state.log["pcn_transform"] = state.epoch
        return small

    def summary(self, state: TrainState) -> dict[str, Any]:
        layers = pcn_layers(state.model)
        out: dict[str, Any] = {
            "pcn_epoch": self.epoch_done, "pcn_overlaps": self.overlaps, "params_before_pcn": self.before,
            "flops_before_pcn": self.before_flops,
            "pcn_layers": {n: {"k": int(m.k), "d": int(m.d), "exec": m.exec_mode} for n, m in layers.items()}}
        o = self.options
        if o.pcn_budget is not None and self.before and self.before_flops:
            now = (sum(p.numel() for p in state.model.parameters() if p.requires_grad) if o.pcn_budget_of == "params"
                   else forward_flops(state.model, state.input_shape, state.device))
            base = self.before if o.pcn_budget_of == "params" else self.before_flops
            out["pcn_budget_target"] = o.pcn_budget if o.pcn_budget < 1 else o.pcn_budget / base
            out["pcn_budget_achieved"] = now / base
        return out

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": json.dumps(self.spec), "epoch": self.epoch_done or 0,
                               "overlaps": list(self.overlaps), "before": self.before or 0,
                               "before_flops": self.before_flops or 0, "batch_size": self.batch_size}
        if self.prev is not None:
            out["prev"] = self.prev.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        self.spec = json.loads(state["spec"])
        self.epoch_done = state["epoch"] or None
        self.overlaps, self.before = list(state["overlaps"]), state["before"] or None
        self.before_flops = state.get("before_flops") or None
        self.batch_size = int(state.get("batch_size", self.batch_size))
        self.prev = PCNStats.from_state_dict(state["prev"]) if "prev" in state else None
        return rebuild(model, self.spec) if self.spec else model
