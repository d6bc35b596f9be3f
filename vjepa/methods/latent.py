"""Latent prediction: the student encoder sees the context, the predictor predicts a teacher's features
of the whole clip at the target positions (layer-normed targets, L1).

With `context_loss` w > 0 the predictor also regresses the teacher's features at the context positions (its
outputs there; V-JEPA 2.1's dense loss), weighted w: the student's visible tokens must carry the teacher's
content, not only what the masked positions need. The logged "predict" term stays the masked-target loss, so
it compares with the trivial baselines as before.

One class, two teachers:
  - `salt`: a frozen teacher (e.g. the stage-1 pixel model), any size or width, always in eval mode;
  - `vjepa`: the teacher is an EMA of the student (momentum schedule start -> end).
The I-JEPA image case is `vjepa` on single-frame clips with I-JEPA masks.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from vjepa.methods.base import Method, layer_norm_targets, trivial_losses
from vjepa.models import gather_tokens
from vjepa.train.optim import momentum_at


class LatentPrediction(Method):
    def __init__(self, encoder, predictor, teacher=None, ema=(0.998, 1.0), loss: str = "l1",
                 context_loss: float = 0.0):
        super().__init__()
        if context_loss < 0:
            raise ValueError(f"context_loss {context_loss} is negative")
        self.context_loss = float(context_loss)
        self.encoder, self.predictor = encoder, predictor
        self.ema = tuple(ema) if teacher is None else None
        self.name = "vjepa" if teacher is None else "salt"
        if teacher is None:
            teacher = copy.deepcopy(encoder)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()
        if loss not in ("l1", "smooth_l1", "l2"):
            raise ValueError(f"unknown latent loss {loss!r}; choose l1, smooth_l1 or l2")
        self.loss_name = loss

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen or EMA, the teacher never runs in training mode (no drop path)
        return self

    def release_teacher(self) -> None:
        """Drop a frozen teacher whose targets now come from a cache (vjepa/train/target_cache.py)."""
        if self.ema is not None:
            raise ValueError("an EMA teacher changes every step: its targets cannot be cached")
        self.teacher = None

    def trained_modules(self):
        return {"encoder": self.encoder, "predictor": self.predictor}

    def saved_modules(self):
        # a frozen teacher is a file of its own (the stage-1 checkpoint); an EMA teacher is training state
        mods = self.trained_modules()
        if self.ema is not None:
            mods["target_encoder"] = self.teacher
        return mods

    def _distance(self, pred, target):
        if self.loss_name == "l1":
            return (pred - target).abs().mean()
        if self.loss_name == "smooth_l1":
            return F.smooth_l1_loss(pred, target)
        return (pred - target).pow(2).mean()

    def teacher_targets(self, video, targets=None) -> torch.Tensor:
        """The teacher's layer-normed features of the whole clip [B, N, D] (float32), or the cached ones."""
        if targets is None:
            if self.teacher is None:
                raise ValueError("this method's teacher was released for cached targets: pass targets=")
            with torch.no_grad():
                targets = layer_norm_targets(self.teacher(video))
        return targets.float()

    def forward(self, video, masks, captions=None, targets=None):
        """`targets`: the teacher's layer-normed features of `video` [B, N, D] when they were computed ahead
        (a target cache); otherwise the teacher runs here."""
        targets = self.teacher_targets(video, targets)
        grid = self.encoder.patch_embed_grid(video)
        losses, context_losses = [], []
        for i, mask in enumerate(masks):
            z = self.encoder(video, mask.context)
            if self.context_loss:
                pred, at_context = self.predictor(z, mask.context, mask.target, grid, mask_index=i, with_context=True)
                context_losses.append(self._distance(at_context.float(), gather_tokens(targets, mask.context)))
            else:
                pred = self.predictor(z, mask.context, mask.target, grid, mask_index=i)
            losses.append(self._distance(pred.float(), gather_tokens(targets, mask.target)))
        predict = torch.stack(losses).mean()
        metrics = {"predict": predict.detach(), **trivial_losses(targets, [m.target for m in masks], self._distance)}
        loss = predict
        if context_losses:
            context = torch.stack(context_losses).mean()
            loss = predict + self.context_loss * context
            metrics["context"] = context.detach()
        return loss, {"loss": loss.detach(), **metrics}

    @torch.no_grad()
    def after_step(self, step, total_steps):
        if self.ema is None:
            return {}
        m = momentum_at(step, total_steps, *self.ema)
        student = [p.detach() for p in self.encoder.parameters()]
        teacher = list(self.teacher.parameters())
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1 - m)
        return {"momentum": m}
