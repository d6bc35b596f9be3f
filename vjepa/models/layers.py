"""Transformer building blocks shared by the encoder, the predictor and the heads.

Pre-norm blocks as in the reference family: x + attn(norm1(x)), x + mlp(norm2(x)), LayerNorm eps 1e-6,
qkv bias, GELU MLP (timm's Mlp). Attention goes through scaled_dot_product_attention, with optional RoPE.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from vjepa.models.pos import RoPE3D

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope: RoPE3D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, rope_tables=None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope is not None:
            cos, sin = rope_tables
            q, k = self.rope.apply(q, cos, sin), self.rope.apply(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, rope: RoPE3D | None = None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, rope_tables=None, attn_mask=None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope_tables, attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """Reference initialisation: trunc-normal std 0.02 for Linear/Conv, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


INIT_SCHEMES = ("trunc_normal", "xavier")


def initialise(module: nn.Module, scheme: str = "trunc_normal") -> nn.Module:
    """Re-initialise a freshly built model's Linear / Conv weights by `scheme`; returns the module.

    - "trunc_normal": the reference V-JEPA init the models are built with (std 0.02, residual branches
      rescaled by depth); nothing to do.
    - "xavier": MAE's init, xavier-uniform Linear weights and the patch embedding as one Linear, zero biases.
      For narrow models (width ~100-200) std 0.02 is 3-4x smaller than xavier's sqrt(2 / (fan_in + fan_out)):
      every layer then passes its input's content on attenuated under the 3-D position table, and a pixel
      decoder took many more steps to move off the per-position mean (docs/benchmarks.md, "Evidence of learning").
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme {scheme!r} is not one of {list(INIT_SCHEMES)}")
    if scheme == "xavier":
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return module


def rescale_blocks(blocks: nn.ModuleList) -> None:
    """Divide each residual branch's output projection by sqrt(2 * layer_id) (layer_id from 1)."""
    for layer_id, block in enumerate(blocks, start=1):
        block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
        block.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))


def run_blocks(blocks, x, rope_tables, grad_checkpointing: bool, out_layers=(), hook=None):
    """Run a stack of blocks; returns (x, [outputs of the requested layers]). `hook(i, x)` runs after block i."""
    outs = []
    for i, blk in enumerate(blocks):
        if grad_checkpointing and x.requires_grad:
            x = torch.utils.checkpoint.checkpoint(blk, x, rope_tables, use_reentrant=False)
        else:
            x = blk(x, rope_tables)
        if hook is not None:
            x = hook(i, x)
        if i in out_layers:
            outs.append(x)
    return x, outs
