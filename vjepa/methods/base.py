"""What every method (objective) gives the trainer.

A method owns its models and answers three questions: which modules are trained (the optimiser and DDP
see those), what the loss of a batch is, and what changes after an optimiser step (the EMA teacher).
The trainer never branches on a method's name.

Metrics a method may return beside "loss" that the trainer reads (docs/architecture.md, "Reading a run"):
  - "trivial_zero", "trivial_position": what trivial predictors score on the same targets (`trivial_losses`);
  - "predict": the prediction term those baselines compare with, when the loss adds other terms to it
    (TC-JEPA's regularisers); without it the loss is the prediction term.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from vjepa.masks import Mask
from vjepa.models import gather_tokens


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


@torch.no_grad()
def trivial_losses(targets: torch.Tensor, target_ids: list[torch.Tensor],
                   distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss two trivial predictors score on a batch's targets, measured with the method's own `distance`
    on exactly the targets its loss sees: `targets` [B, N, D] of the whole clip, gathered at each mask's
    target ids [B, K], each mask's distance averaged over the masks (as the loss is).

    - "trivial_zero": predicting zeros everywhere;
    - "trivial_position": predicting at each position the mean target of that position over the batch
      ([B, N, D] -> [N, D]). A predictor is handed its target positions (mask tokens), so it can learn
      this without looking at the context. The batch mean includes the sample itself, which makes this
      baseline slightly optimistic (harder to beat), i.e. conservative when judging whether a model learns.
    """
    targets = targets.float()
    position_mean = targets.mean(dim=0, keepdim=True).expand_as(targets)
    zero, position = [], []
    for ids in target_ids:
        target = gather_tokens(targets, ids)
        zero.append(distance(torch.zeros_like(target), target))
        position.append(distance(gather_tokens(position_mean, ids), target))
    return {"trivial_zero": torch.stack(zero).mean(), "trivial_position": torch.stack(position).mean()}
