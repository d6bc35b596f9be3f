"""TC-JEPA: latent prediction whose predictor reads the item's captions in every layer.

Same as `LatentPrediction` (either teacher: EMA as in the paper, or frozen as in SALT stage 2), plus:
  - a frozen text encoder gives each caption's word features; a trained projection maps them to the
    predictor width; items without a caption get a learned null caption (and are counted);
  - a `TextConditioner` after every predictor block: patch tokens cross-attend to each caption's words
    separately, the results are max-pooled across the item's captions (at most `max_captions`, the first ones);
  - loss = prediction + sparsity * L_sparse + consistency * L_consistency, the regularisers computed from
    the per-layer patch-word overlaps the conditioners leave on the `TextCondition`.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from vjepa.methods.base import trivial_losses
from vjepa.methods.latent import LatentPrediction
from vjepa.models import gather_tokens
from vjepa.models.text import TextCondition, TextConditioner, TextEncoder, TextProjection, sparsity_consistency

log = logging.getLogger(__name__)


class TextConditionedPrediction(LatentPrediction):
    def __init__(self, encoder, predictor, text_encoder: TextEncoder, teacher=None, ema=(0.996, 1.0),
                 loss: str = "l2", max_captions: int = 8, sparsity: float = 0.1, consistency: float = 0.5,
                 center_keys: bool = False):
        super().__init__(encoder, predictor, teacher=teacher, ema=ema, loss=loss)
        self.name = "tcjepa"
        if max_captions < 1:
            raise ValueError(f"max_captions must be >= 1, got {max_captions}")
        self.text_encoder = text_encoder.requires_grad_(False)
        self.text_proj = TextProjection(text_encoder.dim, predictor.embed_dim)
        predictor.conditioners = nn.ModuleList(TextConditioner(predictor.embed_dim, center_keys=center_keys)
                                               for _ in predictor.blocks)
        self.max_captions, self.sparsity, self.consistency = max_captions, sparsity, consistency
        self.uncaptioned_items = 0  # items trained without text so far (this process)
        self.seen_items = 0
        self._last: dict[str, float] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        return self

    def trained_modules(self):
        return {"encoder": self.encoder, "predictor": self.predictor, "text_proj": self.text_proj}

    def condition(self, captions: list[list[str]] | None, batch_size: int) -> tuple[TextCondition, torch.Tensor]:
        """The batch's captions as a TextCondition, and has_text [B] (False: the item uses the null caption)."""
        if captions is None:
            captions = [[] for _ in range(batch_size)]
        if len(captions) != batch_size:
            raise ValueError(f"got captions for {len(captions)} items, the batch has {batch_size}")
        kept = [[c for c in caps if c and c.strip()][:self.max_captions] for caps in captions]
        device = self.text_proj.null.device
        n = max(1, max(len(c) for c in kept))
        flat = [c for caps in kept for c in caps]
        if flat:
            word_feats, word_mask = self.text_encoder(flat)
        else:
            word_feats = torch.zeros(0, 1, self.text_encoder.dim, device=device)
            word_mask = torch.zeros(0, 1, dtype=torch.bool, device=device)
        s = word_feats.shape[1]
        feats = torch.zeros(batch_size, n, s, self.text_encoder.dim, device=device)
        token_mask = torch.zeros(batch_size, n, s, dtype=torch.bool, device=device)
        caption_mask = torch.zeros(batch_size, n, dtype=torch.bool, device=device)
        rows = torch.tensor([b for b, caps in enumerate(kept) for _ in caps], dtype=torch.long, device=device)
        cols = torch.tensor([j for caps in kept for j in range(len(caps))], dtype=torch.long, device=device)
        feats[rows, cols] = word_feats.to(device)
        token_mask[rows, cols] = word_mask.to(device)
        caption_mask[rows, cols] = True
        return self.text_proj(feats, token_mask, caption_mask), caption_mask.any(dim=1)

    def forward(self, video, masks, captions=None, targets=None):
        """`targets`: precomputed layer-normed teacher features [B, N, D] (a target cache), as in LatentPrediction."""
        cond, has_text = self.condition(captions, video.shape[0])
        missing = int((~has_text).sum())
        if missing and self.uncaptioned_items == 0:
            log.info("tcjepa: items without a caption train with the learned null caption (counted)")
        self.uncaptioned_items += missing
        self.seen_items += video.shape[0]
        targets = self.teacher_targets(video, targets)
        grid = self.encoder.patch_embed_grid(video)
        predict, sparse, consistency = [], [], []
        for i, mask in enumerate(masks):
            cond.overlaps.clear()
            z = self.encoder(video, mask.context)
            pred = self.predictor(z, mask.context, mask.target, grid, mask_index=i, condition=cond)
            predict.append(self._distance(pred.float(), gather_tokens(targets, mask.target)))
            s, c = sparsity_consistency([o.float() for o in cond.overlaps], cond.caption_mask, has_text)
            sparse.append(s)
            consistency.append(c)
        l_pred, l_sparse, l_cons = (torch.stack(x).mean() for x in (predict, sparse, consistency))
        loss = l_pred + self.sparsity * l_sparse + self.consistency * l_cons
        metrics = {"loss": loss.detach(), "predict": l_pred.detach(), "sparse": l_sparse.detach(),
                   "consistency": l_cons.detach(), "uncaptioned": torch.tensor(float((~has_text).sum()))}
        self._last = metrics
        # baselines of the prediction term ("predict"), which the trainer compares them with
        metrics = {**metrics, **trivial_losses(targets, [m.target for m in masks], self._distance)}
        return loss, metrics

    @torch.no_grad()
    def after_step(self, step, total_steps):
        out = super().after_step(step, total_steps)
        out.update({f"text/{k}": float(v) for k, v in self._last.items() if k != "loss"})
        out["text/uncaptioned_total"] = float(self.uncaptioned_items)
        out["text/truncated_total"] = float(self.text_encoder.truncated)
        return out
