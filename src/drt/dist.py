"""The collectives every layer uses under ``torch.distributed``; each is a no-op in a single process.

Launching, the process group and the DDP wrapper are the trainer's business (``drt.train.distributed``);
these are the pieces methods, PCN statistics and the loop share: this process's rank, sums and means
over ranks, every rank's value, rank 0's answer or weights on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from drt.errors import DrtError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Ranks:
    """The ranks of the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def _tensor_device() -> torch.device:
    """Where collective buffers must live for the group's backend (nccl: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(*values: float | torch.Tensor) -> list[float]:
    """Sums over ranks of scalar values, as floats (float64 on the wire; identical on every rank)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if current().world_size > 1:
        t = t.to(_tensor_device())
        dist.all_reduce(t)
    return t.cpu().tolist()


def sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks in place (one all-reduce per tensor)."""
    if current().world_size > 1:
        for t in tensors:
            dist.all_reduce(t)


def mean_(tensors: Mapping[str, torch.Tensor]) -> None:
    """Average ``tensors`` over the ranks in place (one all-reduce of them all, flattened)."""
    world = current().world_size
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors.values():
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a single process."""
    world = current().world_size
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result (or raise its DrtError on every rank)."""
    ranks = current()
    if ranks.world_size == 1:
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if ranks.is_main:
        try:
            box[0] = ("ok", fn())
        except BaseException as e:  # every rank must learn of it, or they wait forever
            error = e
            box[0] = ("error", str(e) if isinstance(e, DrtError) else f"{type(e).__name__} on rank 0: {e}")
    dist.broadcast_object_list(box, src=0, device=_tensor_device())
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise DrtError(value)
    return value


def broadcast_(module: nn.Module, buffers_only: bool = False) -> nn.Module:
    """Copy rank 0's parameters and buffers (or only buffers) to every rank, in place; returns ``module``."""
    if current().world_size > 1:
        tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)
    return module
