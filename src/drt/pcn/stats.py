"""Collect PCN statistics: streaming moments of every eligible layer's actual input (forward pre-hooks).

Waleffe & Rekatsinas 2020: PCA of each layer's input (after BN / ReLU / pooling, whatever feeds it),
in eval mode, on un-augmented training samples (5000 on CIFAR in the reference).
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from drt import dist
from drt.analysis.pca import RunningMoments, as_observations
from drt.errors import DrtError, first_line
from drt.pcn.layers import PCNLayer, ineligible_reason

LayerFilter = Iterable[str] | Callable[[str, nn.Module], bool] | None


class PCNStats:
    """Per-basis input moments of a model's layers, plus how layers map to bases.

    ``moments[key]``: RunningMoments of the input of layer ``key``; ``keys[name]``: the basis key
    of layer ``name`` (layers reading the very same tensor share the first one's key);
    ``first``: layers reading the network input; ``ineligible``: layer name -> reason;
    ``samples``: samples used; ``sample_shape``: shape of one input sample; ``input_shapes``: layer name ->
    shape of one sample's input to that layer (for cost models; may be empty for old statistics).
    The eigen-decomposition is computed lazily and cached. Picklable; ``state_dict`` /
    ``from_state_dict`` and ``tensors()`` (for all-reduce across ranks) expose the raw sums.
    """

    def __init__(self, moments: dict[str, RunningMoments], keys: dict[str, str], first: list[str],
                 ineligible: dict[str, str], samples: int, sample_shape: tuple[int, ...],
                 input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.moments, self.keys, self.first = moments, keys, first
        self.ineligible, self.samples, self.sample_shape = ineligible, samples, sample_shape
        self.input_shapes = dict(input_shapes or {})
        self._eig: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def layers(self) -> list[str]:
        """Names of the layers with statistics, in forward order."""
        return list(self.keys)

    def key(self, name: str) -> str:
        if name not in self.keys:
            raise DrtError(f"no PCN statistics for layer {name!r}; collected: {', '.join(self.keys) or 'none'}")
        return self.keys[name]

    def eig(self, name: str) -> tuple[Tensor, Tensor]:
        """(eigenvalues descending (d,), eigenvectors (d, d)) of layer ``name``'s input, float64."""
        key = self.key(name)
        if key not in self._eig:
            self._eig[key] = self.moments[key].eig()
        return self._eig[key]

    def mean(self, name: str) -> Tensor:
        return self.moments[self.key(name)].mean()

    def eigvals(self, name: str) -> Tensor:
        return self.eig(name)[0]

    def dim(self, name: str) -> int:
        return self.moments[self.key(name)].dim

    def tensors(self) -> list[Tensor]:
        """All raw sums (each RunningMoments' count, total, outer), e.g. to all-reduce across ranks."""
        return [t for key in sorted(self.moments) for t in self.moments[key].tensors()]

    def all_reduce_(self) -> PCNStats:
        """Sum the raw moments over a ``torch.distributed`` process group (in place; no-op if not initialised)."""
        if dist.current().world_size > 1:
            dist.sum_(self.tensors())
            self.samples = int(dist.all_reduce_sum(self.samples)[0])
            self._eig.clear()
        return self

    def merge_(self, other: PCNStats) -> PCNStats:
        """Add ``other``'s observations (same model and layers) into self; mutates self."""
        if other.keys != self.keys:
            raise DrtError("cannot merge PCN statistics of different layer sets")
        for key, m in self.moments.items():
            m.add_(other.moments[key])
        self.samples += other.samples
        self._eig.clear()
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"moments": {k: m.state_dict() for k, m in self.moments.items()}, "keys": dict(self.keys),
                "first": list(self.first), "ineligible": dict(self.ineligible), "samples": self.samples,
                "sample_shape": list(self.sample_shape),
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> PCNStats:
        moments = {k: RunningMoments.from_state_dict(m) for k, m in state["moments"].items()}
        return cls(moments, dict(state["keys"]), list(state["first"]), dict(state["ineligible"]),
                   int(state["samples"]), tuple(state["sample_shape"]),
                   {k: tuple(v) for k, v in state.get("input_shapes", {}).items()})


def eligible_layers(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(eligible layers, ineligible conv/linear/PCN layers -> reason), by qualified name."""
    ok: dict[str, nn.Module] = {}
    bad: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd | PCNLayer):
            reason = ineligible_reason(m)
            if reason is None:
                ok[name] = m
            else:
                bad[name] = reason
    return ok, bad


def select_layers(names: Iterable[str], chosen: LayerFilter, modules: Mapping[str, nn.Module],
                  what: str = "layers") -> list[str]:
    """Names in ``names`` picked by ``chosen`` (None = all; names / glob patterns; or a callable)."""
    names = list(names)
    if chosen is None:
        return names
    if callable(chosen):
        return [n for n in names if chosen(n, modules[n])]
    out: set[str] = set()
    for pat in [chosen] if isinstance(chosen, str) else chosen:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise DrtError(f"{what}: {pat!r} matches no eligible layer; eligible: {', '.join(names)}")
        out.update(hit)
    return [n for n in names if n in out]


def _batch_input(batch: Any) -> Tensor:
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, Tensor):
        raise DrtError(f"PCN statistics: batches must be tensors or (input, target) pairs; got {type(x).__name__}")
    return x


def collect(model: nn.Module, batches: Iterable[Any], *, layers: LayerFilter = None, max_samples: int = 5000,
            pool_to: int | None = None, exclude_first: bool = True) -> PCNStats:
    """Stream the input moments of ``model``'s eligible layers (Linear, Conv1d/2d with groups=1).

    ``batches``: input tensors or (input, target) pairs; consumed until ``max_samples`` samples.
    ``layers``: names / glob patterns / ``callable(name, module)`` to restrict the layers.
    ``pool_to``: average-pool conv maps larger than this per spatial dimension. ``exclude_first``:
    skip the layer(s) reading the network input. Runs in eval mode without gradients; every
    module's train/eval flag is restored. Layers reading the same tensor (a ResNet block's conv1
    and projection shortcut) share one set of statistics (one basis key). Raises DrtError if a
    layer gets fewer than 2 observations; warns when a layer has fewer observations than width.
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise DrtError(f"max_samples must be a positive int; got {max_samples!r}")
    if pool_to is not None and (isinstance(pool_to, bool) or not isinstance(pool_to, int) or pool_to < 1):
        raise DrtError(f"pool_to must be a positive int or None; got {pool_to!r}")
    eligible, ineligible = eligible_layers(model)
    if not eligible:
        bad = "; ".join(f"{n}: {r}" for n, r in ineligible.items())
        raise DrtError("PCN statistics: the model has no Linear/Conv1d/Conv2d layer PCN can transform"
                       + (f" ({bad})" if bad else ""))
    if isinstance(batches, Tensor):  # one batch, not an iterable of samples
        batches = [batches]
    chosen = set(select_layers(eligible, layers, eligible))
    tracker = _Tracker(eligible, chosen, exclude_first, pool_to)
    handles = [m.register_forward_pre_hook(tracker.hook(n)) for n, m in eligible.items()]
    # a weighted module before the first eligible layer (an embedding, a grouped or 3-D conv) means that
    # layer does not read the network input
    handles += [m.register_forward_pre_hook(tracker.before_first) for m in model.modules()
                if m is not model and m not in eligible.values()
                and any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    modes = {m: m.training for m in model.modules()}
    ref = next(iter(model.parameters()), None)
    seen, shape = 0, None
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                x = _batch_input(batch)[: max_samples - seen]
                if x.dim() < 2:
                    raise DrtError(f"PCN statistics: a batch must be (samples, ...) with a sample dimension; "
                                   f"got shape {tuple(x.shape)}")
                if ref is not None:
                    x = x.to(ref.device, ref.dtype if x.is_floating_point() else x.dtype)
                shape = shape or tuple(x.shape[1:])
                try:
                    model(x)
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    raise DrtError(f"PCN statistics: the model failed on a batch of shape {tuple(x.shape)} "
                                   f"({first_line(e)})") from None
                tracker.first_pass = False
                seen += x.shape[0]
                if seen >= max_samples:
                    break
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return tracker.result(seen, shape, ineligible)


class _Tracker:
    """Hook state of one ``collect`` call: call order, shared inputs, moments."""

    def __init__(self, eligible: Mapping[str, nn.Module], chosen: set[str], exclude_first: bool,
                 pool_to: int | None) -> None:
        self.eligible, self.chosen, self.exclude_first, self.pool_to = eligible, chosen, exclude_first, pool_to
        self.first_pass = True
        self.preceded = False  # a weighted non-eligible module ran before any eligible layer
        self.first: list[str] = []
        self.order: list[str] = []
        self.keys: dict[str, str] = {}
        self.moments: dict[str, RunningMoments] = {}
        self._inputs: list[tuple[weakref.ref, str]] = []  # first pass: (input tensor, layer name)
        self.shapes: dict[str, tuple[int, ...]] = {}  # one sample's input shape per layer

    def hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if self.first_pass:
                self._register(name, x)
            key = self.keys.get(name)
            if key != name:  # not collected, or a second reader of a tensor its key already saw
                return
            obs = as_observations(x, channels_last=isinstance(module, nn.Linear), pool_to=self.pool_to)
            if key not in self.moments:
                self.moments[key] = RunningMoments(obs.shape[1], device=obs.device)
            self.moments[key].update(obs)

        return fn

    def before_first(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.first_pass and not self.order:
            self.preceded = True

    def _register(self, name: str, x: Tensor) -> None:
        if name in self.order:
            return
        self.order.append(name)
        self.shapes[name] = tuple(x.shape[1:])
        same = next((n for r, n in self._inputs if r() is x), None)
        self._inputs.append((weakref.ref(x), name))
        if (len(self.order) == 1 and not self.preceded) or (same is not None and same in self.first):
            self.first.append(name)
        if name not in self.chosen or (self.exclude_first and name in self.first):
            return
        self.keys[name] = self.keys.get(same, name) if same is not None else name

    def result(self, seen: int, shape: tuple[int, ...] | None, ineligible: dict[str, str]) -> PCNStats:
        self._inputs.clear()
        if seen == 0 or shape is None:
            raise DrtError("PCN statistics: no batches were given (need at least 2 observations per layer)")
        missing = sorted(self.chosen - set(self.order))
        if missing and not self.keys:
            raise DrtError(f"PCN statistics: no selected layer ran in the forward pass ({', '.join(missing)})")
        for key, m in self.moments.items():
            if not (bool(torch.isfinite(m.total).all()) and bool(torch.isfinite(m.outer).all())):
                raise DrtError(f"PCN statistics: layer {key!r} saw NaN or Inf inputs; check the batches and the model")
            if m.n < 2:
                raise DrtError(f"PCN statistics: layer {key!r} got {m.n} observation(s) from {seen} sample(s); "
                               "need at least 2 (pass more samples)")
        thin = [f"{k} ({m.n} < {m.dim})" for k, m in self.moments.items() if m.n < m.dim]
        if thin:
            warnings.warn(f"PCN statistics from {seen} samples: fewer observations than input width, so "
                          f"the covariance is rank-deficient, for {', '.join(thin)}", stacklevel=3)
        return PCNStats(self.moments, self.keys, self.first, ineligible, seen, shape, self.shapes)
