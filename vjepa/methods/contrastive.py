"""`contrastive`: a small CLIP-style image-text baseline for TC-JEPA's comparison.

The same vision encoder sees the whole clip (no masks); its mean-pooled features and the mean-pooled word
features of the same frozen text encoder TC-JEPA uses are projected to a shared space; symmetric InfoNCE
over the batch with a learned temperature. Each captioned item contributes its first caption; items without
a caption are left out of the loss (and counted).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa.methods.base import Method
from vjepa.models.text import TextEncoder


class ContrastiveHeads(nn.Module):
    """Projections to the shared space and the log inverse temperature (CLIP's init, 1/0.07)."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128):
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class ContrastiveImageText(Method):
    name = "contrastive"

    def __init__(self, encoder, text_encoder: TextEncoder, dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.text_encoder = text_encoder.requires_grad_(False)
        self.heads = ContrastiveHeads(encoder.embed_dim, text_encoder.dim, dim)
        self.uncaptioned_items = 0

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        return self

    def trained_modules(self):
        return {"encoder": self.encoder, "contrastive_heads": self.heads}

    def forward(self, video, masks=None, captions=None):
        captions = captions or [[] for _ in range(video.shape[0])]
        keep = [i for i, caps in enumerate(captions) if any(c.strip() for c in caps)]
        self.uncaptioned_items += video.shape[0] - len(keep)
        image = self.heads.image(self.encoder(video).mean(dim=1))  # every item runs, so DDP sees all parameters
        if len(keep) < 2:  # InfoNCE needs negatives: nothing to learn from this batch
            loss = 0.0 * image.sum() + 0.0 * self.heads.text.weight.sum() + 0.0 * self.heads.logit_scale
            return loss, {"loss": loss.detach()}
        texts = [next(c for c in captions[i] if c.strip()) for i in keep]
        words, mask = self.text_encoder(texts)
        text = (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # masked mean over words
        image = F.normalize(image[keep], dim=-1)
        text = F.normalize(self.heads.text(text.to(image.dtype)), dim=-1)
        logits = self.heads.logit_scale.clamp(max=math.log(100)).exp() * image @ text.t()
        # duplicate captions in a batch are positives for each other, not negatives
        same = torch.tensor([[a == b for b in texts] for a in texts], device=logits.device)
        labels = torch.arange(len(keep), device=logits.device)
        logits = logits.masked_fill(same & ~torch.eye(len(keep), dtype=torch.bool, device=logits.device), -1e4)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        return loss, {"loss": loss.detach()}
