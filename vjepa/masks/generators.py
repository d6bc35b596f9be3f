"""Mask generators over a (T, H, W) token grid.

Each generator takes a batch-level torch.Generator (for what is shared by the batch: block sizes,
truncation) and one torch.Generator per sample (for what is per sample: block positions), and returns
one `Mask`: context ids [B, Kc] and target ids [B, Kt] (flat ids in (t, h, w) order, sorted, disjoint),
equal lengths across the batch so they stack. Seeding samples separately lets a distributed run draw
each sample's mask from its global position in the batch, so 2 ranks x B and 1 rank x 2B agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Mask:
    context: torch.Tensor  # LongTensor [B, Kc]
    target: torch.Tensor  # LongTensor [B, Kt]

    def to(self, device) -> "Mask":
        return Mask(self.context.to(device, non_blocking=True), self.target.to(device, non_blocking=True))


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def _randint(hi: int, g: torch.Generator) -> int:
    """Uniform integer in [0, hi)."""
    return int(torch.randint(hi, (1,), generator=g).item())


def _stack_truncated(id_lists: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """Cut every sample's ids to the batch's shortest by a random subset (kept sorted) so they stack."""
    k = min(len(x) for x in id_lists)
    out = []
    for x in id_lists:
        if len(x) > k:
            x = x[torch.randperm(len(x), generator=g)[:k]].sort().values
        out.append(x)
    return torch.stack(out)


class TubeMask:
    """VideoMAE random tube masking: one random spatial mask per sample, repeated over all time steps."""

    def __init__(self, grid: tuple[int, int, int], ratio: float = 0.9):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"tube mask ratio must be in (0, 1), got {ratio}")
        self.grid, self.ratio = tuple(grid), ratio

    def __call__(self, batch_g: torch.Generator, sample_gs: list[torch.Generator]) -> Mask:
        t, h, w = self.grid
        hw = h * w
        n_keep = max(1, min(hw - 1, int(round(hw * (1 - self.ratio)))))
        offsets = torch.arange(t).unsqueeze(1) * hw
        ctx, tgt = [], []
        for g in sample_gs:
            perm = torch.randperm(hw, generator=g)
            keep, drop = perm[:n_keep].sort().values, perm[n_keep:].sort().values
            ctx.append((offsets + keep).flatten().sort().values)
            tgt.append((offsets + drop).flatten().sort().values)
        return Mask(torch.stack(ctx), torch.stack(tgt))


class MultiBlock3D:
    """V-JEPA multi-block masking: the target is the union of `num_blocks` spatio-temporal blocks.

    The block size (spatial scale, aspect ratio, temporal scale) is drawn once per batch and the block
    positions per sample; the context is the complement of the target, redrawn if it comes out empty.
    """

    def __init__(self, grid: tuple[int, int, int], num_blocks: int = 8, spatial_scale=(0.15, 0.15),
                 temporal_scale=(1.0, 1.0), aspect_ratio=(0.75, 1.5), max_tries: int = 20):
        self.grid = tuple(grid)
        self.num_blocks = num_blocks
        self.spatial_scale = _pair(spatial_scale)
        self.temporal_scale = _pair(temporal_scale)
        self.aspect_ratio = _pair(aspect_ratio)
        self.max_tries = max_tries

    def block_size(self, g: torch.Generator) -> tuple[int, int, int]:
        t, h, w = self.grid
        bt = max(1, int(t * _uniform(*self.temporal_scale, g)))
        area = h * w * _uniform(*self.spatial_scale, g)
        ar = _uniform(*self.aspect_ratio, g)
        bh = min(h, max(1, int(round(math.sqrt(area * ar)))))
        bw = min(w, max(1, int(round(math.sqrt(area / ar)))))
        return min(bt, t), bh, bw

    def _one(self, size, g: torch.Generator) -> torch.Tensor:
        t, h, w = self.grid
        bt, bh, bw = size
        for _ in range(self.max_tries):
            masked = torch.zeros(t, h, w, dtype=torch.bool)
            for _ in range(self.num_blocks):
                s, top, left = _randint(t - bt + 1, g), _randint(h - bh + 1, g), _randint(w - bw + 1, g)
                masked[s:s + bt, top:top + bh, left:left + bw] = True
            if not masked.all():
                return masked.flatten()
        # blocks cover everything: keep one random token as context rather than loop forever
        masked = torch.ones(t * h * w, dtype=torch.bool)
        masked[_randint(t * h * w, g)] = False
        return masked

    def __call__(self, batch_g: torch.Generator, sample_gs: list[torch.Generator]) -> Mask:
        size = self.block_size(batch_g)
        masked = [self._one(size, g) for g in sample_gs]
        ctx = _stack_truncated([(~m).nonzero().flatten() for m in masked], batch_g)
        tgt = _stack_truncated([m.nonzero().flatten() for m in masked], batch_g)
        return Mask(ctx, tgt)


class MultiBlock2D:
    """I-JEPA masking on a single-frame grid (T = 1): a large context block minus several target blocks."""

    def __init__(self, grid: tuple[int, int, int], num_targets: int = 4, target_scale=(0.15, 0.2),
                 target_aspect_ratio=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep: int = 10,
                 max_tries: int = 50):
        self.grid = tuple(grid)
        if self.grid[0] != 1:
            raise ValueError(f"MultiBlock2D is for single-frame grids; got {self.grid} (use MultiBlock3D for video)")
        self.num_targets = num_targets
        self.target = MultiBlock3D(self.grid, 1, target_scale, (1.0, 1.0), target_aspect_ratio)
        self.context = MultiBlock3D(self.grid, 1, context_scale, (1.0, 1.0), (1.0, 1.0))
        self.min_keep, self.max_tries = min_keep, max_tries

    def _block(self, size, g) -> torch.Tensor:
        masked = torch.zeros(self.grid[1:], dtype=torch.bool)
        _, bh, bw = size
        top, left = _randint(self.grid[1] - bh + 1, g), _randint(self.grid[2] - bw + 1, g)
        masked[top:top + bh, left:left + bw] = True
        return masked.flatten()

    def __call__(self, batch_g: torch.Generator, sample_gs: list[torch.Generator]) -> Mask:
        tsize, csize = self.target.block_size(batch_g), self.context.block_size(batch_g)
        ctx, tgt = [], []
        for g in sample_gs:
            for _ in range(self.max_tries):
                targets = torch.zeros(self.grid[1] * self.grid[2], dtype=torch.bool)
                for _ in range(self.num_targets):
                    targets |= self._block(tsize, g)
                context = self._block(csize, g) & ~targets
                if context.sum() >= self.min_keep:
                    break
            else:
                raise RuntimeError(f"I-JEPA mask: no context with >= {self.min_keep} tokens after "
                                   f"{self.max_tries} tries on grid {self.grid}; lower target_scale or min_keep")
            ctx.append(context.nonzero().flatten())
            tgt.append(targets.nonzero().flatten())
        return Mask(_stack_truncated(ctx, batch_g), _stack_truncated(tgt, batch_g))


def _pair(x) -> tuple[float, float]:
    if isinstance(x, (int, float)):
        return float(x), float(x)
    lo, hi = x
    return float(lo), float(hi)
