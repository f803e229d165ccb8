"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 / 32x32 images, pre-LN.

Patch embedding (a conv of kernel = stride = ``patch``), learned positions, ``depth`` blocks of
multi-head self-attention with three separate q / k / v projections (so PCN and masks see three
Linear layers reading one LayerNorm output) and a 2-layer GELU MLP, a final LayerNorm, mean pooling
over the tokens (no class token: one fewer special case for PCN's statistics and for the masks) and a
linear head. Every Linear reads a (batch, tokens, width) tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drt.errors import DrtError
from drt.models.base import MODELS


class Attention(nn.Module):
    """Multi-head self-attention: separate ``q``, ``k``, ``v`` Linears, scaled dot products, ``proj``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # static shapes only, so torch.fx traces it
        q, k, v = (f(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x))))."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln2, self.fc1, self.act, self.fc2 = nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), \
            nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """Patch embedding + positions, ``depth`` blocks, LayerNorm, mean over tokens, linear head."""

    drt_own_init = True  # transformer init (truncated normal 0.02), not the zoo's Kaiming convs

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, patch: int) -> None:
        super().__init__()
        c, h, w = input_shape
        tokens = math.ceil(h / patch) * math.ceil(w / patch)
        self.pad = (0, (-w) % patch, 0, (-h) % patch)  # 28x28 with patch 8: zero-pad to whole patches
        self.embed = nn.Conv2d(c, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.Sequential(*(Block(width, heads, round(mlp_ratio * width)) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.drt_stages = [[f"blocks.{i}"] for i in range(depth)]  # CKA-SR: one stage per block
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        z = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(z)).mean(1))


@MODELS.register("vit", help="small Vision Transformer (pre-LN, patch conv, q/k/v Linears, GELU MLP, mean "
                             "pooling; --width --depth --heads --mlp-ratio --patch)", inputs="image")
def vit(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64, depth: int = 4, heads: int = 4,
        mlp_ratio: float = 2.0, patch: int = 4) -> nn.Module:
    """ViT; ``width`` must divide by ``heads``; images of any size are padded to whole patches."""
    if width % heads:
        raise DrtError(f"model 'vit': width {width} must be a multiple of heads {heads}")
    if patch > min(input_shape[1:]):
        raise DrtError(f"model 'vit': patch {patch} is larger than the images ({input_shape[1]}x{input_shape[2]})")
    return ViT(tuple(input_shape), num_classes, width, depth, heads, mlp_ratio, patch)
