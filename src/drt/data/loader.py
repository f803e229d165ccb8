"""TensorLoader: deterministic, shardable mini-batches from in-memory tensors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from drt.data.augment import apply_crop_flip, crop_flip_params
from drt.data.base import AUGMENTATIONS
from drt.errors import DrtError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) only: no global random state is read or changed."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def rank_bounds(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s chunk of ``m`` samples split in ``world_size`` parts (as ``tensor_split``)."""
    base, extra = divmod(m, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class TensorLoader:
    """Batches of (x, y) from tensors, with order and augmentation a pure function of (seed, epoch).

    Distributed sharding: every rank draws the same permutation; global batch i is
    ``perm[i*b*W:(i+1)*b*W]`` and rank r takes its r-th chunk of b. Augmentation parameters are drawn for
    the whole global batch and sliced, so W ranks see exactly what one process with batch b*W sees. A final
    partial global batch (``drop_last=False``) is split into W near-equal chunks (empty if fewer than W
    samples remain; use ``drop_last=True`` with W > 1 to avoid that).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: str = "none", seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu") -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or seed < 0:
            raise DrtError(f"need batch_size >= 1, 0 <= rank < world_size and seed >= 0; got batch_size="
                           f"{batch_size}, rank={rank}, world_size={world_size}, seed={seed}")
        if augment not in AUGMENTATIONS:
            raise DrtError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        if augment == "crop-flip" and x.dim() != 4:
            raise DrtError(f"augmentation 'crop-flip' needs images (N, C, H, W), got shape {tuple(x.shape)}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields (mutates self)."""
        if epoch < 0:
            raise DrtError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        n, g = len(self.x), self.batch_size * self.world_size
        return n // g if self.drop_last else -(-n // g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        n, g = len(self.x), self.batch_size * self.world_size
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * g:(i + 1) * g]  # the global batch
            params = crop_flip_params(len(idx), gen) if self.augment == "crop-flip" else None
            lo, hi = rank_bounds(len(idx), self.rank, self.world_size)
            mine = idx[lo:hi]
            xb = self.x[mine.to(self.x.device)].to(self.device, non_blocking=True)
            yb = self.y[mine.to(self.y.device)].to(self.device, non_blocking=True)
            if params is not None:
                dy, dx, flip = (p[lo:hi] for p in params)
                xb = apply_crop_flip(xb, dy, dx, flip)
            yield xb, yb
