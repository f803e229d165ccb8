"""PCN layers: a frozen projection onto the top-k principal components of the input, then a
smaller trainable Linear / Conv1d / Conv2d (Waleffe & Rekatsinas 2020, "Principal Component Networks").

With input x (d channels), frozen mean mu (d,) and basis V (d, k), the layer computes the original
layer on z = V^T (x - mu):  Linear ``W' = W V``, ``b' = b + W mu``;  conv
``W' = einsum('ck,ocij->okij', V, W)``, ``b' = b + einsum('c,ocij->o', mu, W)``.

Exact zero padding: the reference pads x with zeros, then centres and projects, then runs an unpadded
conv, so the padded border of z holds -c with c = V^T mu (not 0). Since the conv is linear, that
equals projecting x without centring, running the conv with its usual zero padding, and using
the bias ``b' - sum_{k,taps} W'[o, k, taps] c_k``; that is what ``forward`` does (cheapest form).

Execution plans (``exec_mode``), the same function and the same trainable W' either way:
- ``factored``: z = V^T x (a 1x1 conv / matmul), then the layer on k inputs. Factored layers reading
  one tensor with one basis (a ResNet block's conv1 and projection shortcut, attention's q/k/v) share a
  ``SharedProjection``: z is computed once per forward.
- ``merged``: one layer with the effective weight W' V^T formed on the fly each step (autograd takes
  the gradient back to W'): the dense layer's cost, no extra kernel.
"""

from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drt.errors import DrtError

EXEC_MODES = ("factored", "merged")


class SharedProjection:
    """z = V^T x computed once per forward for the factored layers that read one tensor with one basis.

    The first reader of a new input computes z (of the full map); the others get it while ``x`` is the
    same tensor, unmodified (same version). The cached pair is dropped once every reader had it, so no
    activation outlives its forward. Not a module: it holds no state, and a deep copy gets a fresh one.
    """

    def __init__(self, readers: int) -> None:
        self.readers = readers
        self.computed = 0  # projections computed so far (tests count them)
        self._x: Tensor | None = None
        self._z: Tensor | None = None
        self._version = -1
        self._left = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedProjection:
        return SharedProjection(self.readers)

    def __call__(self, layer: PCNLayer, x: Tensor) -> Tensor:
        if self._left > 0 and self._x is x and self._version == x._version:
            z = self._z
            self._left -= 1
            if self._left == 0:
                self._x = self._z = None
            return z  # type: ignore[return-value]
        z = layer.project(x)
        self.computed += 1
        self._x, self._z, self._version, self._left = x, z, x._version, self.readers - 1
        if self._left == 0:
            self._x = self._z = None
        return z
RESIZED = "pcn_resized"  # attribute set on a plain module the output transform resized (see ``pcn.spec``)


def weight_of(layer: nn.Module) -> Tensor:
    """``layer.weight`` of a Linear, Conv or PCN layer (DrtError for a module without one)."""
    w = getattr(layer, "weight", None)
    if not isinstance(w, Tensor):
        raise DrtError(f"{type(layer).__name__} has no weight tensor")
    return w


class PCNLayer(nn.Module):
    """Base: buffers ``mu`` (d,), ``basis`` (d, k) (frozen); parameters ``weight`` (out, k, *kernel), ``bias``.

    ``basis_key`` names the layer whose statistics gave the basis (layers reading the same
    tensor, e.g. a ResNet block's conv1 and projection shortcut, share one key and one basis);
    ``shared`` is True for every such layer but the first, so the basis is counted once.
    ``exec_mode`` is the execution plan ("factored" or "merged"); ``projection`` the ``SharedProjection``
    of a factored layer whose basis other factored layers read too (set by ``link_projections_``).
    """

    mu: Tensor
    basis: Tensor

    def __init__(self, d: int, k: int, out: int, kernel: tuple[int, ...], basis_key: str = "",
                 shared: bool = False, device: Any = None, dtype: Any = None, exec_mode: str = "factored") -> None:
        super().__init__()
        if k < 1 or d < 1:  # k > d is allowed: the output transform may cut input channels below k
            raise DrtError(f"PCN layer: k and d must be >= 1; got k={k}, d={d}")
        kw = {"device": device, "dtype": dtype}
        self.d, self.k, self.out, self.basis_key, self.shared = d, k, out, basis_key, shared
        self.exec_mode = check_exec(exec_mode)
        self.projection: SharedProjection | None = None
        self.register_buffer("mu", torch.zeros(d, **kw))
        self.register_buffer("basis", torch.zeros(d, k, **kw))
        self.weight = nn.Parameter(torch.zeros(out, k, *kernel, **kw))
        self.bias = nn.Parameter(torch.zeros(out, **kw))

    def drt_frozen_numel(self) -> int:
        """Frozen numbers this layer stores (V and mu); a basis shared with an earlier layer counts 0."""
        return 0 if self.shared else self.basis.numel() + self.mu.numel()

    def project(self, x: Tensor) -> Tensor:
        """z = V^T x (uncentred: the centring is folded into ``centred_bias``)."""
        raise NotImplementedError

    def merged_weight(self) -> Tensor:
        """The effective weight W' V^T of the plain layer on d inputs (differentiable in W')."""
        raise NotImplementedError

    def projected(self, x: Tensor) -> Tensor:
        """``project(x)``, through the shared projection when there is one."""
        return self.project(x) if self.projection is None else self.projection(self, x)

    def centred_bias(self) -> Tensor:
        """b' - sum over (k, taps) of W' * c with c = V^T mu: the bias for uncentred projections."""
        c = self.mu @ self.basis  # (k,)
        return self.bias - torch.einsum("ok...,k->o", self.weight, c)

    def set_pcn_(self, mu: Tensor, basis: Tensor, weight: Tensor, bias: Tensor) -> Self:
        """Copy the four tensors in (shapes must match); mutates self."""
        with torch.no_grad():
            for dst, src in ((self.mu, mu), (self.basis, basis), (self.weight, weight), (self.bias, bias)):
                dst.copy_(src)
        return self

    def spec(self) -> dict[str, Any]:
        """The layer's shapes and settings (JSON), for ``from_spec``."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, s: dict[str, Any], **kw: Any) -> Self:
        """An (uninitialised) layer of the shapes in ``spec()``; ``kw``: device, dtype."""
        raise NotImplementedError

    @classmethod
    def from_layer(cls, layer: Any, mu: Tensor, basis: Tensor, basis_key: str = "", shared: bool = False) -> Self:
        """The PCN layer computing ``layer`` on the top-k input components; exact when k = d."""
        raise NotImplementedError

    def to_plain(self) -> nn.Module:
        """The equivalent plain layer (rank k when k < d)."""
        raise NotImplementedError


class PCNLinear(PCNLayer):
    """PCN version of ``nn.Linear``: input (..., d) -> project to k -> Linear(k, out)."""

    def __init__(self, d: int, k: int, out: int, basis_key: str = "", shared: bool = False,
                 device: Any = None, dtype: Any = None, exec_mode: str = "factored") -> None:
        super().__init__(d, k, out, (), basis_key, shared, device, dtype, exec_mode)

    @property
    def in_features(self) -> int:
        return self.d

    @property
    def out_features(self) -> int:
        return self.out

    def project(self, x: Tensor) -> Tensor:  # (..., d) -> (..., k)
        return x @ self.basis

    def merged_weight(self) -> Tensor:  # (out, d)
        return self.weight @ self.basis.T

    def forward(self, x: Tensor) -> Tensor:  # (..., d) -> (..., out)
        if self.exec_mode == "merged":
            return F.linear(x, self.merged_weight(), self.centred_bias())
        return F.linear(self.projected(x), self.weight, self.centred_bias())

    def extra_repr(self) -> str:
        return f"d={self.d}, k={self.k}, out={self.out}, exec={self.exec_mode}"

    def spec(self) -> dict[str, Any]:
        return {"type": "PCNLinear", "d": self.d, "k": self.k, "out": self.out, "basis_key": self.basis_key,
                "shared": self.shared, "exec": self.exec_mode}

    @classmethod
    def from_spec(cls, s: dict[str, Any], **kw: Any) -> Self:
        return cls(s["d"], s["k"], s["out"], s["basis_key"], s["shared"], exec_mode=s.get("exec", "factored"), **kw)

    @classmethod
    def from_layer(cls, layer: nn.Linear, mu: Tensor, basis: Tensor, basis_key: str = "",
                   shared: bool = False) -> Self:
        """PCN layer computing ``layer`` on the top-k input components; exact when k = d."""
        w = layer.weight.detach()
        mu, basis = mu.to(w), basis.to(w)
        b = layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
        new = cls(w.shape[1], basis.shape[1], w.shape[0], basis_key, shared, device=w.device, dtype=w.dtype)
        return new.set_pcn_(mu, basis, w @ basis, b + w @ mu)

    def to_plain(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (rank k when k < d): W = W' V^T, b = b' - W mu."""
        w = self.weight.detach() @ self.basis.T
        plain = nn.Linear(self.d, self.out, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            plain.weight.copy_(w)
            plain.bias.copy_(self.bias.detach() - w @ self.mu)
        return plain


class _PCNConvNd(PCNLayer):
    """PCN version of ``nn.Conv{1,2}d`` (groups=1, zero padding): 1x1 projection to k, then the conv."""

    ndim = 2

    def __init__(self, d: int, k: int, out: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, basis_key: str = "", shared: bool = False, device: Any = None,
                 dtype: Any = None, exec_mode: str = "factored") -> None:
        n = self.ndim
        self.kernel_size, self.stride, self.dilation = (_tuple(v, n) for v in (kernel_size, stride, dilation))
        self.padding = padding if isinstance(padding, str) else _tuple(padding, n)
        super().__init__(d, k, out, self.kernel_size, basis_key, shared, device, dtype, exec_mode)

    @property
    def in_channels(self) -> int:
        return self.d

    @property
    def out_channels(self) -> int:
        return self.out

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None = None, **kw: Any) -> Tensor:
        return (F.conv1d if self.ndim == 1 else F.conv2d)(x, w, b, **kw)

    def project(self, x: Tensor) -> Tensor:  # (N, d, *spatial) -> (N, k, *spatial): V^T x at every position
        proj = self.basis.T.contiguous().reshape(self.k, self.d, *(1,) * self.ndim)  # contiguous: fast kernels
        return self._conv(x, proj)

    def merged_weight(self) -> Tensor:  # (out, d, *kernel)
        return torch.einsum("ok...,ck->oc...", self.weight, self.basis).contiguous()  # fast conv kernels

    def _subsample(self) -> tuple[Any, ...] | None:
        """Slices of a strided 1x1 conv's input (it reads only every s-th position), else None."""
        pointwise = all(s == 1 for s in self.kernel_size) and self.padding in ("valid", (0,) * self.ndim)
        if pointwise and any(s > 1 for s in self.stride):
            return (..., *(slice(None, None, s) for s in self.stride))
        return None

    def forward(self, x: Tensor) -> Tensor:  # (N, d, *spatial) -> (N, out, *spatial')
        if self.exec_mode == "merged":
            return self._conv(x, self.merged_weight(), self.centred_bias(), stride=self.stride,
                              padding=self.padding, dilation=self.dilation)
        stride, sub = self.stride, self._subsample()
        if sub is not None:  # project only the positions read; a shared z is of the full map: slice it
            z = self.project(x[sub]) if self.projection is None else self.projected(x)[sub]
            stride = (1,) * self.ndim
        else:
            z = self.projected(x)  # (N, k, *spatial)
        return self._conv(z, self.weight, self.centred_bias(), stride=stride, padding=self.padding,
                          dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"d={self.d}, k={self.k}, out={self.out}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, exec={self.exec_mode}")

    def spec(self) -> dict[str, Any]:
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"type": type(self).__name__, "d": self.d, "k": self.k, "out": self.out,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": pad,
                "dilation": list(self.dilation), "basis_key": self.basis_key, "shared": self.shared,
                "exec": self.exec_mode}

    @classmethod
    def from_spec(cls, s: dict[str, Any], **kw: Any) -> Self:
        return cls(s["d"], s["k"], s["out"], s["kernel_size"], s["stride"], s["padding"], s["dilation"],
                   s["basis_key"], s["shared"], exec_mode=s.get("exec", "factored"), **kw)

    @classmethod
    def from_layer(cls, layer: nn.Conv1d | nn.Conv2d, mu: Tensor, basis: Tensor, basis_key: str = "",
                   shared: bool = False) -> Self:
        """PCN layer computing conv ``layer`` on the top-k input components; exact when k = d."""
        check_convertible(layer, basis_key or "layer")
        w = layer.weight.detach()  # (out, d, *kernel)
        mu, basis = mu.to(w), basis.to(w)
        b = layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
        new = cls(w.shape[1], basis.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, basis_key, shared, device=w.device, dtype=w.dtype)
        w_new = torch.einsum("ck,oc...->ok...", basis, w)
        return new.set_pcn_(mu, basis, w_new, b + torch.einsum("c,oc...->o", mu, w))

    def to_plain(self) -> nn.Module:
        """The equivalent plain conv (rank k when k < d): W = einsum(W', V), b = b' - einsum(mu, W)."""
        w = torch.einsum("ok...,ck->oc...", self.weight.detach(), self.basis)
        cls = nn.Conv1d if self.ndim == 1 else nn.Conv2d
        kw: dict[str, Any] = {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                              "dilation": self.dilation, "device": w.device, "dtype": w.dtype}
        plain = cls(self.d, self.out, **kw)
        assert plain.bias is not None  # bias=True
        with torch.no_grad():
            plain.weight.copy_(w)
            plain.bias.copy_(self.bias.detach() - torch.einsum("c,oc...->o", self.mu, w))
        return plain


class PCNConv1d(_PCNConvNd):
    """PCN ``nn.Conv1d``: input (N, d, L)."""

    ndim = 1


class PCNConv2d(_PCNConvNd):
    """PCN ``nn.Conv2d``: input (N, d, H, W)."""

    ndim = 2


PCN_TYPES: dict[type[nn.Module], type[PCNLayer]] = {
    nn.Linear: PCNLinear, nn.Conv1d: PCNConv1d, nn.Conv2d: PCNConv2d}


def check_exec(mode: str) -> str:
    """``mode`` if it is an execution plan ("factored" or "merged"); DrtError otherwise."""
    if mode not in EXEC_MODES:
        raise DrtError(f"unknown PCN execution plan {mode!r}; valid: {', '.join(EXEC_MODES)}")
    return mode


def link_projections_(model: nn.Module) -> nn.Module:
    """Give the factored PCN layers that share a basis one ``SharedProjection`` (others none); in place."""
    groups: dict[str, list[PCNLayer]] = {}
    for m in model.modules():
        if isinstance(m, PCNLayer):
            m.projection = None
            if m.exec_mode == "factored":
                groups.setdefault(m.basis_key, []).append(m)
    for members in groups.values():
        if len(members) > 1:
            shared = SharedProjection(len(members))
            for m in members:
                m.projection = shared
    return model


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(i) for i in v) if isinstance(v, list | tuple) else (int(v),) * n


def ineligible_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot get an input transform (None if it can: Linear, Conv1d/2d with groups=1)."""
    if isinstance(layer, PCNLayer):
        return "already a PCN layer (transforming twice is refused; drt.pcn.expand() it first)"
    if type(layer) not in PCN_TYPES:
        return f"{type(layer).__name__} is not supported (Linear, Conv1d, Conv2d only)"
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups}) is not supported"
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        return f"padding_mode={layer.padding_mode!r} is not supported (only 'zeros')"
    return None


def check_convertible(layer: nn.Module, name: str) -> None:
    """Raise DrtError naming ``name`` if ``layer`` cannot be PCN-transformed."""
    reason = ineligible_reason(layer)
    if reason is not None:
        raise DrtError(f"layer {name!r} cannot be PCN-transformed: {reason}")


def to_pcn(layer: nn.Module, mu: Tensor, basis: Tensor, name: str, basis_key: str = "") -> PCNLayer:
    """The PCN version of eligible ``layer`` (called ``name``) with frozen ``mu`` (d,) and ``basis`` (d, k).

    ``basis_key``: the layer that owns a shared basis (default ``name`` itself).
    """
    check_convertible(layer, name)
    assert isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d)  # what check_convertible lets through
    d = layer.weight.shape[1]
    if mu.shape != (d,) or basis.dim() != 2 or basis.shape[0] != d:
        raise DrtError(f"layer {name!r}: basis must be ({d}, k) and mean ({d},); got {tuple(basis.shape)}, "
                       f"{tuple(mu.shape)}")
    key = basis_key or name
    new = PCN_TYPES[type(layer)].from_layer(layer, mu, basis, key, key != name)
    new.weight.requires_grad_(layer.weight.requires_grad)  # a frozen layer stays frozen
    new.bias.requires_grad_((layer.bias if layer.bias is not None else layer.weight).requires_grad)
    return new


def pcn_class(type_name: str) -> type[PCNLayer]:
    """The PCN layer class called ``type_name`` (for rebuilding from a spec)."""
    for cls in PCN_TYPES.values():
        if cls.__name__ == type_name:
            return cls
    valid = ", ".join(c.__name__ for c in PCN_TYPES.values())
    raise DrtError(f"unknown PCN layer type {type_name!r}; valid: {valid}")
