"""Optional `torch.compile` of the encoder, predictor and teacher (perf.compile), without a recompile per step.

Mask lengths change every step (the multi-block union varies; batches are cut to their shortest sample),
and a static-shape graph is specialised to its sequence length. `BucketedMasks` cuts each mask's context
and target ids down to a multiple of `perf.mask_bucket` (a random subset, kept sorted, drawn from the mask
seed and step: reproducible and resumable), so a run meets a handful of lengths, each compiled once.
Cutting, not padding: a padded token would enter the attention of every other token and change the
result; a cut mask is still a valid mask (the batch collation already cuts the same way). Lengths below
one bucket are left as they are. `perf.compile_dynamic=true` instead compiles one shape-generic graph.

Modules are compiled in place (`nn.Module.compile`), so state_dict keys and checkpoints do not change.
"""
from __future__ import annotations

import torch

from vjepa.masks import Mask


def bucket_length(n: int, bucket: int) -> int:
    return n if n < bucket else n - n % bucket


def cut_ids(ids: torch.Tensor, keep: int, g: torch.Generator) -> torch.Tensor:
    """A random subset of `keep` ids per row of [B, K] sorted ids, kept sorted."""
    b, k = ids.shape
    if keep >= k:
        return ids
    pos = torch.rand(b, k, generator=g).topk(keep, dim=1).indices.sort(dim=1).values
    return torch.gather(ids, 1, pos.to(ids.device))


class BucketedMasks:
    """Wraps a MaskSampler; same call, same state (the wrapped sampler's step)."""

    def __init__(self, sampler, bucket: int):
        if bucket < 1:
            raise ValueError(f"mask bucket must be >= 1, got {bucket}")
        self.sampler, self.bucket = sampler, bucket

    def __call__(self, batch_size: int, source: int | None = None, grid=None) -> list[Mask]:
        step = self.sampler.step
        masks = self.sampler(batch_size, source, grid)
        # its own stream: (seed, step) -> the same cut after a resume, independent of the mask draws
        g = torch.Generator().manual_seed((self.sampler.seed * 1_000_003 + step) * 7919 + 17)
        out = []
        for m in masks:
            ctx = cut_ids(m.context, bucket_length(m.context.shape[1], self.bucket), g)
            tgt = cut_ids(m.target, bucket_length(m.target.shape[1], self.bucket), g)
            out.append(Mask(ctx, tgt))
        return out

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def compile_method(method: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                   dynamic: bool = False, max_graphs: int = 64) -> list[str]:
    """Compile the method's networks in place; returns the names compiled."""
    import torch._dynamo

    # one graph per (module, bucketed length): allow enough of them before dynamo gives up and runs eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, max_graphs)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * max_graphs)
    names = []
    for name in ("encoder", "predictor", "teacher"):
        module = getattr(method, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile(backend=backend, mode=mode, dynamic=dynamic, fullgraph=False)
            names.append(name)
    return names


def setup_compile(cfg, method, masks):
    """The trainer's hook (perf.compile): compiles `method` in place; returns the mask sampler to use."""
    perf = cfg.perf
    if not perf.compile:
        return masks
    compile_method(method, perf.compile_backend, perf.compile_mode, perf.compile_dynamic)
    return masks if perf.compile_dynamic else BucketedMasks(masks, perf.mask_bucket)
