"""PCN input transform of a whole model (``compress``) and its inverse (``expand``).

Waleffe & Rekatsinas 2020, "Principal Component Networks": each chosen layer is re-expressed on
the top-k principal components of its input; the output ("kill") transform is in ``graph``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping

from torch import Tensor, nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from drt.errors import DrtError
from drt.pcn.layers import PCNLayer, to_pcn, weight_of
from drt.pcn.narrow import narrow_
from drt.pcn.plan import PLANS, choose_plans_
from drt.pcn.select import Exclude, KeepArg, plan_components
from drt.pcn.stats import PCNStats

WARN_FRACTION = 1 / 8  # a layer keeping fewer components than this share of its width is warned about
# hooks that belong to their module (its weight is computed from them), kept by a copy
OWN_HOOKS = (prune.BasePruningMethod, SpectralNorm, WeightNorm)


def copy_without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the forward/backward hooks of others: they close over the
    original (e.g. a regulariser's feature store) and must not fire for the copy. A module's own
    weight hooks (``torch.nn.utils.prune``, spectral and weight norm) are copied with it."""
    out = copy.deepcopy(model)
    for m in out.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            for k in [k for k, h in hooks.items() if not isinstance(h, OWN_HOOKS)]:
                del hooks[k]
    return out


def check_replaceable(model: nn.Module, names: Iterable[str]) -> None:
    """DrtError if a layer to be replaced computes its weight through hooks or shares it with another layer."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{n}.{pn}" if n else pn)
    for name in names:
        m = model.get_submodule(name)
        if m._forward_pre_hooks or parametrize.is_parametrized(m):
            raise DrtError(f"layer {name!r} computes its weight through a hook or parametrization (e.g. "
                           "torch.nn.utils.prune, spectral_norm); remove it (prune.remove) or exclude the layer")
        others = [o for o in owners.get(id(m.weight), []) if o != f"{name}.weight"]
        if others:
            raise DrtError(f"layer {name!r} shares its weight with {others[0]!r}; PCN would untie them "
                           "(exclude one of the layers)")


def set_module_(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace submodule ``name`` (qualified) of ``root`` by ``new``, keeping its train/eval flag; in place."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    new.train(getattr(parent, attr).training)
    setattr(parent, attr, new)
    return root


def compress(model: nn.Module, stats: PCNStats, keep: KeepArg = "all", *, width_fraction: float | None = None,
             eig_threshold: float | None = None, budget: int | float | None = None, budget_of: str = "params",
             min_fraction: float = 0.0,
             output: bool | Iterable[str] = False, output_keep: int | float | Mapping[str, int | float] | None = None,
             output_threshold: float | None = None, eigen_weighted: bool = False, exclude: Exclude = (),
             include_first: bool = False, plan: str = "auto", batch_size: int = 128) -> nn.Module:
    """A new model whose chosen layers are PCN layers; ``model`` is left untouched (deep copy).

    Input transform (paper): layer name -> k from ``keep`` ("all" = exact, float in (0, 1] =
    explained variance, int = fixed k, or a dict of name / glob pattern -> rule, in which case only
    those layers change), capped by ``width_fraction`` / ``eig_threshold`` (paper rules) and
    allocated under ``budget`` if given (see ``select.plan_components``). ``exclude``: names,
    patterns or ``callable(name, module)``. The first layer is kept unless ``include_first``.
    Output transform (off by default): ``output=True`` (or names / patterns of PCN layers) removes
    the producer channels feeding those layers with the smallest basis loadings; see
    ``narrow.narrow_`` for ``output_keep``, ``output_threshold`` and ``eigen_weighted``.
    Transforming a PCN layer again is refused (``expand`` first, then collect and compress).
    Execution (``plan``, see ``drt.pcn.plan``): "auto" leaves a layer that would keep all its components
    untouched (unless the output transform is on: its basis then steers which channels go) and runs
    every other one factored or merged, whichever costs fewer counted training FLOPs at ``batch_size``;
    "factored" / "merged" force one form on every transformed layer.
    """
    if plan not in PLANS:
        raise DrtError(f"unknown PCN execution plan {plan!r}; valid: {', '.join(PLANS)}")
    if output is False and (output_keep is not None or output_threshold is not None or eigen_weighted):
        raise DrtError("output_keep, output_threshold and eigen_weighted set the output transform: pass output=True")
    ks = plan_components(model, stats, keep, width_fraction=width_fraction, eig_threshold=eig_threshold,
                         budget=budget, budget_of=budget_of, min_fraction=min_fraction, exclude=exclude,
                         include_first=include_first)
    if not ks:
        raise DrtError(f"nothing to transform: no layer with statistics ({', '.join(stats.layers) or 'none'}) is "
                       "selected (the first layer is kept unless include_first=True)")
    thin = [f"{n} ({k}/{stats.dim(n)})" for n, k in ks.items() if k < WARN_FRACTION * stats.dim(n)]
    if thin:
        warnings.warn(f"PCN keeps less than 1/{round(1 / WARN_FRACTION)} of the components of {', '.join(thin)}: "
                      "early in training spectra are steep; a later transform epoch, a floor "
                      "(min_fraction) or a budget keeps more", stacklevel=2)
    if plan == "auto" and output is False:
        ks = {n: k for n, k in ks.items() if k < stats.dim(n)}  # nothing to save: the layer stays as it is
    check_replaceable(model, ks)
    small = copy_without_hooks(model)
    owners: dict[str, str] = {}
    eigvals: dict[str, Tensor] = {}
    for name, k in ks.items():
        layer = small.get_submodule(name)
        width = weight_of(layer).shape[1]
        if width != stats.dim(name):
            raise DrtError(f"layer {name!r} has {width} inputs but its statistics have "
                           f"{stats.dim(name)}; collect statistics on this model")
        key = stats.key(name)
        owner = owners.setdefault(key, name)
        vals, vecs = stats.eig(name)
        set_module_(small, name, to_pcn(layer, stats.mean(name), vecs[:, :k], name, owner))
        eigvals[name] = vals
    if output is not False:
        narrow_(small, stats.sample_shape, which=output, keep=output_keep, threshold=output_threshold,
                eigvals=eigvals, eigen_weighted=eigen_weighted)
    choose_plans_(small, stats.sample_shape, plan, batch_size, stats.input_shapes)
    return small


def expand(small: nn.Module) -> nn.Module:
    """A new model with every PCN layer turned back into a plain layer computing the same function.

    W = W' V^T and b = b' - W mu (rank k when k < d; the plain layer always has a bias). Channels
    removed by the output transform stay removed. ``small`` is left untouched.
    """
    big = copy_without_hooks(small)
    for name, m in list(big.named_modules()):
        if isinstance(m, PCNLayer):
            set_module_(big, name, m.to_plain())
    return big


def pcn_layers(model: nn.Module) -> dict[str, PCNLayer]:
    """The model's PCN layers by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PCNLayer)}
