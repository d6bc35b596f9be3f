"""`pixel`: masked pixel reconstruction (VideoMAE-style, SALT stage 1): the encoder sees the context,
the decoder reconstructs each target tubelet's pixels (per-tubelet normalised as VideoMAE, or raw); MSE on
the targets only."""
from __future__ import annotations

import torch

from vjepa.methods.base import Method, trivial_losses
from vjepa.models import gather_tokens
from vjepa.models.heads import PIXEL_TARGETS, pixel_targets


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean()


class PixelReconstruction(Method):
    name = "pixel"

    def __init__(self, encoder, decoder, norm_eps: float = 1e-6, targets: str = "patch_norm"):
        super().__init__()
        self.encoder, self.decoder, self.norm_eps, self.targets = encoder, decoder, norm_eps, targets
        if targets not in PIXEL_TARGETS:
            raise ValueError(f"pixel target {targets!r} is not one of {list(PIXEL_TARGETS)}")

    def trained_modules(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    def forward(self, video, masks, captions=None):
        targets = pixel_targets(video, self.encoder.tubelet_size, self.encoder.patch_size, self.targets, self.norm_eps)
        grid = self.encoder.patch_embed_grid(video)
        losses = []
        for i, mask in enumerate(masks):
            z = self.encoder(video, mask.context)
            pred = self.decoder(z, mask.context, mask.target, grid, mask_index=i)
            losses.append(mse(pred.float(), gather_tokens(targets, mask.target)))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach(), **trivial_losses(targets, [m.target for m in masks], mse)}
