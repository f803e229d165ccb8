"""Pruning-at-initialization scores as pure functions: model in, {name: score} out, higher = keep.

No function mutates the caller's model (each works on a deep copy, or only reads). ``batches``
is a re-iterable sequence of ``(inputs, targets)`` and ``loss_fn(logits, targets)`` a scalar loss
(e.g. ``F.cross_entropy``). The copy keeps the caller's train/eval mode (SynFlow forces eval).
``names`` selects the scored parameters (default ``prunable(model)``).

Distributed training: data-driven scores take ``reduce``, called on the raw gradients (summed
over ``batches``, before any |.|) to average them over ranks (e.g. ``drt.dist.mean_``), so every
rank scores the gradient of the global batch. Without ``reduce`` the local gradient is used.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from drt.errors import DrtError
from drt.models import name_of
from drt.sparse.distributions import check_sparsity, global_topk, kept_total, mask_info
from drt.sparse.masks import MaskSet, prunable

LossFn = Callable[[Tensor, Tensor], Tensor]
Batches = Iterable[tuple[Tensor, Tensor]]
GradReduce = Callable[[dict[str, Tensor]], None]  # e.g. averages the gradients over ranks, in place


def _reduce_(grads: dict[str, Tensor], reduce: GradReduce | None) -> dict[str, Tensor]:
    if reduce is not None:
        reduce(grads)
    return grads


def _autograd(out: Tensor, params: Mapping[str, Tensor], create_graph: bool = False,
           second_order: bool = False) -> list[Tensor]:
    """d out / d params; DrtError naming weights the forward pass never used (a second-order
    term that is structurally zero counts as zeros)."""
    grads = torch.autograd.grad(out, list(params.values()), create_graph=create_graph, allow_unused=True)
    unused = [n for n, g in zip(params, grads, strict=True) if g is None]
    if unused and not second_order:
        raise DrtError(f"scores need every pruned weight in the forward pass; unused: {', '.join(unused)}")
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]


def _named(model: nn.Module, names: Sequence[str] | None) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    names = list(prunable(model)) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise DrtError(f"parameters to score not in model: {', '.join(missing)}")
    if not names:
        raise DrtError(f"{name_of(model)} has no prunable weights (conv or linear) to score")
    return {n: params[n].requires_grad_(True) for n in names}  # always called on a copy


def _grads(model: nn.Module, params: dict[str, Tensor], loss_fn: LossFn, batches: Batches,
           scale: float = 1.0, reduce: GradReduce | None = None) -> dict[str, Tensor]:
    """Gradient of the summed per-batch losses (of logits / scale) w.r.t. ``params``, then ``reduce``d;
    no .grad written."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    seen = False
    for x, y in batches:
        loss = loss_fn(model(x) / scale, y)
        for n, g in zip(params, _autograd(loss, params), strict=True):
            total[n] += g
        seen = True
    if not seen:
        raise DrtError("data-driven scores need at least one batch; got none")
    return _reduce_(total, reduce)


def random_scores(params: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """U(0, 1) scores from ``generator`` (random pruning; same seed -> same scores on every rank)."""
    return {n: torch.rand(p.shape, generator=generator, device=generator.device).to(p.device)
            for n, p in params.items()}


def magnitude_scores(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """|theta| (magnitude pruning at init, and IMP's per-round score)."""
    return {n: p.detach().abs().clone() for n, p in params.items()}


def snip_scores(model: nn.Module, loss_fn: LossFn, batches: Batches,
                names: Sequence[str] | None = None, reduce: GradReduce | None = None) -> dict[str, Tensor]:
    """SNIP (Lee et al. 2019) |g * theta| with g the gradient of the loss summed over ``batches``.

    Official SNIP uses one batch; with several, gradients are accumulated before the absolute
    value (as in the SynFlow authors' code). Unnormalised (the ranking is the same). FreezeNet's
    saliency (Wimmer et al. 2020) is this score.
    """
    model = copy.deepcopy(model)
    params = _named(model, names)
    grads = _grads(model, params, loss_fn, batches, reduce=reduce)
    return {n: (grads[n] * p.detach()).abs() for n, p in params.items()}


def grasp_scores(model: nn.Module, loss_fn: LossFn, batches: Batches, names: Sequence[str] | None = None,
                 T: float = 200.0, reduce: GradReduce | None = None) -> dict[str, Tensor]:
    """GraSP (Wang et al. 2020) keep-score theta * Hg, the NEGATIVE of the paper's -theta * Hg.

    GraSP removes the largest -theta*Hg, so keeping the top-k of the returned score is exactly
    GraSP. Logits are divided by ``T``; g = sum of batch gradients with no graph, then
    Hg = sum over batches of grad(g . grad L_b) by double backprop (official code, without its
    half-batch split, which only rescales). ``reduce`` applies to g and to Hg.
    """
    model = copy.deepcopy(model)
    params = _named(model, names)
    batches = list(batches)
    g = _grads(model, params, loss_fn, batches, scale=T, reduce=reduce)
    hg = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        loss = loss_fn(model(x) / T, y)
        grad_f = _autograd(loss, params, create_graph=True)
        z = cast(Tensor, sum((g[n] * gf).sum() for n, gf in zip(params, grad_f, strict=True)))
        for n, h in zip(params, _autograd(z, params, second_order=True), strict=True):
            hg[n] += h
    _reduce_(hg, reduce)
    return {n: p.detach() * hg[n] for n, p in params.items()}


def _linearized(model: nn.Module, double: bool) -> nn.Module:
    """Copy of ``model`` in eval mode with every parameter and buffer replaced by |.| (SynFlow)."""
    net = copy.deepcopy(model).eval()
    if double:
        net.double()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point() or t.is_complex():
                t.abs_()
    return net


def _synflow_on(net: nn.Module, params: dict[str, Tensor], input_shape: Sequence[int]
                ) -> dict[str, Tensor]:
    p0 = next(iter(params.values()))
    x = torch.ones((1, *input_shape), dtype=p0.dtype, device=p0.device)
    r = net(x).sum()
    grads = _autograd(r, params)
    return {n: (p.detach() * g).abs() for (n, p), g in zip(params.items(), grads, strict=True)}


def synflow_scores(model: nn.Module, input_shape: Sequence[int], names: Sequence[str] | None = None,
                   double: bool = True) -> dict[str, Tensor]:
    """SynFlow (Tanaka et al. 2020) |theta * dR/dtheta|, R = sum of the output of |theta| on all-ones.

    Data-free: a copy with absolute-valued parameters and BN buffers, eval mode, one all-ones
    input of ``input_shape`` (no batch dim), float64 if ``double``. Scores are float64 then.
    """
    net = _linearized(model, double)
    return _synflow_on(net, _named(net, names), input_shape)


def _exp_schedule(sparsity: float, rounds: int) -> list[float]:
    """Densities kappa^{k/n}, k = 1..n (SynFlow; Iter-SNIP/FORCE kappa^{(t+1)/T})."""
    kappa = 1.0 - check_sparsity(sparsity)
    if rounds < 1:
        raise DrtError(f"rounds/steps must be >= 1, got {rounds}")
    return [kappa ** (k / rounds) for k in range(1, rounds + 1)]


def _prune_round(scores: dict[str, Tensor], keep: dict[str, Tensor] | None, density: float, sparsity: float,
                 guard: bool, fired: set[str]) -> dict[str, Tensor]:
    """Global top-k at ``density`` (last round: exactly ``sparsity``); weights outside ``keep`` excluded."""
    if keep is not None:
        scores = {n: s.masked_fill(~keep[n].to(s.device), float("-inf")) for n, s in scores.items()}
    n_total = sum(s.numel() for s in scores.values())
    k = max(kept_total(n_total, sparsity), round(density * n_total))
    masks, f = global_topk(scores, sparsity, guard=guard, keep=k)
    fired.update(f)
    return masks


def synflow_prune(model: nn.Module, input_shape: Sequence[int], sparsity: float, rounds: int = 100,
                  names: Sequence[str] | None = None, double: bool = True,
                  guard: bool = True) -> tuple[MaskSet, dict]:
    """Iterative SynFlow: ``rounds`` rounds to densities kappa^{k/n}, masking the copy between rounds.

    Pruned weights stay pruned. Returns (MaskSet, info as ``masks_from_scores``; guard firings of
    all rounds). As in the official code biases are |.|-valued too; large biases inject flow that
    breaks the conservation argument and can still empty early layers (the guard catches it).
    """
    densities = _exp_schedule(sparsity, rounds)
    net = _linearized(model, double)
    params = _named(net, names)
    keep: dict[str, Tensor] | None = None
    fired: set[str] = set()
    for d in densities:
        keep = _prune_round(_synflow_on(net, params, input_shape), keep, d, sparsity, guard, fired)
        with torch.no_grad():
            for n, p in params.items():
                p.masked_fill_(~keep[n].to(p.device), 0)
    assert keep is not None  # rounds >= 1
    return _result(model, keep, params, sparsity, fired)


def _result(model: nn.Module, keep: dict[str, Tensor], params: Mapping[str, Tensor], sparsity: float,
            fired: set[str]) -> tuple[MaskSet, dict]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ms = MaskSet({n: keep[n].to(device) for n in params})
    return ms, mask_info(ms, "global", sparsity, guard_fired=[n for n in params if n in fired])


def _iterative(model: nn.Module, loss_fn: LossFn, batches: Batches, sparsity: float, steps: int,
               names: Sequence[str] | None, guard: bool, dense_theta: bool,
               reduce: GradReduce | None) -> tuple[MaskSet, dict]:
    densities = _exp_schedule(sparsity, steps)
    net = copy.deepcopy(model)
    params = _named(net, names)
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    batches = list(batches)
    keep: dict[str, Tensor] | None = None
    fired: set[str] = set()
    for d in densities:
        grads = _grads(net, params, loss_fn, batches, reduce=reduce)  # w.r.t. the masked weights theta0 * m
        theta = theta0 if dense_theta else {n: p.detach() for n, p in params.items()}
        scores = {n: (theta[n] * grads[n]).abs() for n in params}
        keep = _prune_round(scores, None if dense_theta else keep, d, sparsity, guard, fired)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(theta0[n] * keep[n].to(p.device))
    assert keep is not None  # steps >= 1
    return _result(model, keep, params, sparsity, fired)


def iterative_snip(model: nn.Module, loss_fn: LossFn, batches: Batches, sparsity: float, steps: int = 60,
                   names: Sequence[str] | None = None, guard: bool = True,
                   reduce: GradReduce | None = None) -> tuple[MaskSet, dict]:
    """Iterative SNIP (de Jorge et al. 2021): densities kappa^{(t+1)/T}, SNIP on the masked weights.

    Pruned weights score 0 and are excluded, so they never return. Returns (MaskSet, info).
    """
    return _iterative(model, loss_fn, batches, sparsity, steps, names, guard, dense_theta=False, reduce=reduce)


def force(model: nn.Module, loss_fn: LossFn, batches: Batches, sparsity: float, steps: int = 60,
          names: Sequence[str] | None = None, guard: bool = True,
          reduce: GradReduce | None = None) -> tuple[MaskSet, dict]:
    """FORCE (de Jorge et al. 2021): |theta0 * dL/dw| with w = theta0 * m, so pruned weights can return.

    Same schedule as ``iterative_snip``; every step re-ranks all weights. Returns (MaskSet, info).
    """
    return _iterative(model, loss_fn, batches, sparsity, steps, names, guard, dense_theta=True, reduce=reduce)
