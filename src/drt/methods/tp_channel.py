"""The structured peer of PCN: Torch-Pruning channel pruning run through our loop.

``tp-channel``: train dense for E epochs, then physically remove whole channels with Torch-Pruning
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023; package ``torch-pruning``),
magnitude importance, until the trainable count reaches a target (e.g. a PCN run's), and continue
training the smaller network (optimizer rebuilt, LR schedule at absolute epochs, as PCN). The
target is searched on the initial weights too, so an unsupported model or an unreachable target
fails before training; the pruning itself ranks the trained weights and is held to the same tolerance.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.models import name_of
from drt.options import opt

SUPPORTED = "vgg*, resnet* (shortcut conv), conv4, conv6, conv1d, lenet5, mlp"
BISECT_STEPS = 24
Found = tuple[nn.Module, list[list[Any]], int, int]  # (pruned copy, Torch-Pruning history, target, achieved)


def trainable(model: nn.Module) -> int:
    """Trainable parameter elements (what ``params_trainable`` counts for a dense model)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layers(model: nn.Module) -> dict[str, nn.Linear | nn.modules.conv._ConvNd]:
    """Conv and linear layers by qualified name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)}


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels / features of every conv and linear layer."""
    return {n: m.weight.shape[0] for n, m in layers(model).items()}


def _tp() -> Any:
    """The ``torch_pruning`` module (imported on first use), or a DrtError saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise DrtError("tp-channel needs the torch-pruning package: pip install torch-pruning") from None
    return torch_pruning


def _traced(model: nn.Module, input_shape: tuple[int, ...], fn: Any) -> Any:
    """Run ``fn`` (which traces ``model``) in eval mode, so BN statistics are untouched; grads enabled."""
    was = model.training
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(torch.zeros((1, *input_shape), device=next(model.parameters()).device))
    finally:
        model.train(was)


def classifier(model: nn.Module) -> nn.Module:
    """The last conv/linear layer: its outputs are the classes, never pruned."""
    return list(layers(model).values())[-1]


def prune_channels(model: nn.Module, input_shape: tuple[int, ...], ratio: float, norm: int = 2,
                   global_: bool = False) -> tuple[nn.Module, list[list[Any]]]:
    """A copy of ``model`` with a fraction ``ratio`` of channels removed (Torch-Pruning), and its history.

    Magnitude (L``norm``) group importance; the classifier keeps its outputs and the network input is
    never pruned. ``global_`` ranks channels across layers instead of pruning ``ratio`` of every layer.
    ``model`` is not changed.
    """
    tp = _tp()
    small = copy.deepcopy(model)

    def run(x: torch.Tensor) -> Any:  # a torch_pruning BasePruner
        pruner = tp.pruner.BasePruner(small, x, tp.importance.MagnitudeImportance(p=norm), pruning_ratio=ratio,
                                      ignored_layers=[classifier(small)], global_pruning=global_)
        pruner.step()
        return pruner

    history = _traced(small, input_shape, run).DG.pruning_history()
    return small, [[str(n), bool(out), [int(i) for i in idx]] for n, out, idx in history]


def prune_greedy_(model: nn.Module, input_shape: tuple[int, ...], target: int, norm: int = 2,
                  max_steps: int = 2000) -> tuple[list[tuple[int, int]], list[list[Any]]]:
    """Remove one channel at a time (lowest mean-normalised magnitude over all groups) until ``target``.

    Torch-Pruning's global ranking, one channel per step; mutates ``model``. Returns (per step, the
    trainable count and the length of the history prefix that reaches it; the whole history,
    relative to ``model`` as given).
    """
    tp = _tp()
    imp = tp.importance.MagnitudeImportance(p=norm)
    steps: list[tuple[int, int]] = []
    history: list[list[Any]] = []

    def run(x: torch.Tensor) -> None:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        while trainable(model) > target and len(steps) < max_steps:
            best = None
            for group in dg.get_all_groups(ignored_layers=[classifier(model)]):
                root, fn = group[0].dep.target.module, group[0].dep.handler
                scores = imp(group) if dg.get_out_channels(root) > 1 else None
                if scores is not None and (best is None or float(scores.min()) < best[0]):
                    best = (float(scores.min()), root, fn, int(scores.argmin()))
            if best is None:  # every layer is down to one channel
                break
            dg.get_pruning_group(best[1], best[2], idxs=[best[3]]).prune()
            steps.append((trainable(model), len(dg.pruning_history())))
        history.extend([str(n), bool(o), [int(i) for i in idx]] for n, o, idx in dg.pruning_history())

    _traced(model, input_shape, run)
    return steps, history


def replay_(model: nn.Module, input_shape: tuple[int, ...], history: list[list[Any]]) -> nn.Module:
    """Re-prune ``model`` in place to exactly the channels of a Torch-Pruning ``history``; returns it."""
    tp = _tp()
    _traced(model, input_shape,
            lambda x: tp.DependencyGraph().build_dependency(model, example_inputs=x).load_pruning_history(history))
    return model


def check_pruned(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """DrtError unless the pruned ``model`` still maps one input to ``num_classes`` outputs."""
    try:
        with torch.no_grad():
            out = _traced(model, input_shape, model)
        ok, why = out.shape == (1, num_classes), f"output shape {tuple(out.shape)}"
    except Exception as e:  # Torch-Pruning left inconsistent layers
        ok, why = False, str(e).splitlines()[0][:100]
    if not ok:
        raise DrtError(f"tp-channel: Torch-Pruning cannot prune {name_of(model)} correctly ({why}); "
                       f"supported: {SUPPORTED}")


def search(model: nn.Module, input_shape: tuple[int, ...], target: int, norm: int = 2, global_: bool = False,
           steps: int = BISECT_STEPS) -> tuple[list[list[Any]], int]:
    """(history, trainable count) of the channel-pruned ``model`` nearest ``target``.

    Bisects Torch-Pruning's channel ratio (per layer, or global), then from the nearest network above
    the target removes single channels (``prune_greedy_``) until it is reached. ``model`` is not changed.
    """
    narrowest = min(w for n, w in widths(model).items() if layers(model)[n] is not classifier(model))
    lo, hi = 0.0, 1.0 - 1.0 / narrowest - 1e-9  # per-layer pruning keeps >= 1 channel in every layer
    found: list[tuple[int, list[list[Any]]]] = []
    for i in range(steps + 1):
        ratio = hi if i == 0 else (lo + hi) / 2
        small, history = prune_channels(model, input_shape, ratio, norm, global_)
        n = trainable(small)
        found.append((n, history))
        if n == target:
            return history, n
        if i == 0 and n > target:  # even the largest ratio stays above: only single channels go further
            break
        lo, hi = (ratio, hi) if n > target else (lo, ratio)
    above = [f for f in found if f[0] > target]
    if above:
        n, history = min(above, key=lambda f: f[0])
        greedy, more = prune_greedy_(replay_(copy.deepcopy(model), input_shape, history), input_shape, target, norm)
        found += [(m, history + more[:length]) for m, length in greedy]
    n, history = min(found, key=lambda f: (abs(f[0] - target), f[0]))
    return history, n


@dataclass(frozen=True)
class TPChannelOptions:
    title: ClassVar[str] = "channel pruning (tp-channel)"
    tp_epoch: int = opt(1, "prune channels after this many dense epochs (0: at initialisation)")
    tp_target: float = opt(0.5, "trainable parameters after pruning: a count, or a fraction < 1 of the dense count")
    tp_norm: int = opt(2, "channel importance: L1 (1) or L2 (2) norm of the channel group's weights")
    tp_global: bool = opt(False, "rank channels across layers (Torch-Pruning global_pruning), not per layer")
    tp_tolerance: float = opt(0.02, "largest relative distance of the pruned count from the target")

    def __post_init__(self) -> None:
        if self.tp_epoch < 0:
            raise DrtError(f"tp_epoch must be >= 0, got {self.tp_epoch}")
        if not self.tp_target > 0:
            raise DrtError(f"tp_target must be a positive count or a fraction in (0, 1), got {self.tp_target}")
        if self.tp_norm not in (1, 2):
            raise DrtError(f"tp_norm must be 1 or 2, got {self.tp_norm}")
        if not self.tp_tolerance >= 0:
            raise DrtError(f"tp_tolerance must be >= 0, got {self.tp_tolerance}")


@METHODS.register("tp-channel", help="Torch-Pruning: remove whole channels by magnitude after E epochs, "
                                     "down to a trainable-parameter target (peer of PCN)")
class TPChannel(Method):
    Options = TPChannelOptions

    def __init__(self, options: TPChannelOptions | None = None) -> None:
        super().__init__(options)
        self.history: list[list[Any]] = []
        self.info: dict[str, Any] = {}

    def target(self, dense: int) -> int:
        """The absolute target count for a ``dense`` trainable count."""
        t = self.options.tp_target
        n = int(t) if t >= 1 else round(t * dense)
        if not 0 < n < dense:
            raise DrtError(f"tp-channel: target {n:,} trainable parameters must be below the dense {dense:,}")
        return n

    def pruned(self, state: TrainState) -> Found:
        """(pruned copy of the model, its history, target, achieved count); DrtError if unsupported."""
        o, model = self.options, state.model
        target = self.target(trainable(model))
        _tp()
        if len(layers(model)) < 2:
            raise DrtError(f"tp-channel: {name_of(model)} has no hidden channels to prune (only a classifier)")
        try:
            history, n = search(model, state.input_shape, target, o.tp_norm, o.tp_global)
            small = replay_(copy.deepcopy(model), state.input_shape, history)
        except DrtError:
            raise
        except Exception as e:  # Torch-Pruning cannot trace or prune this architecture
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            raise DrtError(f"tp-channel: Torch-Pruning cannot prune {name_of(model)} ({why}); "
                           f"supported: {SUPPORTED}") from None
        check_pruned(small, state.input_shape, state.num_classes)
        return small, history, target, n

    def adopt(self, state: TrainState, found: Found) -> nn.Module:
        """Take the pruned network as the model; records what was kept."""
        small, self.history, target, n = found
        before = widths(state.model)
        self.info = {"tp_epoch": state.epoch, "params_dense": trainable(state.model), "tp_target": target,
                     "tp_achieved": n, "tp_error": n / target - 1, "input_shape": list(state.input_shape),
                     "channels": {k: [before[k], w] for k, w in widths(small).items()}}
        state.log["tp_prune"] = state.epoch
        return small.train(state.model.training)

    def setup(self, state: TrainState) -> nn.Module | None:
        o = self.options
        if o.tp_epoch >= state.epochs:
            raise DrtError(f"tp_epoch {o.tp_epoch} must be before the last epoch ({state.epochs})")
        found = self.checked(self.pruned(state))  # an unsupported model or unreachable target fails up front
        return self.adopt(state, found) if o.tp_epoch == 0 else None

    def checked(self, found: Found) -> Found:
        """``found`` unless its count is further from the target than ``tp_tolerance`` (DrtError)."""
        target, n = found[2], found[3]
        if abs(n / target - 1) > self.options.tp_tolerance:
            raise DrtError(f"tp-channel: the nearest channel-pruned count is {n:,}, {100 * (n / target - 1):+.1f}% "
                           f"from the target {target:,} (tolerance {100 * self.options.tp_tolerance:g}%)")
        return found

    def epoch_end(self, state: TrainState) -> nn.Module | None:
        if state.epoch == self.options.tp_epoch and not self.info:  # trained weights rank differently: re-search
            return self.adopt(state, self.checked(self.pruned(state)))
        return None

    def summary(self, state: TrainState) -> dict[str, Any]:
        return {k: v for k, v in self.info.items() if k != "input_shape"}

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history), "info": json.dumps(self.info)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        """Re-prune the fresh ``model`` to the checkpoint's channels (the weights are loaded afterwards)."""
        self.history, self.info = json.loads(state["history"]), json.loads(state["info"])
        return replay_(model, tuple(self.info["input_shape"]), self.history) if self.history else model
