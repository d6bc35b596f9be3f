"""The one VisionTransformer for video and images (an image is a clip of one frame), with size presets."""
from __future__ import annotations

import torch
import torch.nn as nn

from vjepa.models.layers import Block, LayerNorm, init_weights, rescale_blocks, run_blocks
from vjepa.models.pos import RoPE3D, cached_sincos_3d

# Reference dims (V-JEPA 1/2, I-JEPA public code). giant uses mlp 48/11; gigantic keeps the reference's
# effective ratio 4 (its 64/13 falls through to the default there).
PRESETS: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0),
}


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, patch, patch); tokens in (t, h, w) order."""

    def __init__(self, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        if x.dim() == 4:  # [B, C, H, W] image
            x = x.unsqueeze(2)
        t, h, w = x.shape[-3:]
        if t == 1 and self.tubelet_size > 1:
            # an image fills one tubelet by repetition (V-JEPA 2's image path)
            x = x.expand(-1, -1, self.tubelet_size, -1, -1)
            t = self.tubelet_size
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input of {t}x{h}x{w} (frames x height x width) does not tile into "
                f"{self.tubelet_size}x{self.patch_size}x{self.patch_size} tubelets")
        x = self.proj(x)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


def token_grid(frames: int, size: int | tuple[int, int], patch_size: int, tubelet_size: int) -> tuple[int, int, int]:
    """The (T, H, W) token grid of a clip; a single frame takes one tubelet."""
    h, w = (size, size) if isinstance(size, int) else size
    return max(frames // tubelet_size, 1), h // patch_size, w // patch_size


class VisionTransformer(nn.Module):
    """Video ViT; `forward(x, masks)` encodes only the tokens whose ids are in `masks` (the context).

    x: [B, C, T, H, W] (or [B, C, H, W] for images). masks: LongTensor [B, K] of flat token ids in the
    (t, h, w) grid, or None for all tokens. Returns per-token features [B, K or N, D].
    """

    def __init__(self, img_size: int = 224, num_frames: int = 16, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 pos_embed: str = "sincos", uniform_power: bool = True, rope_variant: str = "rotary",
                 grad_checkpointing: bool = False):
        super().__init__()
        if pos_embed not in ("sincos", "rope"):
            raise ValueError(f"pos_embed must be 'sincos' or 'rope', got {pos_embed!r}")
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.embed_dim = self.num_features = embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.pos_embed_type, self.uniform_power = pos_embed, uniform_power
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        self.rope = RoPE3D(embed_dim // num_heads, rope_variant) if pos_embed == "rope" else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], rope=self.rope) for i in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.apply(init_weights)
        rescale_blocks(self.blocks)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid of the clip size the model was built for."""
        return token_grid(self.num_frames, self.img_size, self.patch_size, self.tubelet_size)

    def patch_embed_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid of an input [B, C, T, H, W] (or [B, C, H, W]) without embedding it."""
        t, h, w = x.shape[-3:] if x.dim() == 5 else (1, *x.shape[-2:])
        return token_grid(t, (h, w), self.patch_size, self.tubelet_size)

    def sincos_table(self, grid, device) -> torch.Tensor:
        return cached_sincos_3d(self.embed_dim, tuple(grid), self.uniform_power, str(device))

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None, out_layers=None):
        """Encode; with `out_layers` (block indices) also return those blocks' raw outputs."""
        tokens, grid = self.patch_embed(x)
        if self.pos_embed_type == "sincos":
            tokens = tokens + self.sincos_table(grid, tokens.device).to(tokens.dtype)
        if masks is not None:
            tokens = gather_tokens(tokens, masks)
            ids = masks
        else:
            ids = torch.arange(tokens.shape[1], device=tokens.device)
        rope_tables = self.rope.tables(ids, grid, tokens.dtype) if self.rope is not None else None
        x, outs = run_blocks(self.blocks, tokens, rope_tables, self.grad_checkpointing, tuple(out_layers or ()))
        x = self.norm(x)
        return (x, outs) if out_layers is not None else x


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], ids [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def vit(size: str = "base", **kwargs) -> VisionTransformer:
    """Build a VisionTransformer from a preset name; keyword arguments override the preset."""
    if size not in PRESETS:
        raise ValueError(f"unknown ViT size {size!r}; presets: {', '.join(PRESETS)}")
    return VisionTransformer(**{**PRESETS[size], **kwargs})
