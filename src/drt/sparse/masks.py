"""Binary masks keyed by parameter name, applied in place to weights, gradients and optimizer state.

A mask is the single source of truth for which weights are active; it is never inferred from
weight values. Pitfalls handled here (spec "sparse-and-frozen"): masked weights *and* their
optimizer state are zeroed after every step (pitfall 3); what is masked is explicit (pitfall 2).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from drt import dist
from drt.errors import DrtError

COMPACT_FORMAT = "drt-compact-v1"


def prunable(
    model: nn.Module, include_bias: bool = False, include_bn: bool = False, exclude: Iterable[str] = ()
) -> dict[str, nn.Parameter]:
    """Conv (1d/2d/3d, transposed) and linear weights by qualified name, in model order.

    ``include_bias`` adds those layers' biases, ``include_bn`` BatchNorm weight and bias;
    ``exclude`` holds names or fnmatch patterns (``"fc.*"``). Tied parameters appear once.
    """
    patterns = list(exclude)
    out: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        module = model.get_submodule(prefix)
        is_layer = isinstance(module, _ConvNd | nn.Linear)
        keep = (is_layer and (leaf == "weight" or (include_bias and leaf == "bias"))) or (
            include_bn and isinstance(module, _BatchNorm) and leaf in ("weight", "bias")
        )
        if keep and not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            out[name] = p
    return out


def zero_state_(optimizer: torch.optim.Optimizer, param: Tensor, where: Tensor) -> None:
    """Zero every per-weight state tensor of ``param`` at ``where`` (bool, param's shape), in place.

    SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` and any other
    state tensor of the parameter's shape are zeroed; scalar state (``step``) and ``None`` are left
    alone. Anything else (factored or list state, e.g. LBFGS) raises DrtError rather than being ignored.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for key, value in state.items():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(where.to(value.device), 0)
        elif value is None or isinstance(value, int | float) or (
            isinstance(value, Tensor) and value.numel() == 1
        ):
            continue
        else:
            raise DrtError(
                f"cannot mask optimizer state {key!r} of {type(optimizer).__name__} (not per-weight); "
                "use SGD, Adam, AdamW or an optimizer whose state tensors have the parameter's shape"
            )


class MaskSet(Mapping[str, Tensor]):
    """Name -> bool mask (True = active). Masks are replaced via ``ms[name] = mask``, never inferred."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks: dict[str, Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = getattr(mask, "dtype", type(mask))
                raise DrtError(f"mask {name!r} must be a bool tensor, got {got}")
            self._masks[name] = mask

    @classmethod
    def ones(cls, params: Mapping[str, Tensor]) -> MaskSet:
        """All-active masks for ``params`` (e.g. ``prunable(model)``)."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    # mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: Tensor) -> None:
        """Replace an existing mask (same shape, bool)."""
        if name not in self._masks:
            raise DrtError(f"unknown mask {name!r}; valid: {', '.join(self._masks)}")
        if mask.dtype != torch.bool or mask.shape != self._masks[name].shape:
            raise DrtError(f"mask {name!r} must be bool of shape {tuple(self._masks[name].shape)}")
        self._masks[name] = mask

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or list(other) != list(self):
            return False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} tensors, density={self.density():.4f})"

    # applying
    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        missing = [n for n in self if n not in params]
        if missing:
            raise DrtError(f"masked parameters not in model: {', '.join(missing)}")
        for n, m in self.items():
            if params[n].shape != m.shape:
                raise DrtError(f"mask {n!r} has shape {tuple(m.shape)}, parameter {tuple(params[n].shape)}")
        return params

    @torch.no_grad()
    def apply_(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """Zero masked weights of ``model`` and their ``optimizer`` state in place; returns ``model``."""
        params = self._params(model)
        for n, m in self.items():
            p = params[n]
            pruned = ~m.to(p.device)
            p.masked_fill_(pruned, 0)
            if optimizer is not None:
                zero_state_(optimizer, p, pruned)
        return model

    @torch.no_grad()
    def mask_grads_(self, model: nn.Module) -> nn.Module:
        """Zero the gradients of masked weights in place (call after backward); returns ``model``.

        Take any dense gradient a method needs (RigL's grow score) *before* calling this.
        """
        params = self._params(model)
        for n, m in self.items():
            g = params[n].grad
            if g is not None:
                g.masked_fill_(~m.to(g.device), 0)
        return model

    def apply_to_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A copy of ``state_dict`` with masked entries zeroed (input not mutated)."""
        out = dict(state_dict)
        for n, m in self.items():
            if n in out:
                out[n] = out[n].masked_fill(~m.to(out[n].device), 0)
        return out

    # counting and reporting
    def numel(self, name: str | None = None) -> int:
        """Number of maskable weights in one tensor or overall."""
        return self[name].numel() if name else sum(m.numel() for m in self.values())

    def kept(self, name: str | None = None) -> int:
        """Number of active weights in one tensor or overall (the trained dimension of the masked part)."""
        return int(self[name].sum()) if name else sum(int(m.sum()) for m in self.values())

    def density(self, name: str | None = None) -> float:
        """Fraction of active weights, per tensor (``name``) or overall over the masked tensors."""
        total = self.numel(name)
        return self.kept(name) / total if total else 1.0

    def sparsity(self, name: str | None = None) -> float:
        """1 - density."""
        return 1.0 - self.density(name)

    def report(
        self,
        targets: Mapping[str, float] | None = None,
        overall_target: float | None = None,
        guarded: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        """Rows (name, numel, kept, target density, achieved density, guard) per tensor, then ``overall``.

        ``targets`` are per-layer target densities; the overall target defaults to their
        numel-weighted mean. Counts are over the masked tensors only.
        """
        targets = targets or {}
        guarded = set(guarded)
        rows = [
            {"name": n, "numel": m.numel(), "kept": self.kept(n), "target": targets.get(n),
             "achieved": self.density(n), "guard": n in guarded}
            for n, m in self.items()
        ]
        if overall_target is None and all(targets.get(n) is not None for n in self):
            overall_target = sum(targets[n] * self.numel(n) for n in self) / max(self.numel(), 1)
        rows.append({"name": "overall", "numel": self.numel(), "kept": self.kept(), "target": overall_target,
                     "achieved": self.density(), "guard": bool(guarded)})
        return rows

    @staticmethod
    def format_report(rows: list[dict[str, Any]]) -> str:
        """``report`` rows as a fixed-width text table (densities in %; '-' where no target)."""
        lines = [f"{'tensor':<32} {'numel':>10} {'kept':>10} {'target%':>8} {'achieved%':>9} guard"]
        for r in rows:
            target = "-" if r["target"] is None else f"{100 * r['target']:.2f}"
            lines.append(f"{r['name']:<32} {r['numel']:>10} {r['kept']:>10} {target:>8} "
                         f"{100 * r['achieved']:>9.2f} {'FIRED' if r['guard'] else ''}")
        return "\n".join(lines)

    def checksum(self) -> int:
        """Deterministic 63-bit fingerprint of names, shapes and mask bits (compare across ranks)."""
        h = hashlib.blake2b(digest_size=8)
        for n in sorted(self):
            m = self[n].detach().cpu().contiguous()
            h.update(f"{n}:{tuple(m.shape)};".encode())
            h.update(m.numpy().tobytes())
        return int.from_bytes(h.digest(), "little") >> 1

    # persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Masks as plain bool tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {n: m.detach().cpu().clone() for n, m in self.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Replace every mask from ``state`` (same names and shapes), in place."""
        if set(state) != set(self):
            raise DrtError(f"mask state has names {sorted(state)}, expected {sorted(self)}")
        for n in self:
            self[n] = state[n].to(self[n].device)

    def to(self, device: torch.device | str) -> MaskSet:
        """A MaskSet with every mask on ``device``."""
        return MaskSet({n: m.to(device) for n, m in self.items()})

    def to_compact(self, model: nn.Module) -> dict[str, Any]:
        """Compact export: kept (flat index, value) pairs for masked tensors, other entries dense.

        Only tensors, ints, tuples and strings, so ``torch.load(weights_only=True)`` reads it.
        """
        self._params(model)
        dense, sparse = pack(model.state_dict(), self)
        return {"format": COMPACT_FORMAT, "dense": dense, "sparse": sparse}

    @classmethod
    def from_compact(cls, model: nn.Module, compact: Mapping[str, Any]) -> MaskSet:
        """Load a ``to_compact`` export into ``model`` in place (same architecture); returns its masks."""
        if compact.get("format") != COMPACT_FORMAT:
            raise DrtError(f"not a compact sparse model (format {compact.get('format')!r}, "
                           f"expected {COMPACT_FORMAT!r})")
        state = {n: t for n, t in compact["dense"].items()}
        masks: dict[str, Tensor] = {}
        for n, entry in compact["sparse"].items():
            numel = 1
            for s in entry["shape"]:
                numel *= s
            idx = entry["index"].long()
            mask = torch.zeros(numel, dtype=torch.bool)
            mask[idx] = True
            value = torch.zeros(numel, dtype=entry["value"].dtype)
            value[idx] = entry["value"]
            state[n] = value.reshape(entry["shape"])
            masks[n] = mask.reshape(entry["shape"])
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise DrtError(f"compact model does not fit this architecture: {first}") from err
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return cls(masks).to(device)


def pack(state: Mapping[str, Tensor],
         keep: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """(dense copies of the tensors not in ``keep``, {name: shape, flat index and value of the entries
    ``keep[name]`` marks}) — on the CPU, readable by ``torch.load(weights_only=True)``."""
    dense: dict[str, Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for n, t in state.items():
        if n in keep:
            flat = t.detach().reshape(-1)
            idx = torch.nonzero(keep[n].reshape(-1).to(flat.device)).reshape(-1)
            idx_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
            sparse[n] = {"shape": tuple(t.shape), "index": idx.to(idx_dtype).cpu(), "value": flat[idx].cpu().clone()}
        else:
            dense[n] = t.detach().cpu().clone()
    return dense, sparse


def check_ranks_agree(mask: MaskSet, what: str) -> None:
    """DrtError naming the ranks whose ``mask`` differs from rank 0's (``MaskSet.checksum``); no-op alone."""
    sums = dist.gather(mask.checksum())
    bad = [r for r, c in enumerate(sums) if c != sums[0]]
    if bad:
        raise DrtError(f"{what}: masks differ across ranks (ranks {', '.join(map(str, bad))} disagree with "
                       f"rank 0; checksums {sums}); scores or random draws are not rank-consistent")
