"""Attentive probe: learned query token(s) that attend over a frozen encoder's tokens, then a linear classifier.

Order of operations (V-JEPA 2, the layout `transformers.VJEPA2ForVideoClassification` mirrors):

    x [B, N, D] -> (depth - 1) self-attention blocks over the encoder tokens x
                -> one cross-attention block: queries [B, Q, D] attend to norm1(x); no output projection
                -> mean over the Q queries (Q = 1 by default) -> Linear(D, num_classes)

V-JEPA 1 ran the self-attention blocks on the queries *after* the cross-attention, and its cross-attention has an
output projection `xattn.proj`; `variant="vjepa1"` reproduces that so its probe checkpoints load too.

Parameter names equal the reference's (`pooler.query_tokens`, `pooler.blocks.i.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}`, `pooler.cross_attention_block.{norm1,xattn.q,xattn.kv,norm2,mlp.fc1,mlp.fc2}`, `linear`), so a
reference checkpoint (`{"classifiers": [state_dict, ...]}` saved through DDP, hence the `module.` prefix) maps by
stripping the prefix. `to_hf` / `from_hf` map to and from the `pooler.*` / `classifier.*` names of transformers
(fused `qkv` / `kv` split by rows into `q_proj`, `k_proj`, `v_proj`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from vjepa.models.layers import Block
from vjepa.train.checkpoint import load_state_strict

VARIANTS = ("vjepa2", "vjepa1")


class CrossAttention(nn.Module):
    """Queries attend to tokens: `q` Linear on the queries, fused `kv` Linear on the tokens.

    Computed with the key/value projections absorbed into the queries, which is exact and cheap for few
    queries: per head h, q_h . (W_k,h y_n + b_k,h) = (W_k,h^T q_h) . y_n + (a constant the softmax ignores), and
    sum_n a_n (W_v,h y_n + b_v,h) = W_v,h (sum_n a_n y_n) + b_v,h. So the N tokens are never projected: the cost
    is O(heads x queries x N x D) instead of O(N x D^2), which is what makes training a grid of heads on cached
    features cheap. The tokens y = gamma * x_hat + beta (norm1 of the block) are given as the shared,
    affine-free x_hat and the norm's gamma / beta, folded in the same way.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, out_proj: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"probe width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim) if out_proj else None  # V-JEPA 1 only

    def token_queries(self, queries: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
        """queries [B, Q, D] -> u [B, heads, Q, D]: the attention logits over the tokens are u . x_hat."""
        b, nq, d = queries.shape
        h = self.num_heads
        q = self.q(queries).reshape(b, nq, h, d // h)
        w_k = self.kv.weight.reshape(2, h, d // h, d)[0]  # kv rows: [k | v], each head-major
        u = torch.einsum("bqhj,hjd->bhqd", q, w_k) * (d // h) ** -0.5  # queries in token space
        return u * gamma if gamma is not None else u

    def values(self, pooled: torch.Tensor, gamma: torch.Tensor | None = None,
               beta: torch.Tensor | None = None) -> torch.Tensor:
        """pooled [B, heads, Q, D] (attention-weighted means of x_hat) -> the attention output [B, Q, D]."""
        b, h, nq, d = pooled.shape
        if gamma is not None:  # the weights sum to 1: the norm's affine folds in after pooling
            pooled = pooled * gamma + beta
        out = torch.einsum("bhqd,hjd->bqhj", pooled, self.kv.weight.reshape(2, h, d // h, d)[1])
        if self.kv.bias is not None:
            out = out + self.kv.bias.reshape(2, h, d // h)[1]
        out = out.reshape(b, nq, d)
        return self.proj(out) if self.proj is not None else out

    def forward(self, queries: torch.Tensor, x_hat: torch.Tensor, gamma: torch.Tensor | None = None,
                beta: torch.Tensor | None = None) -> torch.Tensor:
        """queries [B, Q, D]; x_hat [B, N, D] (tokens, normalised without affine); gamma, beta [D] or None."""
        u = self.token_queries(queries, gamma)
        attn = torch.einsum("bhqd,bnd->bhqn", u, x_hat.to(u.dtype)).softmax(dim=-1)
        return self.values(torch.einsum("bhqn,bnd->bhqd", attn, x_hat.to(u.dtype)), gamma, beta)


class CrossAttentionBlock(nn.Module):
    """q + xattn(q, norm1(x)), then + mlp(norm2(.)); the queries themselves are not normalised (as the reference)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 out_proj: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias, out_proj)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, queries: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> torch.Tensor:
        """x_hat: layer_norm(x) without affine (eps = norm1's), when the caller shares it between several heads."""
        if x_hat is None:
            x_hat = normalize_tokens(x, self.norm1.eps)
        queries = queries + self.xattn(queries, x_hat, self.norm1.weight, self.norm1.bias)
        return queries + self.mlp(self.norm2(queries))


def stacked_logits(heads, x_hat: torch.Tensor) -> list[torch.Tensor]:
    """The logits [B, classes] of several single-block (depth 1, V-JEPA 2 order) classifiers on the same
    normalised tokens x_hat [B, N, D], with the same numbers as calling each head: the heads' queries in token
    space (`CrossAttention.token_queries`, the same for every clip) are stacked, so the attention over the N
    tokens is two matrix products for all heads together instead of a small batched product per head."""
    blocks = [h.pooler.cross_attention_block for h in heads]
    us = [blk.xattn.token_queries(h.pooler.query_tokens, blk.norm1.weight) for h, blk in zip(heads, blocks)]
    x_hat = x_hat.to(us[0].dtype)
    b, d = x_hat.shape[0], x_hat.shape[-1]
    attn = (x_hat @ torch.cat([u.reshape(-1, d) for u in us]).T).softmax(dim=1)  # [B, N, sum of heads x Q]
    pooled = attn.transpose(1, 2) @ x_hat  # [B, sum of heads x Q, D]
    logits, start = [], 0
    for head, blk, u in zip(heads, blocks, us):
        _, nh, nq, _ = u.shape
        part = pooled[:, start:start + nh * nq].reshape(b, nh, nq, d)
        start += nh * nq
        queries = head.pooler.query_tokens + blk.xattn.values(part, blk.norm1.weight, blk.norm1.bias)
        queries = queries + blk.mlp(blk.norm2(queries))
        logits.append(head.linear(queries.mean(dim=1)))
    return logits


def stackable(head) -> bool:
    """Whether `stacked_logits` computes this classifier (one cross-attention block in V-JEPA 2's order)."""
    return (isinstance(head, AttentiveClassifier) and head.pooler.variant == "vjepa2" and not len(head.pooler.blocks)
            and head.pooler.cross_attention_block.xattn.proj is None)


def normalize_tokens(x: torch.Tensor, eps: float) -> torch.Tensor:
    """layer_norm without affine: the part of every head's norm1 that heads can share."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class AttentivePooler(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, depth: int = 4, num_queries: int = 1, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-5, variant: str = "vjepa2", init_std: float = 0.02):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (the cross-attention block), got {depth}")
        self.variant = variant
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias,
                                                         out_proj=variant == "vjepa1", norm_eps=norm_eps)
        # the reference stores None (no keys) when depth == 1; an empty ModuleList has no keys either
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth - 1)])
        for blk in self.blocks:  # the shared Block uses eps 1e-6; the reference probe uses nn.LayerNorm's 1e-5
            blk.norm1.eps = blk.norm2.eps = norm_eps
        self._init(init_std)

    @torch.no_grad()
    def _init(self, std: float) -> None:
        trunc_normal_(self.query_tokens, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # residual branches scaled by 1/sqrt(2 * layer) as in the reference (V-JEPA 2's convention)
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))
        self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * max(len(self.blocks), 1)))

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D] -> pooled queries [B, Q, D]. x_hat: normalize_tokens(x), shareable between heads
        without self-attention blocks (those change the tokens first)."""
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        if self.variant == "vjepa1":
            queries = self.cross_attention_block(queries, x, x_hat)
            for blk in self.blocks:
                queries = blk(queries)
            return queries
        for blk in self.blocks:
            x, x_hat = blk(x), None
        return self.cross_attention_block(queries, x, x_hat)


class AttentiveClassifier(nn.Module):
    """Attentive pooler + Linear: tokens [B, N, D] -> logits [B, num_classes]."""

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 16, depth: int = 4, num_queries: int = 1,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-5, variant: str = "vjepa2",
                 init_std: float = 0.02):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, num_classes=num_classes, num_heads=num_heads, depth=depth,
                           num_queries=num_queries, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps,
                           variant=variant)
        self.pooler = AttentivePooler(embed_dim, num_heads, depth, num_queries, mlp_ratio, qkv_bias, norm_eps,
                                      variant, init_std)
        self.linear = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> torch.Tensor:
        # one query: the mean is that query (the reference squeezes it)
        return self.linear(self.pooler(x, x_hat).mean(dim=1))


# ---- state-dict layouts ------------------------------------------------------------------------------------------

def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DDP `module.` prefix (every key or none must carry it)."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def to_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our classifier state -> one entry of a reference checkpoint's `classifiers` list (`module.` prefix)."""
    return {f"module.{k}": v for k, v in state.items()}


def config_from_state(state: Mapping[str, torch.Tensor], num_heads: int, mlp_ratio: float | None = None) -> dict:
    """Classifier kwargs read off a (prefix-free) state dict; the head count is not in the weights."""
    try:
        embed_dim = state["pooler.query_tokens"].shape[-1]
        num_queries = state["pooler.query_tokens"].shape[1]
        num_classes = state["linear.weight"].shape[0]
        hidden = state["pooler.cross_attention_block.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise KeyError(f"not an attentive-probe state dict: no {e.args[0]!r} (keys: {sorted(state)[:8]} ...)") from None
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("pooler.blocks.")}
    variant = "vjepa1" if "pooler.cross_attention_block.xattn.proj.weight" in state else "vjepa2"
    return dict(embed_dim=embed_dim, num_classes=num_classes, num_heads=num_heads, depth=len(blocks) + 1,
                num_queries=num_queries, mlp_ratio=mlp_ratio or hidden / embed_dim,
                qkv_bias="pooler.cross_attention_block.xattn.q.bias" in state, variant=variant)


def load_reference_probes(src, num_heads: int, norm_eps: float = 1e-5) -> list[AttentiveClassifier]:
    """Every classifier of a reference attentive-probe checkpoint (a file or its loaded dict), loaded strictly.

    num_heads: the probe's head count (not stored in the weights; V-JEPA 2 evals use 16)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True) if isinstance(src, (str, Path)) else src
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("classifiers"), (list, tuple)):
        where = src if isinstance(src, (str, Path)) else "the given dict"
        raise KeyError(f"{where}: no 'classifiers' list (a reference attentive-probe checkpoint has one)")
    heads = []
    for i, raw in enumerate(ckpt["classifiers"]):
        state = strip_module_prefix(raw)
        head = AttentiveClassifier(**config_from_state(state, num_heads), norm_eps=norm_eps)
        load_state_strict(head, state, f"classifiers[{i}]")
        heads.append(head)
    return heads


def _split_rows(t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    return tuple(x.clone() for x in torch.chunk(t, n, dim=0))


def to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (V-JEPA 2 variant) classifier state -> `VJEPA2ForVideoClassification` `pooler.*` / `classifier.*` names."""
    state = strip_module_prefix(state)
    if "pooler.cross_attention_block.xattn.proj.weight" in state:
        raise ValueError("a V-JEPA 1 probe (cross-attention output projection, blocks after the queries) has no "
                         "transformers equivalent")
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if k == "pooler.query_tokens":
            out[k] = v
        elif parts[0] == "linear":
            out[f"classifier.{parts[1]}"] = v
        elif parts[1] == "cross_attention_block":
            pre, rest = "pooler.cross_attention_layer", parts[2:]
            if rest[0] in ("norm1", "norm2"):
                out[f"{pre}.layer_norm{rest[0][-1]}.{rest[1]}"] = v
            elif rest[0] == "mlp":
                out[f"{pre}.mlp.{rest[1]}.{rest[2]}"] = v
            elif rest[1] == "q":
                out[f"{pre}.cross_attn.q_proj.{rest[2]}"] = v
            elif rest[1] == "kv":
                for name, part in zip("kv", _split_rows(v, 2)):
                    out[f"{pre}.cross_attn.{name}_proj.{rest[2]}"] = part
            else:
                raise KeyError(f"unexpected probe key {k}")
        elif parts[1] == "blocks":
            pre, rest = f"pooler.self_attention_layers.{parts[2]}", parts[3:]
            if rest[0] in ("norm1", "norm2"):
                out[f"{pre}.layer_norm{rest[0][-1]}.{rest[1]}"] = v
            elif rest[0] == "mlp":
                out[f"{pre}.mlp.{rest[1]}.{rest[2]}"] = v
            elif rest[1] == "qkv":
                for name, part in zip("qkv", _split_rows(v, 3)):
                    out[f"{pre}.self_attn.{name}_proj.{rest[2]}"] = part
            elif rest[1] == "proj":
                out[f"{pre}.self_attn.out_proj.{rest[2]}"] = v
            else:
                raise KeyError(f"unexpected probe key {k}")
        else:
            raise KeyError(f"unexpected probe key {k}")
    return out


def from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`VJEPA2ForVideoClassification` state (whole model or head only) -> our classifier state (encoder keys
    dropped)."""
    out, pending = {}, {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "classifier":
            out[f"linear.{parts[1]}"] = v
        elif k == "pooler.query_tokens":
            out[k] = v
        elif parts[:2] == ["pooler", "cross_attention_layer"]:
            pre, rest = "pooler.cross_attention_block", parts[2:]
            if rest[0].startswith("layer_norm"):
                out[f"{pre}.norm{rest[0][-1]}.{rest[1]}"] = v
            elif rest[0] == "mlp":
                out[f"{pre}.mlp.{rest[1]}.{rest[2]}"] = v
            elif rest[1] == "q_proj":
                out[f"{pre}.xattn.q.{rest[2]}"] = v
            else:  # k_proj / v_proj: fused below
                pending.setdefault(f"{pre}.xattn.kv.{rest[2]}", {})[rest[1][0]] = v
        elif parts[:2] == ["pooler", "self_attention_layers"]:
            pre, rest = f"pooler.blocks.{parts[2]}", parts[3:]
            if rest[0].startswith("layer_norm"):
                out[f"{pre}.norm{rest[0][-1]}.{rest[1]}"] = v
            elif rest[0] == "mlp":
                out[f"{pre}.mlp.{rest[1]}.{rest[2]}"] = v
            elif rest[1] == "out_proj":
                out[f"{pre}.attn.proj.{rest[2]}"] = v
            else:
                pending.setdefault(f"{pre}.attn.qkv.{rest[2]}", {})[rest[1][0]] = v
    for key, parts in pending.items():
        order = "qkv" if ".attn.qkv." in key else "kv"
        missing = [p for p in order if p not in parts]
        if missing:
            raise KeyError(f"transformers state lacks the {missing} projection(s) for {key}")
        out[key] = torch.cat([parts[p] for p in order], dim=0)
    if "linear.weight" not in out:
        raise KeyError("no classifier.* keys: not a VJEPA2ForVideoClassification state dict")
    return out


