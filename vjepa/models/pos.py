"""Position encodings: the V-JEPA 1 fixed 3-D sin-cos table and the V-JEPA 2 3-D RoPE.

Both work from token ids in (t, h, w) raster order, so a masked subset of tokens keeps its true
positions, and both are closed-form in the grid size, so a clip of another resolution or frame count
gets exact positions instead of an interpolated table.
"""
from __future__ import annotations

import functools
import math

import torch


def grid_positions(ids: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split flat token ids into (t, h, w) coordinates for a (T, H, W) token grid."""
    _, h, w = grid
    t_pos = ids // (h * w)
    h_pos = (ids % (h * w)) // w
    w_pos = ids % w
    return t_pos, h_pos, w_pos


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(pos * omega), cos(pos * omega)] with omega_k = 1 / 10000^(2k/dim) (MAE / I-JEPA convention)."""
    assert dim % 2 == 0, "sin-cos dimension must be even"
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_3d_dims(dim: int, uniform_power: bool) -> tuple[int, int, int]:
    """Per-axis widths of the 3-D table: uniform_power gives each axis 2*ceil(D/6) (then truncated to D)."""
    if uniform_power:
        d = int(2 * math.ceil(dim / 6))
        return d, d, d
    return dim // 2, dim // 4, dim // 4


def sincos_3d(dim: int, grid: tuple[int, int, int], uniform_power: bool = True,
              ids: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed 3-D sin-cos position table of shape [N, dim] for the tokens `ids` (default: all of the grid).

    Concatenated as [t, h, w] per token, as in V-JEPA 1; float32.
    """
    if ids is None:
        ids = torch.arange(grid[0] * grid[1] * grid[2])
    t_pos, h_pos, w_pos = grid_positions(ids.reshape(-1), grid)
    dt, dh, dw = sincos_3d_dims(dim, uniform_power)
    table = torch.cat([sincos_1d(dt, t_pos), sincos_1d(dh, h_pos), sincos_1d(dw, w_pos)], dim=1)
    return table[:, :dim].to(torch.float32).reshape(*ids.shape, dim)


@functools.lru_cache(maxsize=64)
def cached_sincos_3d(dim: int, grid: tuple[int, int, int], uniform_power: bool, device: str) -> torch.Tensor:
    """The full [N, dim] table of a grid, built once per (dim, grid, device): a model's positions are looked
    up in it every step (never modify the returned tensor)."""
    return sincos_3d(dim, tuple(grid), uniform_power).to(device)


class RoPE3D:
    """3-D rotary position embedding applied to queries and keys inside attention.

    The head dim is split into three slices of 2*((head_dim//3)//2) for t, h, w; leftover dims stay
    unrotated. `variant` picks the rotation:
      - "rotary": the standard pairwise rotation (scores depend only on relative positions);
      - "vjepa2": the variant the released V-JEPA 2 weights (and Hugging Face's VJEPA2) were trained with,
        whose cos/sin table is tiled with `repeat` while adjacent pairs are rotated.
    """

    VARIANTS = ("rotary", "vjepa2")

    def __init__(self, head_dim: int, variant: str = "rotary", theta: float = 10000.0):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown RoPE variant {variant!r}; choose one of {self.VARIANTS}")
        self.head_dim = head_dim
        self.axis_dim = 2 * ((head_dim // 3) // 2)
        self.variant = variant
        self.theta = theta

    def _angles(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.axis_dim
        omega = torch.arange(d // 2, dtype=torch.float32, device=pos.device) / (d / 2.0)
        omega = 1.0 / self.theta**omega
        freq = pos.to(torch.float32).unsqueeze(-1) * omega  # [..., N, d/2]
        if self.variant == "vjepa2":
            freq = freq.repeat(*([1] * (freq.dim() - 1)), 2)
        else:
            freq = freq.repeat_interleave(2, dim=-1)
        return freq.cos().to(dtype), freq.sin().to(dtype)

    @staticmethod
    def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    def tables(self, ids: torch.Tensor, grid: tuple[int, int, int], dtype: torch.dtype):
        """cos/sin tables [B or 1, 1, N, 3*axis_dim] for token ids [B, N] or [N]."""
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        coss, sins = [], []
        for p in grid_positions(ids, grid):
            c, s = self._angles(p, dtype)
            coss.append(c)
            sins.append(s)
        return torch.cat(coss, -1).unsqueeze(1), torch.cat(sins, -1).unsqueeze(1)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, heads, N, head_dim] with tables from `tables`."""
        r = cos.shape[-1]
        xr, rest = x[..., :r], x[..., r:]
        # each axis slice rotates its own adjacent pairs; the pair structure never crosses a slice boundary
        xr = xr * cos + self._rotate_pairs(xr) * sin
        return torch.cat([xr, rest], dim=-1) if rest.shape[-1] else xr
