"""Baseline "encoders" for probe tables: what a probe reaches without a learned representation.

`PixelEncoder` has the interface the probes use (`forward(video [B, C, T, H, W]) -> tokens [B, N, D]`, attributes
`embed_dim`, `num_heads`, `patch_size`, `tubelet_size`): its tokens are the clip's tubelets (the encoder's
tubelet x patch x patch grid, `vjepa.models.heads.patchify`, flattened), optionally mapped to a narrower width
by a fixed random orthogonal projection, followed by three position features (the token's t, h, w coordinates,
each scaled to [-1, 1]) so that the permutation-invariant attentive pooling can tell where a token is.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vjepa.models.heads import patchify

NUM_POSITION_FEATURES = 3


def largest_divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of n that is <= k (at least 1)."""
    return max(d for d in range(1, max(min(n, k), 1) + 1) if n % d == 0)


def token_positions(t: int, h: int, w: int) -> torch.Tensor:
    """[t*h*w, 3]: each token's (t, h, w) grid coordinate scaled to [-1, 1] (0 for a length-1 axis), in the
    encoder's (t, h, w) token order."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class PixelEncoder(nn.Module):
    """Raw pixels as tokens: [B, C, T, H, W] -> [B, N, D] with N = (T / tubelet) (H / patch) (W / patch), the token
    count of a ViT with the same tubelet and patch size.

    - `dim=None`: D = C x tubelet x patch^2 + 3, each token the tubelet's pixels in patchify's order (tubelet frame,
      row, column, channel) then its 3 position features.
    - `dim=d`: the pixels are mapped by a fixed [C x tubelet x patch^2, d - 3] matrix with orthonormal columns
      (drawn once from `seed`; a random rotation followed by keeping d - 3 coordinates), so D = d: the probes
      then cost what they cost on a width-d encoder (the attentive head's parameters grow with D^2).
    - `num_heads`: the attention heads a probe should use on these tokens: the largest divisor of D that is
      at most the value given (the encoder's, so that every row of a table gets the same probe).
    """

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int = 3, dim: int | None = None,
                 num_heads: int = 1, seed: int = 0):
        super().__init__()
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.pixel_dim = in_chans * tubelet_size * patch_size * patch_size
        if dim is None or dim <= 0:
            self.projection = None
            self.embed_dim = self.pixel_dim + NUM_POSITION_FEATURES
        else:
            if not NUM_POSITION_FEATURES < dim <= self.pixel_dim + NUM_POSITION_FEATURES:
                raise ValueError(f"PixelEncoder dim {dim} must be in ({NUM_POSITION_FEATURES}, "
                                 f"{self.pixel_dim + NUM_POSITION_FEATURES}]")
            g = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(self.pixel_dim, dim - NUM_POSITION_FEATURES, generator=g))
            self.register_buffer("projection", q, persistent=False)
            self.embed_dim = dim
        self.num_heads = largest_divisor_at_most(self.embed_dim, num_heads)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() == 4:
            video = video.unsqueeze(2)
        b, c, t, h, w = video.shape
        t = max(t, self.tubelet_size) if t == 1 else t  # patchify repeats a single frame to fill a tubelet
        if c != self.in_chans or t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"PixelEncoder: a clip {tuple(video.shape)} does not split into {self.in_chans}-channel "
                             f"{self.tubelet_size}x{self.patch_size}x{self.patch_size} tubelets")
        x = patchify(video, self.tubelet_size, self.patch_size).flatten(-2).float()  # [B, N, q*p*p*C]
        if self.projection is not None:
            x = x @ self.projection.to(x.device)
        pos = token_positions(t // self.tubelet_size, h // self.patch_size, w // self.patch_size).to(x.device)
        return torch.cat([x, pos.expand(b, -1, -1)], dim=-1)

    @classmethod
    def like(cls, encoder: nn.Module, dim: int | None = None, seed: int = 0) -> "PixelEncoder":
        """A pixel baseline on `encoder`'s tubelet / patch grid, channels and probe heads; `dim`: see the class."""
        in_chans = getattr(encoder, "in_chans", None) or 3
        return cls(encoder.patch_size, encoder.tubelet_size, in_chans, dim,
                   getattr(encoder, "num_heads", None) or 1, seed)
