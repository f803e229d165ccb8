"""Data-parallel training on PyTorch's own engine: torchrun launches, DDP averages gradients.

``torchrun --nproc_per_node N -m drt train ...`` (or ``drt train --nproc N``) starts N processes; each
joins the job from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
with gloo on CPU or nccl on CUDA. Every rank runs the same loop on its chunk of each global batch
(``TensorLoader`` sharding: global batch = N × ``--batch-size``); methods see the unwrapped module,
the loop forwards through ``DistributedDataParallel``. Rank 0 alone writes checkpoints, the results
store and printed tables. Everything here is a no-op in a single process.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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


def launched() -> bool:
    """Whether torchrun (or another launcher using its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_device(device: torch.device) -> torch.device:
    """``cuda`` -> this process's GPU (``cuda:LOCAL_RANK``, made current); other devices unchanged."""
    if device.type != "cuda" or device.index is not None:
        return device
    index = int(os.environ.get("LOCAL_RANK", current().rank)) % max(torch.cuda.device_count(), 1)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the torchrun job of this process (gloo on CPU, nccl on CUDA) for the block; then leave it.

    No-op when not launched by torchrun or when a group is already initialised (the caller owns it).
    """
    own = launched() and int(os.environ["WORLD_SIZE"]) > 1 and dist.is_available() and not dist.is_initialized()
    if own:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            local_device(device)
        dist.init_process_group(backend)
    try:
        yield current()
        if own and dist.is_initialized():
            dist.barrier()  # no rank tears gloo down while another still has a collective in flight
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def _tensor_device() -> torch.device:
    """Where collective buffers must live for the group's backend (nccl: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def wrapper(device: torch.device) -> Callable[[nn.Module], nn.Module]:
    """A function wrapping a model in DDP on this rank (identity in a single process).

    Buffers are synced when wrapping, not every forward: running statistics only
    matter in eval mode, and the loop copies rank 0's buffers to every rank before evaluating
    (``broadcast_(model, buffers_only=True)``), which leaves rank 0's exactly as DDP's default would.
    """
    if current().world_size == 1:
        return lambda model: model

    params = inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13 renamed the switch
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}

    def wrap(model: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **no_sync)

    return wrap


def all_reduce_sum(*values: float | torch.Tensor) -> list[float]:
    """Sums over ranks of scalar values, as floats (float64 on the wire; identical on every rank)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if current().world_size > 1:
        t = t.to(_tensor_device())
        dist.all_reduce(t)
    return t.cpu().tolist()
