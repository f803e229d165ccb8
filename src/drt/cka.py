"""CKA / HSIC estimators and the CKA-SR regulariser: pure, differentiable, float64.

References: Kornblith et al. 2019 (CKA); Song et al. 2012 and Nguyen, Raghu & Kornblith 2021
(unbiased HSIC, minibatch CKA); Ni et al. 2023, arXiv 2307.07389 (CKA-SR / AugCKA-SR).

Every function casts to float64 and returns float64. Stability: the CKA denominator is
sqrt(max(HSIC(K,K)·HSIC(L,L), floor)) with the floor ``eps²`` *relative* to the squared uncentred
magnitude of the inputs (features are rescaled by their detached Frobenius norm first), and CKA is
defined as 0 below the floor: constant or zero features give exactly 0 with finite (zero)
gradients, and scale invariance holds down to tiny magnitudes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor

from drt.errors import DrtError

EPS = 1e-10
KERNELS = ("linear", "rbf")


def _min_n(n: int, unbiased: bool, what: str = "HSIC") -> None:
    need = 4 if unbiased else 2
    if n < need:
        kind = "unbiased" if unbiased else "biased"
        raise DrtError(f"{kind} {what} needs at least {need} samples (the minimum is {need}); got n={n}")


def _flat(x: Tensor, n: int = -1) -> Tensor:
    """(n, ...) -> (n, features) float64, keeping the first ``n`` rows (-1 = all)."""
    x = x if n < 0 else x[:n]  # slice before the float64 copy: n is the cost control
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _unit(x: Tensor) -> Tensor:
    """Divide by the detached Frobenius norm over the last two dims (zero stays zero)."""
    s = torch.linalg.vector_norm(x.detach(), dim=(-2, -1), keepdim=True)
    return x / torch.where(s > 0, s, torch.ones_like(s))


def _same_n(feats: Sequence[Tensor]) -> int:
    for f in feats:
        if not isinstance(f, Tensor) or f.dim() == 0:
            what = f"a {f.dim()}-D tensor" if isinstance(f, Tensor) else type(f).__name__
            raise DrtError(f"CKA features must be tensors of shape (samples, ...); got {what}")
    sizes = sorted({int(f.shape[0]) for f in feats})
    if len(sizes) != 1:
        raise DrtError(f"CKA needs the same batch size for all features; got batch sizes {sizes}")
    return sizes[0]


def gram_linear(x: Tensor) -> Tensor:
    """Linear Gram matrix X Xᵀ: (..., n, d) -> (..., n, n), float64."""
    x = x.to(torch.float64)
    return x @ x.transpose(-1, -2)


def gram_rbf(x: Tensor, sigma_frac: float = 0.5) -> Tensor:
    """RBF Gram, bandwidth ``sigma_frac`` × median distance (Kornblith's notebook): (n, d) -> (n, n)."""
    x = _flat(x)
    dot = x @ x.T
    sq = torch.diagonal(dot)
    d2 = (sq[:, None] + sq[None, :] - 2 * dot).clamp_min(0.0)
    med = torch.quantile(d2.flatten(), 0.5).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.exp(-d2 / (2 * sigma_frac**2 * med))


def h_centre(k: Tensor) -> Tensor:
    """Double centring H K H (biased HSIC): (..., n, n) -> (..., n, n)."""
    return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)


def u_centre(k: Tensor) -> Tensor:
    """U-centring (unbiased HSIC, Song et al. 2012): HSIC₁(K, L) = <U_K, U_L> / (n(n-3)); (..., n, n)."""
    n = k.shape[-1]
    _min_n(n, True)
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0.0)
    rows, cols = k.sum(-1, keepdim=True), k.sum(-2, keepdim=True)
    tot = k.sum((-2, -1), keepdim=True)
    u = k - (rows + cols) / (n - 2) + tot / ((n - 1) * (n - 2))
    return u.masked_fill(eye, 0.0)


def _centre(k: Tensor, unbiased: bool) -> Tensor:
    return u_centre(k) if unbiased else h_centre(k)


def _norm(n: int, unbiased: bool) -> float:
    return float(n * (n - 3)) if unbiased else float((n - 1) ** 2)


def hsic(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """HSIC of Gram matrices (..., n, n): biased tr(KHLH)/(n-1)², or the unbiased HSIC₁ (n >= 4)."""
    k, l = k.to(torch.float64), l.to(torch.float64)
    n = k.shape[-1]
    _min_n(n, unbiased)
    return (_centre(k, unbiased) * _centre(l, unbiased)).sum((-2, -1)) / _norm(n, unbiased)


def _ratio(kl: Tensor, kk: Tensor, ll: Tensor, floor: Tensor | float) -> Tensor:
    """kl / sqrt(kk·ll), guarded inside the sqrt; 0 where kk·ll <= floor (finite grads)."""
    prod = kk * ll
    ok = prod > floor
    safe = torch.where(ok, prod, torch.ones_like(prod))  # below the floor: no sqrt near 0, result 0
    out = torch.where(ok, kl / torch.sqrt(safe), torch.zeros_like(kl))
    return torch.where(torch.isnan(prod) | torch.isnan(kl), torch.full_like(kl, float("nan")), out)  # NaN in, NaN out


def cka_from_grams(k: Tensor, l: Tensor, unbiased: bool = False, eps: float = EPS) -> Tensor:
    """CKA of Gram matrices (..., n, n) -> (...); the floor is relative to the centred ‖K‖_F·‖L‖_F."""
    n = k.shape[-1]
    if l.shape[-1] != n:
        raise DrtError(f"CKA needs the same batch size for both Gram matrices; got {n} and {l.shape[-1]}")
    _min_n(n, unbiased)
    kc = _unit(_centre(k.to(torch.float64), unbiased))  # scale after centring: a constant offset in the
    lc = _unit(_centre(l.to(torch.float64), unbiased))  # features must not push the centred part under the floor
    kl, kk, ll = ((a * b).sum((-2, -1)) for a, b in ((kc, lc), (kc, kc), (lc, lc)))
    return _ratio(kl, kk, ll, eps**2)


def _centred_grams(feats: Sequence[Tensor], unbiased: bool, kernel: str = "linear") -> Tensor:
    """Stack of centred Gram matrices, one per layer, unit-scaled: (L, n*n)."""
    if kernel not in KERNELS:
        raise DrtError(f"unknown CKA kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    n = _same_n(feats)
    _min_n(n, unbiased, "CKA")
    out = []
    for f in feats:
        x = _flat(f)
        k = gram_linear(_unit(x - x.mean(0))) if kernel == "linear" else _unit(gram_rbf(_unit(x)))
        out.append(_centre(k, unbiased).reshape(-1))
    return torch.stack(out)


def _stacked_ratio(ga: Tensor, gb: Tensor, eps: float) -> Tensor:
    kl = ga @ gb.T  # (La, Lb): every pair from one product
    return _ratio(kl, (ga * ga).sum(1)[:, None], (gb * gb).sum(1)[None, :], eps**2)


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False, eps: float = EPS) -> Tensor:
    """Linear CKA of features (n, ...) and (n, ...) (trailing dims flattened); float64 scalar."""
    g = _centred_grams([x, y], unbiased)
    return _stacked_ratio(g[:1], g[1:], eps)[0, 0]


def cka_matrix(
    features_a: Sequence[Tensor],
    features_b: Sequence[Tensor] | None = None,
    unbiased: bool = False,
    kernel: str = "linear",
    eps: float = EPS,
) -> Tensor:
    """Layer × layer CKA (La, Lb); within one model when ``features_b`` is None. Grams built once."""
    if isinstance(features_a, Tensor) or isinstance(features_b, Tensor):
        raise DrtError("cka_matrix takes lists of feature tensors (one per layer), not a single tensor")
    ga = _centred_grams(list(features_a), unbiased, kernel)
    if features_b is None:
        return _stacked_ratio(ga, ga, eps)
    _same_n([features_a[0], features_b[0]])
    return _stacked_ratio(ga, _centred_grams(list(features_b), unbiased, kernel), eps)


def stacked_unbiased_cka(features: Sequence[Tensor], eps: float = EPS) -> Tensor:
    """All-pairs unbiased linear CKA (L, L) via stacked U-centred Grams (one L × n² product)."""
    return cka_matrix(features, unbiased=True, eps=eps)


def _check_n_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples == 0 or n_samples < -1:
        raise DrtError(f"n_samples must be a positive number of samples or -1 (all); got {n_samples}")


def cka_sr_loss(stages: Sequence[Sequence[Tensor]], n_samples: int = 8) -> Tensor:
    """CKA-SR term without β (Ni et al. 2023): Σ_stages Σ_i Σ_j unbiased CKA(X_i, X_j), i = j included."""
    _check_n_samples(n_samples)
    if isinstance(stages, Tensor) or any(not isinstance(s, list | tuple) for s in stages):
        raise DrtError("CKA-SR takes stages: a list of lists of feature tensors (one list per stage)")
    _same_n([f for s in stages for f in s])
    total = None
    for stage in stages:
        feats = [_flat(f, n_samples) for f in stage]
        n = feats[0].shape[0]
        if n < 4:
            raise DrtError(f"CKA-SR needs at least 4 samples for the unbiased estimator; got n={n}")
        s = stacked_unbiased_cka(feats).sum()
        total = s if total is None else total + s
    if total is None:
        raise DrtError("CKA-SR needs at least one stage of feature tensors; got none")
    return total


def aug_cka_loss(features: Sequence[Tensor] | Sequence[Sequence[Tensor]], n_samples: int = 8) -> Tensor:
    """AugCKA-SR: mean biased linear CKA over all unordered pairs (stages are flattened if nested)."""
    _check_n_samples(n_samples)
    flat = [f for s in features for f in (s if isinstance(s, list | tuple) else [cast(Tensor, s)])]
    if len(flat) < 2:
        raise DrtError(f"AugCKA-SR needs at least 2 feature tensors; got {len(flat)}")
    _same_n(flat)
    m = cka_matrix([_flat(f, n_samples) for f in flat], unbiased=False)
    iu = torch.triu_indices(len(flat), len(flat), offset=1, device=m.device)
    return m[iu[0], iu[1]].mean()


def _hsic1_reference(k: Tensor, l: Tensor) -> Tensor:
    """The unbiased HSIC formula written out, as in the CKA-SR reference code."""
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    l = l - torch.diag(torch.diagonal(l))
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = torch.trace(k @ l)
    middle = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones.T @ k @ l @ ones)
    return ((trace + middle - last) / (n * (n - 3))).reshape(())


def cka_sr_reference(stages: Sequence[Sequence[Tensor]], n_samples: int = 8) -> Tensor:
    """Naive CKA-SR (Grams recomputed per ordered pair, no guard): the test / benchmark baseline."""
    total = torch.zeros((), dtype=torch.float64)
    for stage in stages:
        for xi in stage:
            for xj in stage:
                x, y = _flat(xi, n_samples), _flat(xj, n_samples)
                k, l = x @ x.T, y @ y.T
                total = total + _hsic1_reference(k, l) / torch.sqrt(
                    _hsic1_reference(k, k) * _hsic1_reference(l, l)
                )
    return total


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021): HSIC averaged over batches, then normalised.

    Accumulates detached float64 sums (analysis use); ``update`` does not keep the graph.
    """

    def __init__(self, unbiased: bool = True, eps: float = EPS) -> None:
        self.unbiased, self.eps = unbiased, eps
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated batches."""
        self._kl: Tensor | None = None
        self._kk = self._ll = self._rk = self._rl = torch.zeros(())
        self.batches = 0

    def _grams(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, float]:
        xs = [_flat(f.detach()) for f in feats]
        n = xs[0].shape[0]
        _min_n(n, self.unbiased, "minibatch CKA")
        xs = [x - x.mean(0) for x in xs]
        g = torch.stack([_centre(gram_linear(x), self.unbiased).reshape(-1) for x in xs])
        ref = torch.stack([torch.linalg.vector_norm(x) ** 4 for x in xs])  # >= ‖centred Gram‖² (scale)
        return g, ref, _norm(n, self.unbiased)

    def update(self, features_a: Sequence[Tensor], features_b: Sequence[Tensor] | None = None) -> None:
        """Add one batch: per-layer features of model a (and of model b, same inputs)."""
        _same_n(list(features_a) + list(features_b or []))
        ga, ra, c = self._grams(features_a)
        gb, rb, _ = (ga, ra, c) if features_b is None else self._grams(features_b)
        kl = ga @ gb.T / c
        if self._kl is not None and self._kl.shape != kl.shape:
            raise DrtError(f"MinibatchCKA got {tuple(kl.shape)} layer pairs; earlier batches had "
                           f"{tuple(self._kl.shape)}")
        self._kl = kl if self._kl is None else self._kl + kl
        self._kk = self._kk + (ga * ga).sum(1) / c
        self._ll = self._ll + (gb * gb).sum(1) / c
        self._rk, self._rl = self._rk + ra / c, self._rl + rb / c
        self.batches += 1

    def compute(self) -> Tensor:
        """The (La, Lb) CKA matrix from the batches seen so far (float64)."""
        if self._kl is None:
            raise DrtError("MinibatchCKA.compute() called before any update(); feed at least one batch")
        floor = self.eps**2 * self._rk[:, None] * self._rl[None, :]
        return _ratio(self._kl, self._kk[:, None], self._ll[None, :], floor)
