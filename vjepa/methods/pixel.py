"""`pixel`: masked pixel reconstruction (VideoMAE-style, SALT stage 1): the encoder sees the context,
the decoder reconstructs each target tubelet's normalised pixels; MSE on the targets only."""
from __future__ import annotations

import torch

from vjepa.methods.base import Method
from vjepa.models import gather_tokens, normalized_pixel_targets


class PixelReconstruction(Method):
    name = "pixel"

    def __init__(self, encoder, decoder, norm_eps: float = 1e-6):
        super().__init__()
        self.encoder, self.decoder, self.norm_eps = encoder, decoder, norm_eps

    def trained_modules(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    def forward(self, video, masks, captions=None):
        targets = normalized_pixel_targets(video, self.encoder.tubelet_size, self.encoder.patch_size, self.norm_eps)
        grid = self.encoder.patch_embed_grid(video)
        losses = []
        for i, mask in enumerate(masks):
            z = self.encoder(video, mask.context)
            pred = self.decoder(z, mask.context, mask.target, grid, mask_index=i)
            losses.append((pred.float() - gather_tokens(targets, mask.target)).pow(2).mean())
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach()}
