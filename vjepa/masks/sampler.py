"""Batch-level mask sampling: several generators at once, reproducible and resumable.

Masks are a pure function of (seed, step, global sample position): the sampler draws them in the
training process (not in DataLoader workers, whose copies would each keep their own RNG), so the state
after k batches is just k and resuming restores it exactly. A rank's i-th sample sits at global
position i * world_size + rank, which is where a distributed sampler interleaving ranks puts it, so a
run on 2 ranks x B draws the same per-sample masks as 1 rank x 2B (block sizes are per step).

A run mixing datasets batch by batch (data/mixture.py) gives each source its own generators (`sources`),
on its own token grid; a batch's `source` picks them, the step is shared.
"""
from __future__ import annotations

import torch

from vjepa.masks.generators import Mask, MultiBlock2D, MultiBlock3D, TubeMask


class MaskSampler:
    def __init__(self, generators: list, seed: int = 0, rank: int = 0, world_size: int = 1,
                 sources: list[list] | None = None):
        if not generators or (sources is not None and not all(sources)):
            raise ValueError("MaskSampler needs at least one mask generator (per source)")
        self.generators, self.seed = list(generators), seed
        self.sources = None if sources is None else [list(g) for g in sources]
        self.rank, self.world_size = rank, world_size
        self.step = 0

    def sample(self, batch_size: int, step: int, source: int | None = None, grid=None) -> list[Mask]:
        """One Mask per generator (of data source `source`, if given) for batch number `step` (does not
        move the internal counter). `grid`: the batch's token grid, which the generators must draw on (masks
        of another grid would index the wrong tokens, silently when their ids happen to fit)."""
        if source is not None and self.sources is None:
            raise ValueError(f"a batch of data source {source}, but this sampler has no per-source generators")
        generators = self.generators if source is None else self.sources[source]
        for gen in generators:
            if grid is not None and tuple(getattr(gen, "grid", grid)) != tuple(grid):
                raise ValueError(f"{type(gen).__name__} masks are drawn on a {tuple(gen.grid)} token grid, this batch "
                                 f"has {tuple(grid)}" + (f" (data source {source})" if source is not None else "")
                                 + ": data.frames_per_clip / crop_size disagree with the clips")
        masks = []
        for k, gen in enumerate(generators):
            base = ((self.seed * 1_000_003 + step) * 101 + k) * 1_000_033
            batch_g = torch.Generator().manual_seed(base)
            sample_gs = [torch.Generator().manual_seed(base + 1 + i * self.world_size + self.rank)
                         for i in range(batch_size)]
            masks.append(gen(batch_g, sample_gs))
        return masks

    def __call__(self, batch_size: int, source: int | None = None, grid=None) -> list[Mask]:
        masks = self.sample(batch_size, self.step, source, grid)
        self.step += 1
        return masks

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"mask sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.step = int(state["step"])


def build_masks(kind: str, grid: tuple[int, int, int], **kwargs) -> list:
    """Named mask recipes from the references: 'multiblock' (V-JEPA 8 x 0.15 + 2 x 0.7), 'tube' (0.9),
    'ijepa' (I-JEPA 2-D), each with its defaults overridable by keyword."""
    if kind == "multiblock":
        short = dict(num_blocks=8, spatial_scale=(0.15, 0.15))
        long = dict(num_blocks=2, spatial_scale=(0.7, 0.7))
        common = {k: v for k, v in kwargs.items() if k in ("temporal_scale", "aspect_ratio")}
        return [MultiBlock3D(grid, **short, **common), MultiBlock3D(grid, **long, **common)]
    if kind == "tube":
        return [TubeMask(grid, **kwargs)]
    if kind == "ijepa":
        return [MultiBlock2D(grid, **kwargs)]
    raise ValueError(f"unknown mask kind {kind!r}; choose multiblock, tube or ijepa")
