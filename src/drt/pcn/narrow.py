"""Output ("kill") transform: delete the producer channels a PCN layer's basis barely uses.

Waleffe & Rekatsinas 2020: score channel c of a PCN layer's input by s_c = sum_j |V[c, j]|
(optionally weighted by the eigenvalue of component j), keep the top m, and delete the rest from
the producing layers (filters and bias), the BN in between, the rows of mu and V (not
re-orthonormalised) and the input slices of every consumer. Which tensors must be cut together
comes from ``graph.channel_spaces``; a residual stream is one space, narrowed jointly with scores
averaged over all its PCN readers (the paper's ResNet rule).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from drt.errors import DrtError
from drt.pcn.graph import channel_spaces
from drt.pcn.layers import RESIZED, PCNLayer, weight_of


def _scores(layer: PCNLayer, per_channel: int, vals: Tensor | None) -> Tensor:
    """s_c = sum over features of channel c and components j of |V[f, j]| (x lambda_j if ``vals``)."""
    a = layer.basis.detach().abs().to(torch.float64)
    if vals is not None:
        a = a * vals[: layer.k].to(a)
    return a.sum(1).reshape(-1, per_channel).sum(1)


def _keep_count(rule: Any, channels: int, name: str) -> int:
    if isinstance(rule, bool) or not isinstance(rule, int | float):
        raise DrtError(f"output_keep for layer {name!r} must be an int in [1, {channels}] or a fraction in "
                       f"(0, 1]; got {rule!r}")
    if isinstance(rule, int):
        if not 1 <= rule <= channels:
            raise DrtError(f"output_keep for layer {name!r} must be an int in [1, {channels}]; got {rule}")
        return rule
    if not 0 < rule <= 1:
        raise DrtError(f"output_keep for layer {name!r} must be a fraction in (0, 1]; got {rule}")
    return max(1, math.ceil(rule * channels - 1e-9))


def _param(t: Tensor, old: Tensor) -> nn.Parameter:
    return nn.Parameter(t.clone(), requires_grad=old.requires_grad)


def _tensor(m: nn.Module, name: str) -> Tensor | None:
    """``m.<name>`` (a parameter, a buffer or None) of a layer or BN module, typed."""
    return getattr(m, name)


def _slice_out_(m: nn.Module, idx: Tensor) -> None:
    w, b = weight_of(m), _tensor(m, "bias")
    idx = idx.to(w.device)
    m.weight = _param(w.detach()[idx], w)
    if b is not None:
        m.bias = _param(b.detach()[idx], b)
    if isinstance(m, PCNLayer):
        m.out = len(idx)
    else:
        setattr(m, "out_features" if isinstance(m, nn.Linear) else "out_channels", len(idx))
        setattr(m, RESIZED, True)


def _slice_in_(m: nn.Module, idx: Tensor) -> None:
    w = weight_of(m)
    idx = idx.to(w.device)
    if isinstance(m, PCNLayer):
        m.mu, m.basis, m.d = m.mu[idx].clone(), m.basis[idx].clone(), len(idx)
        return
    m.weight = _param(w.detach()[:, idx], w)
    setattr(m, "in_features" if isinstance(m, nn.Linear) else "in_channels", len(idx))
    setattr(m, RESIZED, True)


def _slice_bn_(bn: _BatchNorm, idx: Tensor) -> None:
    idx = idx.to(next(bn.buffers(), torch.zeros(())).device)
    for t in ("weight", "bias"):
        old = _tensor(bn, t)
        if old is not None:
            setattr(bn, t, _param(old.detach()[idx], old))
    for t in ("running_mean", "running_var"):
        old = _tensor(bn, t)
        if old is not None:
            setattr(bn, t, old[idx].clone())
    bn.num_features = len(idx)
    setattr(bn, RESIZED, True)


def narrow_(model: nn.Module, sample_shape: tuple[int, ...], *, which: bool | Iterable[str] = True,
            keep: int | float | Mapping[str, int | float] | None = None, threshold: float | None = None,
            eigvals: Mapping[str, Tensor] | None = None, eigen_weighted: bool = False) -> dict[str, dict[str, Any]]:
    """Output transform, in place: narrow the input channel spaces of ``model``'s PCN layers.

    ``which``: True = every space read by a PCN layer, or names / glob patterns of PCN layers.
    Channels kept per space: ``keep`` = int m, float fraction of the channels, or a dict of PCN
    layer name / pattern -> either (largest over a space's readers); default the largest k among
    the space's PCN readers; or, if ``threshold`` is given, the channels with score >= threshold
    (at least one). ``eigen_weighted`` weights loadings by ``eigvals[layer]``. ``sample_shape``: one
    input sample's shape (for shape propagation). Returns, per narrowed space (keyed by its first
    PCN reader): channels before and after, and the producers, BNs and readers sliced.
    """
    if eigen_weighted and eigvals is None:
        raise DrtError("output transform: eigen_weighted scores need the layers' eigvals")
    weights = eigvals if eigen_weighted and eigvals is not None else {}
    pcn = {n: m for n, m in model.named_modules() if isinstance(m, PCNLayer)}
    wanted = set(pcn)
    if which is not True:
        pats = [] if isinstance(which, bool) else [which] if isinstance(which, str) else list(which)
        wanted = set()
        for pat in pats:
            hit = [n for n in pcn if fnmatch.fnmatchcase(n, pat)]
            if not hit:
                raise DrtError(f"output transform: {pat!r} matches no PCN layer; PCN layers: {', '.join(pcn)}")
            wanted.update(hit)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not threshold >= 0):
        raise DrtError(f"output transform: threshold must be a number >= 0; got {threshold!r}")
    if isinstance(keep, Mapping):
        for pat in keep:
            if not any(fnmatch.fnmatchcase(n, pat) for n in wanted):
                raise DrtError(f"output transform: output_keep {pat!r} matches no PCN layer; "
                               f"PCN layers: {', '.join(sorted(wanted))}")
    if eigen_weighted and eigvals is None:
        raise DrtError("output transform: eigen_weighted=True needs the eigenvalues (use compress(...))")
    modules = dict(model.named_modules())
    report: dict[str, dict[str, Any]] = {}
    for sp in channel_spaces(model, tuple(sample_shape)):
        readers = [(n, f) for n, f in sp.readers if n in pcn]
        if not any(n in wanted for n, _ in readers):
            continue
        label = readers[0][0]
        if sp.blocked:
            raise DrtError(f"output transform: cannot narrow the input channels of layer {label!r}: they "
                           f"{sp.blocked[0]}; name other layers with output=[...] or use output=False")
        channels = next(iter(sp.channels))
        s = torch.stack([_scores(pcn[n], f, weights[n] if eigen_weighted else None)
                         for n, f in readers]).mean(0)
        if threshold is not None:
            m = max(1, int((s >= threshold).sum()))
        elif isinstance(keep, Mapping):
            rules = [r for pat, r in keep.items() for n, _ in readers if fnmatch.fnmatchcase(n, pat)]
            m = max(_keep_count(r, channels, label) for r in rules) if rules else max(pcn[n].k for n, _ in readers)
        elif keep is not None:
            m = _keep_count(keep, channels, label)
        else:
            m = max(pcn[n].k for n, _ in readers)
        if m >= channels:
            continue
        idx = torch.argsort(-s, stable=True)[:m].sort().values
        for name in sp.producers:
            _slice_out_(modules[name], idx)
        for name in sp.bns:
            _slice_bn_(cast(_BatchNorm, modules[name]), idx)  # the graph's BN nodes
        for name, f in sp.readers:
            _slice_in_(modules[name], (idx[:, None] * f + torch.arange(f, device=idx.device)).reshape(-1))
        report[label] = {"channels": channels, "kept": m, "producers": list(sp.producers), "bns": list(sp.bns),
                         "readers": [n for n, _ in sp.readers]}
    return report
