"""Data-parallel training on PyTorch's own engine: torchrun launches, DDP averages gradients.

``torchrun --nproc_per_node N -m drt train ...`` (or ``drt train --nproc N``) starts N processes; each
joins the job from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
with gloo on CPU or nccl on CUDA. Every rank runs the same loop on its chunk of each global batch
(``TensorLoader`` sharding: global batch = N × ``--batch-size``); methods see the unwrapped module,
the loop forwards through ``DistributedDataParallel``. Rank 0 alone writes checkpoints, the results
store and printed tables. Everything here is a no-op in a single process; the collectives the layers
share (ranks, sums, rank 0's answer or weights on every rank) are in ``drt.dist``.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from drt.dist import Ranks, current
from drt.errors import first_line


def launched() -> bool:
    """Whether torchrun (or another launcher using its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def lost_peer(e: BaseException) -> str | None:
    """What a collective failing because another process of the job is gone says, in a few words; None
    for any other error."""
    text = str(e)
    if not (isinstance(e, dist.DistError) or any(k in text for k in ("gloo", "NCCL", "by peer"))):
        return None
    said = re.search(r"Connection (?:reset|closed) by peer|Broken pipe|[Tt]imed? ?out", text)
    return said.group(0) if said else first_line(e, 80)


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


def wrapper(device: torch.device) -> Callable[[nn.Module], nn.Module]:
    """A function wrapping a model in DDP on this rank (identity in a single process).

    Buffers are synced when wrapping, not every forward: running statistics only
    matter in eval mode, and the loop copies rank 0's buffers to every rank before evaluating
    (``drt.dist.broadcast_(model, buffers_only=True)``), which leaves rank 0's exactly as DDP's default would.
    """
    if current().world_size == 1:
        return lambda model: model

    params = inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13 renamed the switch
    switch = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    no_sync: dict[str, Any] = {switch: False}

    def wrap(model: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **no_sync)

    return wrap
