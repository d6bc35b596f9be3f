"""Narrow ViT that predicts features (or pixels) at target positions from context features.

The same module is the JEPA predictor (output width = the teacher's width, which may differ from the
student's) and the stage-1 pixel decoder (output width = pixels per tubelet). Per-layer conditioning
(TC-JEPA's text cross-attention) plugs in through `conditioners`: one module per block, called as
`x = conditioners[i](x, condition)` after block i.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from vjepa.models.layers import Block, LayerNorm, init_weights, rescale_blocks, run_blocks
from vjepa.models.pos import RoPE3D, cached_sincos_3d


class Predictor(nn.Module):
    def __init__(self, in_dim: int, out_dim: int | None = None, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 num_mask_tokens: int = 2, pos_embed: str = "sincos", uniform_power: bool = True,
                 rope_variant: str = "rotary", zero_init_mask_tokens: bool = True, grad_checkpointing: bool = False):
        super().__init__()
        self.in_dim, self.out_dim, self.embed_dim = in_dim, out_dim or in_dim, embed_dim
        self.pos_embed_type, self.uniform_power = pos_embed, uniform_power
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(in_dim, embed_dim)
        # one learned mask token per mask generator, as in V-JEPA
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, 1, embed_dim))
        self.rope = RoPE3D(embed_dim // num_heads, rope_variant) if pos_embed == "rope" else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], rope=self.rope) for i in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, self.out_dim)
        self.conditioners: nn.ModuleList | None = None
        self.apply(init_weights)
        rescale_blocks(self.blocks)
        if not zero_init_mask_tokens:
            trunc_normal_(self.mask_tokens, std=0.02)

    def forward(self, ctx: torch.Tensor, ctx_ids: torch.Tensor, tgt_ids: torch.Tensor,
                grid: tuple[int, int, int], mask_index: int = 0, condition=None, with_context: bool = False):
        """ctx [B, Kc, in_dim] at ids ctx_ids [B, Kc]; returns predictions [B, Kt, out_dim] at tgt_ids [B, Kt],
        and with `with_context` also its outputs at the context positions [B, Kc, out_dim] (a context loss)."""
        b, kt = tgt_ids.shape
        x = self.embed(ctx)
        m = self.mask_tokens[mask_index].to(x.dtype).expand(b, kt, -1)
        if self.pos_embed_type == "sincos":
            table = cached_sincos_3d(self.embed_dim, tuple(grid), self.uniform_power, str(x.device)).to(x.dtype)
            x = x + table[ctx_ids]
            m = m + table[tgt_ids]
        x = torch.cat([x, m], dim=1)
        ids = torch.cat([ctx_ids, tgt_ids], dim=1)
        rope_tables = self.rope.tables(ids, grid, x.dtype) if self.rope is not None else None
        hook = None
        if self.conditioners is not None and condition is not None:
            def hook(i, h):
                return self.conditioners[i](h, condition)
        x, _ = run_blocks(self.blocks, x, rope_tables, self.grad_checkpointing, hook=hook)
        if with_context:
            x = self.proj(self.norm(x))
            return x[:, -kt:], x[:, :-kt]
        return self.proj(self.norm(x[:, -kt:]))


def predictor(encoder_dim: int, out_dim: int | None = None, **kwargs) -> Predictor:
    return Predictor(in_dim=encoder_dim, out_dim=out_dim, **kwargs)
