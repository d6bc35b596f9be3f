"""Heads on top of the encoder: the VideoMAE-style pixel decoder of the stage-1 teacher and its targets."""
from __future__ import annotations

import torch

from vjepa.models.predictor import Predictor
from vjepa.models.vit import VisionTransformer


def pixel_decoder(encoder: VisionTransformer, embed_dim: int = 384, depth: int = 4, num_heads: int = 6,
                  num_mask_tokens: int = 2, **kwargs) -> Predictor:
    """A narrow ViT that reconstructs the pixels of each target tubelet (a Predictor with pixel output)."""
    return Predictor(in_dim=encoder.embed_dim, out_dim=pixels_per_token(encoder), embed_dim=embed_dim, depth=depth,
                     num_heads=num_heads, num_mask_tokens=num_mask_tokens, pos_embed=encoder.pos_embed_type,
                     uniform_power=encoder.uniform_power, **kwargs)


def pixels_per_token(encoder: VisionTransformer) -> int:
    return encoder.tubelet_size * encoder.patch_size**2 * encoder.in_chans


def patchify(video: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, tubelet*patch*patch, C] in the encoder's (t, h, w) token order."""
    if video.dim() == 4:
        video = video.unsqueeze(2)
    b, c, t, h, w = video.shape
    if t == 1 and tubelet_size > 1:
        video = video.expand(-1, -1, tubelet_size, -1, -1)
        t = tubelet_size
    p, q = patch_size, tubelet_size
    x = video.reshape(b, c, t // q, q, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, T', H', W', q, p, p, c
    return x.reshape(b, (t // q) * (h // p) * (w // p), q * p * p, c)


def normalized_pixel_targets(video: torch.Tensor, tubelet_size: int, patch_size: int,
                             eps: float = 1e-6) -> torch.Tensor:
    """VideoMAE targets: each tubelet's pixels normalised per channel by the tubelet's own mean and std.

    Returns [B, N, tubelet*patch*patch*C].
    """
    x = patchify(video.float(), tubelet_size, patch_size)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True) + eps).sqrt()
    return x.flatten(-2)


PIXEL_TARGETS = ("patch_norm", "raw")


def pixel_targets(video: torch.Tensor, tubelet_size: int, patch_size: int, kind: str = "patch_norm",
                  eps: float = 1e-6) -> torch.Tensor:
    """What a pixel decoder predicts per tubelet [B, N, tubelet*patch*patch*C]: "patch_norm" (VideoMAE: each
    tubelet normalised by its own mean and std, `normalized_pixel_targets`) or "raw" (the input pixels as the
    loader normalised them, globally)."""
    if kind == "patch_norm":
        return normalized_pixel_targets(video, tubelet_size, patch_size, eps)
    if kind == "raw":
        return patchify(video.float(), tubelet_size, patch_size).flatten(-2)
    raise ValueError(f"pixel target {kind!r} is not one of {list(PIXEL_TARGETS)}")
