"""Freezing: train a subset of the weights, keep the rest at their random initial value θ₀ (survey §Freezing).

Whole frozen tensors get ``requires_grad=False`` and are left out of the optimizer, so weight decay
cannot touch them (pitfall 4). Partly frozen tensors have their gradient masked after backward, their
frozen entries restored to θ₀ after every step (so they stay bit-identical under any optimizer,
decoupled weight decay included) and their optimizer state zeroed there. ``frozen_masks()`` gives
name -> bool (True = trained) for the cost accounting.

- ``freezenet`` (Wimmer et al. 2020): SNIP's saliency |g ⊙ θ| on one batch keeps the top (1 − f) of
  conv and linear weights trainable; ``--freeze-fraction`` f is the *frozen* fraction (``--sparsity``
  before issue 16, still read with a warning; f = s trains as many weights as sparsity s). Biases and
  BN train. One global
  threshold, no collapse guard (a wholly frozen layer still computes). The stored model is the
  trained entries plus the init seed (``FreezeNet.export`` / ``load_freezenet``).
- ``bn-only``: every parameter except BN γ, β frozen at init (Frankle et al. 2021).
- ``freeze-layers``: named modules/parameters (fnmatch patterns) frozen whole, and/or a seeded random
  fraction of every conv/linear weight tensor's entries (exact count per tensor).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from drt import dist
from drt.analysis.cost import param_counts
from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.methods.shared import ScoreBatches
from drt.methods.sparse_base import score_batches
from drt.models import create, name_of
from drt.options import Options, opt, own_default
from drt.sparse import MaskSet, check_ranks_agree, global_topk, prunable, snip_scores, zero_state_
from drt.sparse.masks import pack

FREEZENET_FORMAT = "drt-freezenet-v1"


class FreezeMethod(Method):
    """Keeps chosen weights at θ₀; subclasses implement ``choose(state) -> (whole names, {name: trained})``."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.whole: dict[str, tuple[int, ...]] = {}  # frozen tensors -> shape
        self.trained: dict[str, Tensor] = {}  # partly frozen tensors: True = trained
        self.frozen_values: dict[str, Tensor] = {}  # their frozen entries' θ₀ (row-major order)

    def choose(self, state: TrainState) -> tuple[Sequence[str], Mapping[str, Tensor]]:
        raise NotImplementedError

    def setup(self, state: TrainState) -> None:
        chosen, partial = self.choose(state)
        params = dict(state.model.named_parameters())
        whole = set(chosen) | {n for n, m in partial.items() if not m.any()}
        self.whole = {n: tuple(p.shape) for n, p in params.items() if n in whole}
        if len(self.whole) == len(params):
            raise DrtError(f"{type(self).__name__}: every parameter of {name_of(state.model)} would be "
                           "frozen; nothing left to train")
        self.trained = {n: m.to(params[n].device) for n, m in partial.items() if n not in whole and not m.all()}
        check_ranks_agree(MaskSet(self.trained), f"{type(self).__name__} frozen entries")
        self.frozen_values = {n: params[n].detach()[~m].clone() for n, m in self.trained.items()}
        self.attach(state)

    def attach(self, state: TrainState) -> None:
        for n, p in state.model.named_parameters():
            if n in self.whole:
                p.requires_grad_(False)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for n, p in model.named_parameters() if p.requires_grad and n not in self.whole]
        return [{"params": params, "weight_decay": weight_decay}]

    def after_backward(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        for n, m in self.trained.items():
            grad = params[n].grad
            if grad is not None:
                grad.masked_fill_(~m, 0)

    @torch.no_grad()
    def after_step(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        for n, m in self.trained.items():
            frozen = ~m
            params[n][frozen] = self.frozen_values[n]
            if state.optimizer is not None:
                zero_state_(state.optimizer, params[n], frozen)

    def frozen_masks(self) -> dict[str, Tensor]:
        whole = {n: torch.zeros(s, dtype=torch.bool) for n, s in self.whole.items()}
        return {**whole, **self.trained}

    def summary(self, state: TrainState) -> dict[str, Any]:
        total = sum(p.numel() for p in state.model.parameters())
        frozen = sum(int(torch.Size(s).numel()) for s in self.whole.values())
        frozen += sum(int((~m).sum()) for m in self.trained.values())
        return {"frozen_params": frozen, "frozen_fraction": frozen / max(total, 1),
                "frozen_tensors": list(self.whole),
                "partly_frozen": {n: float((~m).float().mean()) for n, m in self.trained.items()},
                "frozen_counts": "entries of all parameters held at their initial value"}

    def state_dict(self) -> dict[str, Any]:
        return {"whole": {n: list(s) for n, s in self.whole.items()}, "trained": dict(self.trained),
                "frozen_values": dict(self.frozen_values)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        self.whole = {n: tuple(s) for n, s in state["whole"].items()}
        self.trained = {n: m.to(device) for n, m in state["trained"].items()}
        self.frozen_values = {n: v.to(device) for n, v in state["frozen_values"].items()}
        for n, p in model.named_parameters():
            if n in self.whole:
                p.requires_grad_(False)
        return model


@dataclass(frozen=True)
class FrozenFraction(Options):
    title: ClassVar[str] = "freezing"
    freeze_fraction: float = opt(0.0, "fraction of conv and linear weights frozen at their initial value θ₀ "
                                      "(never pruned): freezenet freezes the least salient over all layers, "
                                      "freeze-layers a random fraction of every tensor")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise DrtError(f"freeze_fraction must be in [0, 1], got {self.freeze_fraction}")


@dataclass(frozen=True)
class FreezeNetOptions(ScoreBatches, FrozenFraction):
    """``freeze_fraction`` (FreezeNet's freezing rate, default 0.9) and ``score_batches`` (FreezeNet: one).

    ``sparsity=`` is the name before issue 16: still accepted here (a FutureWarning), not a setting.
    """

    freeze_fraction: float = own_default(FrozenFraction, "freeze_fraction", 0.9)
    sparsity: InitVar[float | None] = None

    def __post_init__(self, sparsity: float | None = None) -> None:
        name = "freeze_fraction"
        if sparsity is not None:
            warnings.warn("FreezeNetOptions(sparsity=...) is freeze_fraction since issue 16 (the fraction frozen)",
                          FutureWarning, stacklevel=3)
            object.__setattr__(self, "freeze_fraction", sparsity)
            name = "freeze_fraction (given as sparsity)"
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise DrtError(f"{name} must be in [0, 1) for freezenet, got {self.freeze_fraction!r}")
        super().__post_init__()


@METHODS.register("freezenet", help="FreezeNet: SNIP saliency picks the trained weights, the rest frozen at θ₀, "
                                    "stored as a seed (Wimmer et al. 2020)")
class FreezeNet(FreezeMethod):
    Options = FreezeNetOptions

    def __init__(self, options: FreezeNetOptions | None = None) -> None:
        super().__init__(options)
        self.spec: dict[str, Any] = {}

    def choose(self, state: TrainState) -> tuple[Sequence[str], Mapping[str, Tensor]]:
        names = list(prunable(state.model))
        if not names:
            raise DrtError(f"freezenet: model {name_of(state.model)} has no conv or linear weights")
        self.spec = {"seed": state.seed, "input_shape": tuple(state.input_shape), "num_classes": state.num_classes}
        batches = score_batches(state, self.options.score_batches)
        scores = snip_scores(state.model, state.loss_fn, batches, names, reduce=dist.mean_)  # global-batch gradient
        keep, _ = global_topk(scores, self.options.freeze_fraction, guard=False)
        return [], keep

    def summary(self, state: TrainState) -> dict[str, Any]:
        weights = prunable(state.model)
        numel = sum(p.numel() for p in weights.values())
        frozen = sum(int((~self.frozen_masks().get(n, torch.ones(1, dtype=torch.bool))).sum()) for n in weights)
        trainable = param_counts(state.model, None, self.frozen_masks())["trainable"]
        return {**super().summary(state), "sparsity_target": self.options.freeze_fraction,
                "frozen_of_prunable": frozen / numel, "prunable_params": numel,
                "params_stored": trainable + 1, "stored_counts": "trained entries + the init seed (export())"}

    def export(self, model: nn.Module, name: str, **options: Any) -> dict[str, Any]:
        """Compact FreezeNet model: trained entries (index + value), other trained tensors, and the seed.

        ``name``/``options`` are the ``drt.models.create`` arguments the model was built with after
        ``torch.manual_seed(seed)``; DrtError if regenerating from them does not give its frozen weights.
        """
        spec = {**self.spec, "name": name, "options": dict(options)}
        theta0 = _init_model(spec).state_dict()
        frozen = self.frozen_masks()
        state = model.state_dict()
        for n, t in frozen.items():
            if not torch.equal(state[n].cpu()[~t.cpu()], theta0[n][~t.cpu()]):
                raise DrtError(f"frozen weights of {n} differ from create({name!r}) with seed {spec['seed']}; "
                               "export needs the model, options and seed used for training")
        dense, trained = pack(state, frozen)  # frozen_masks: True = trained
        return {"format": FREEZENET_FORMAT, "spec": spec, "trained": trained, "dense": dense}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "spec": dict(self.spec)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        self.spec = dict(state["spec"])
        return super().load_state_dict(state, model)


def _init_model(spec: Mapping[str, Any]) -> nn.Module:
    """``create(name, ...)`` right after ``manual_seed(seed)``: θ₀ (the caller's global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        return create(spec["name"], spec["input_shape"], spec["num_classes"], **spec["options"])


def load_freezenet(compact: Mapping[str, Any]) -> nn.Module:
    """A model from ``FreezeNet.export``: θ₀ regenerated from the seed, trained entries written over it."""
    if compact.get("format") != FREEZENET_FORMAT:
        raise DrtError(f"not a FreezeNet export (format {compact.get('format')!r}, expected {FREEZENET_FORMAT!r})")
    model = _init_model(compact["spec"])
    state = model.state_dict()
    for n, entry in compact["trained"].items():
        flat = state[n].reshape(-1).clone()
        flat[entry["index"].long()] = entry["value"]
        state[n] = flat.reshape(state[n].shape)
    state.update(compact["dense"])
    model.load_state_dict(state)
    return model


@METHODS.register("bn-only", help="train only BatchNorm γ, β; every other weight frozen at init (Frankle 2021)")
class BNOnly(FreezeMethod):
    def choose(self, state: TrainState) -> tuple[Sequence[str], Mapping[str, Tensor]]:
        bn = {f"{m}.{p}" for m, mod in state.model.named_modules() if isinstance(mod, _BatchNorm)
              for p, _ in mod.named_parameters(recurse=False)}
        if not bn:
            raise DrtError(f"bn-only trains BatchNorm γ, β; model {name_of(state.model)} has no "
                           "BatchNorm layers (try resnet20 or vgg11)")
        return [n for n, _ in state.model.named_parameters() if n not in bn], {}


@dataclass(frozen=True)
class FreezeLayersOptions(FrozenFraction):
    title: ClassVar[str] = "freezing"
    freeze: tuple[str, ...] | None = opt(None, "modules or parameters frozen whole: names or patterns, "
                                               "e.g. conv1,layer1.*")


def match_frozen(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Parameter names matched by names/fnmatch patterns of parameters or modules (whole subtree).

    DrtError naming the patterns that match nothing and the modules that hold parameters.
    """
    params = [n for n, _ in model.named_parameters()]
    hit: set[str] = set()
    unknown = []
    for pat in patterns:
        found = {n for n in params if fnmatch.fnmatchcase(n, pat)}
        for mod_name, _ in model.named_modules():
            if mod_name and fnmatch.fnmatchcase(mod_name, pat):
                found |= {n for n in params if n.startswith(mod_name + ".")}
        hit |= found
        if not found:
            unknown.append(pat)
    if unknown:
        owners = list(dict.fromkeys(n.rpartition(".")[0] for n in params))
        verb = "matches" if len(unknown) == 1 else "match"
        raise DrtError(f"--freeze {', '.join(unknown)} {verb} no module or parameter of {name_of(model)}; "
                       f"valid modules: {', '.join(owners)} (patterns like layer1.* allowed)")
    return [n for n in params if n in hit]


@METHODS.register("freeze-layers", help="freeze named layers whole and/or a random fraction of every weight "
                                        "tensor at init")
class FreezeLayers(FreezeMethod):
    Options = FreezeLayersOptions

    def choose(self, state: TrainState) -> tuple[Sequence[str], Mapping[str, Tensor]]:
        o = self.options
        if not o.freeze and o.freeze_fraction == 0.0:
            raise DrtError("freeze-layers needs --freeze NAMES and/or --freeze-fraction F > 0")
        whole = match_frozen(state.model, o.freeze or ())
        g = torch.Generator().manual_seed(state.seed + 29)
        partial = {}
        for n, p in prunable(state.model).items():
            if n in whole or o.freeze_fraction == 0.0:
                continue
            flat = torch.ones(p.numel(), dtype=torch.bool)
            flat[torch.randperm(p.numel(), generator=g)[:math.floor(o.freeze_fraction * p.numel() + 0.5)]] = False
            partial[n] = flat.reshape(p.shape)
        return whole, partial
