"""Vectorised random crop (zero padding) + horizontal flip, with parameters drawn separately from use."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip_params(n: int, generator: torch.Generator,
                     pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-sample crop offsets ``dy, dx`` in [0, 2*pad] and flip flags for ``n`` samples (on CPU).

    Drawn in a fixed order from ``generator`` so a global batch's parameters can be sliced per rank.
    """
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def apply_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                    pad: int = 4) -> torch.Tensor:
    """Crop ``x`` (B, C, H, W), zero-padded by ``pad``, at offsets (dy, dx), then mirror where ``flip``.

    Offset ``pad`` is the unshifted image. Zero padding acts on the tensor as given: on normalised inputs
    0 is the training mean colour. Returns a new tensor; ``x`` is not modified.
    """
    b, c, h, w = x.shape
    dev = x.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` plus random horizontal flip, per sample, of ``x`` (B, C, H, W).

    The standard CIFAR augmentation (He et al. 2016); no Python loop over samples.
    """
    return apply_crop_flip(x, *crop_flip_params(len(x), generator, pad), pad=pad)
