"""The Vision Transformer: shapes, PCN exactness with one shared q/k/v basis, masks over its Linears."""

from __future__ import annotations

import pytest
import torch

from drt import pcn
from drt.errors import DrtError
from drt.methods.dst import RigL
from drt.models import create
from drt.sparse import prunable
from drt.train import TrainConfig, train


def _images(n, shape=(3, 32, 32)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(("shape", "patch", "tokens"), [((3, 32, 32), 4, 64), ((1, 28, 28), 8, 16), ((1, 8, 8), 4, 4)])
def test_shapes_and_padding_to_whole_patches(shape, patch, tokens):
    torch.manual_seed(0)
    model = create("vit", shape, 10, width=32, depth=2, heads=4, patch=patch)
    assert model.pos.shape == (1, tokens, 32) and model(torch.rand(5, *shape)).shape == (5, 10)
    assert model.drt_stages == [["blocks.0"], ["blocks.1"]]


def test_bad_options_are_one_line_errors():
    with pytest.raises(DrtError, match="width 64 must be a multiple of heads 3"):
        create("vit", (3, 32, 32), 10, heads=3)
    with pytest.raises(DrtError, match="option 'mlp_ratio' must be a positive number"):
        create("vit", (3, 32, 32), 10, mlp_ratio=0)
    with pytest.raises(DrtError, match="patch 16 is larger than the images"):
        create("vit", (1, 8, 8), 10, patch=16)


@pytest.mark.parametrize("plan", ["factored", "merged"])
def test_pcn_keeping_every_component_is_the_same_function_in_float64(plan):
    torch.manual_seed(0)
    model = create("vit", (3, 32, 32), 10, width=32, depth=2, heads=4).double().eval()
    x = _images(64)
    stats = pcn.collect(model, [x])  # tokens are observations: (N*T, d) per Linear
    assert stats.input_shapes["blocks.0.attn.q"][-1] == 32
    small = pcn.compress(model, stats, keep="all", plan=plan)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-10, rtol=0)


def test_q_k_v_share_one_basis_and_one_projection_per_forward():
    torch.manual_seed(0)
    model = create("vit", (3, 32, 32), 10, width=32, depth=1, heads=4).double().eval()
    x = _images(32)
    stats = pcn.collect(model, [x])
    keys = {n: stats.key(n) for n in ("blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.fc1")}
    assert len({keys[f"blocks.0.attn.{p}"] for p in "qkv"}) == 1  # one LayerNorm output, one basis
    assert keys["blocks.0.fc1"] != keys["blocks.0.attn.q"]  # the MLP reads the second LayerNorm
    small = pcn.compress(model, stats, keep=8, plan="factored")
    attn = small.blocks[0].attn
    shared = attn.q.projection
    assert shared is not None and attn.k.projection is shared and attn.v.projection is shared
    with torch.no_grad():
        small(x)
        small(x)
    assert shared.computed == 2  # once per forward for the three readers
    assert (attn.q.k, attn.q.d) == (8, 32)


def test_masks_cover_every_linear_and_the_patch_conv_not_layernorms_or_positions(digits):
    torch.manual_seed(0)
    model = create("vit", digits.input_shape, digits.num_classes, width=32, depth=2, heads=4)
    names = set(prunable(model))
    assert "embed.weight" in names and "blocks.0.attn.q.weight" in names and "head.weight" in names
    assert not any("ln" in n or "norm" in n or n == "pos" for n in names)
    method = RigL(RigL.Options(sparsity=0.9))
    out = train(model, digits, TrainConfig(epochs=1, batch_size=64, lr=0.05), method, device=torch.device("cpu"))
    assert out.final["sparsity_achieved"] == pytest.approx(0.9, abs=1e-3)
    for name, mask in method.mask.items():  # masked weights stay exactly zero
        assert (dict(out.model.named_parameters())[name][~mask] == 0).all()
