"""What every method (objective) gives the trainer.

A method owns its models and answers three questions: which modules are trained (the optimiser and DDP
see those), what the loss of a batch is, and what changes after an optimiser step (the EMA teacher).
The trainer never branches on a method's name.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vjepa.masks import Mask


class Method(nn.Module):
    name = "method"

    def __init__(self):
        super().__init__()
        self.encoder: nn.Module  # the student: the network that is probed and passed on

    def trained_modules(self) -> dict[str, nn.Module]:
        """Modules optimised by this method (and saved in every checkpoint)."""
        raise NotImplementedError

    def saved_modules(self) -> dict[str, nn.Module]:
        """Modules whose state a checkpoint keeps: the trained ones plus any state they update (EMA)."""
        return self.trained_modules()

    def forward(self, video: torch.Tensor, masks: list[Mask], captions: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch (video [B, C, T, H, W]; one Mask per mask generator; each item's captions, which
        only text-conditioned methods read) and named metrics."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}


def layer_norm_targets(features: torch.Tensor) -> torch.Tensor:
    """V-JEPA targets: layer_norm over the feature dim, without affine parameters."""
    return nn.functional.layer_norm(features, (features.shape[-1],))
