"""AdamW with the reference parameter groups, and the per-step schedules (warmup + cosine LR, cosine WD)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


def param_groups(modules: list[nn.Module]) -> list[dict]:
    """Two groups: weights that decay, and biases / norms / other 1-D parameters that do not."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def build_optimizer(modules: list[nn.Module], lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                    fused: bool | None = None) -> torch.optim.AdamW:
    groups = param_groups(modules)
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"]) and bool(groups[0]["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


@dataclass
class Schedule:
    """lr: linear warmup start_lr -> lr over warmup_steps, then cosine to final_lr; wd: cosine wd -> final_wd."""

    total_steps: int
    lr: float
    start_lr: float
    final_lr: float
    warmup_steps: int
    weight_decay: float
    final_weight_decay: float

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress))

    def wd_at(self, step: int) -> float:
        progress = min(step / max(1, self.total_steps), 1.0)
        return self.final_weight_decay + 0.5 * (self.weight_decay - self.final_weight_decay) * (
            1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr, wd = self.lr_at(step), self.wd_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_wd", True):
                group["weight_decay"] = wd
        return lr, wd


def momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """EMA momentum, linear from start to end over the run (V-JEPA)."""
    return start + (end - start) * min(step / max(1, total_steps), 1.0)
