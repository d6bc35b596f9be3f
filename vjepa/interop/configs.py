"""Model configs: read them off a built model, infer them from weights, build models from them.

A config is the plain keyword dict of `VisionTransformer` / `Predictor` (JSON- and weights_only-safe).
Widths, depths, patch/tubelet sizes, MLP ratio and qkv bias come from the tensor shapes; the head count is
not in the weights, so it comes from the reference presets (or an explicit `num_heads`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import torch

from vjepa.interop.keys import block_count, check_state_dict
from vjepa.models.predictor import Predictor
from vjepa.models.vit import PRESETS, VisionTransformer, vit

# Head counts of the released models by width. V-JEPA 2's giant/gigantic are the "xformers" variants
# (head dim 64); the sin-cos (V-JEPA 1 era) definitions use 16 heads.
HEADS_BY_WIDTH = {d["embed_dim"]: d["num_heads"] for d in PRESETS.values()}
ROPE_HEADS_BY_WIDTH = {**HEADS_BY_WIDTH, 1408: 22, 1664: 26}
VJEPA2_PREDICTOR_HEADS = 12  # released V-JEPA 2 predictors: width 384, 12 heads

ENCODER_KEYS = ("img_size", "num_frames", "patch_size", "tubelet_size", "in_chans", "embed_dim", "depth",
                "num_heads", "mlp_ratio", "qkv_bias", "drop_path_rate", "pos_embed", "uniform_power",
                "rope_variant", "grad_checkpointing")
PREDICTOR_KEYS = ("in_dim", "out_dim", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                  "drop_path_rate", "num_mask_tokens", "pos_embed", "uniform_power", "rope_variant",
                  "zero_init_mask_tokens", "grad_checkpointing")


def mlp_ratio_for(hidden: int, dim: int) -> float:
    """A float r with int(dim * r) == hidden (what the model constructors compute)."""
    r = hidden / dim
    for _ in range(8):
        if int(dim * r) == hidden:
            return r
        r = math.nextafter(r, math.inf)
    raise ValueError(f"no MLP ratio reproduces hidden width {hidden} from width {dim}")


def _drop_path(blocks) -> float:
    if len(blocks) < 2:
        return 0.0
    dp = blocks[-1].drop_path
    return float(getattr(dp, "drop_prob", 0.0) or 0.0)


def encoder_config(model: VisionTransformer) -> dict:
    """The constructor kwargs that rebuild `model` (architecture only)."""
    blk = model.blocks[0] if len(model.blocks) else None
    img = model.img_size if isinstance(model.img_size, int) else list(model.img_size)
    return dict(
        img_size=img, num_frames=model.num_frames, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
        in_chans=model.in_chans, embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=model.num_heads,
        mlp_ratio=mlp_ratio_for(blk.mlp.fc1.out_features, model.embed_dim) if blk is not None else 4.0,
        qkv_bias=blk.attn.qkv.bias is not None if blk is not None else True,
        drop_path_rate=_drop_path(model.blocks), pos_embed=model.pos_embed_type, uniform_power=model.uniform_power,
        rope_variant=model.rope.variant if model.rope is not None else "rotary",
        grad_checkpointing=model.grad_checkpointing)


def predictor_config(model: Predictor) -> dict:
    blk = model.blocks[0] if len(model.blocks) else None
    return dict(
        in_dim=model.in_dim, out_dim=model.out_dim, embed_dim=model.embed_dim, depth=len(model.blocks),
        num_heads=blk.attn.num_heads if blk is not None else 1,
        mlp_ratio=mlp_ratio_for(blk.mlp.fc1.out_features, model.embed_dim) if blk is not None else 4.0,
        qkv_bias=blk.attn.qkv.bias is not None if blk is not None else True,
        drop_path_rate=_drop_path(model.blocks), num_mask_tokens=model.mask_tokens.shape[0],
        pos_embed=model.pos_embed_type, uniform_power=model.uniform_power,
        rope_variant=model.rope.variant if model.rope is not None else "rotary",
        grad_checkpointing=model.grad_checkpointing)


def build_encoder_from_config(cfg: Mapping, device=None) -> VisionTransformer:
    """VisionTransformer from a config dict; a `size` entry selects a preset that the other keys override."""
    cfg = dict(cfg)
    size = cfg.pop("size", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return vit(size, **cfg) if size is not None else VisionTransformer(**cfg)


def build_predictor_from_config(cfg: Mapping, device=None) -> Predictor:
    cfg = dict(cfg)
    if "encoder_dim" in cfg:
        cfg.setdefault("in_dim", cfg.pop("encoder_dim"))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return Predictor(**cfg)


def infer_encoder_config(state: Mapping[str, torch.Tensor], *, rope: bool, num_heads: int | None = None,
                         **overrides) -> dict:
    """Encoder config from our-named weights. `rope` picks the head-count table for giant widths."""
    w = state.get("patch_embed.proj.weight")
    if w is None:
        raise ValueError("no patch_embed.proj.weight in the encoder weights: not a ViT encoder checkpoint")
    if w.dim() != 5:
        raise ValueError(f"patch embedding of shape {tuple(w.shape)}: only 3-D (tubelet) video patch embeddings "
                         "are supported (2-D image-only checkpoints are not)")
    dim, in_chans, tubelet, ph, pw = w.shape
    if ph != pw:
        raise ValueError(f"non-square patches {ph}x{pw} are not supported")
    depth = block_count(state, "blocks")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if num_heads is None:
        table = ROPE_HEADS_BY_WIDTH if rope else HEADS_BY_WIDTH
        if dim not in table:
            raise ValueError(f"cannot infer the head count of a width-{dim} encoder (not a reference preset); "
                             "pass num_heads explicitly")
        num_heads = table[dim]
    cfg = dict(patch_size=int(ph), tubelet_size=int(tubelet), in_chans=int(in_chans), embed_dim=int(dim),
               depth=depth, num_heads=int(num_heads),
               mlp_ratio=mlp_ratio_for(fc1.shape[0], dim) if fc1 is not None else 4.0,
               qkv_bias="blocks.0.attn.qkv.bias" in state)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def infer_predictor_config(state: Mapping[str, torch.Tensor], *, num_heads: int, **overrides) -> dict:
    """Predictor config from our-named predictor weights (embed / mask_tokens / blocks / norm / proj)."""
    emb, proj, mt = state.get("embed.weight"), state.get("proj.weight"), state.get("mask_tokens")
    if emb is None or proj is None:
        raise ValueError("predictor weights lack the input embedding or the output projection")
    if mt is None:
        raise ValueError("predictor without mask tokens is not supported")
    width, in_dim = emb.shape
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    cfg = dict(in_dim=int(in_dim), out_dim=int(proj.shape[0]), embed_dim=int(width),
               depth=block_count(state, "blocks"), num_heads=int(num_heads),
               mlp_ratio=mlp_ratio_for(fc1.shape[0], width) if fc1 is not None else 4.0,
               qkv_bias="blocks.0.attn.qkv.bias" in state, num_mask_tokens=int(mt.shape[0]))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def instantiate(kind: str, cfg: Mapping, state: Mapping[str, torch.Tensor], what: str, allow_missing=(),
                dtype: torch.dtype = torch.float32, hint: str = ""):
    """Build an encoder ("encoder") or predictor ("predictor") from `cfg` and load `state` strictly.

    The model is built on the meta device (no wasted random init of large models) and the checkpoint
    tensors are assigned, copied to `dtype`. Returns (model in eval mode, ignored keys, keys left at init).
    """
    build = build_encoder_from_config if kind == "encoder" else build_predictor_from_config
    model = build(cfg, device="meta")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ignored, left = check_state_dict(expected, state, what, allow_missing, hint)
    sd = {k: state[k].detach().to(dtype=dtype, copy=True) for k in expected if k in state}
    if left:  # allowed-missing parameters keep the constructor's initial values
        model = build(cfg).to(dtype)
        model.load_state_dict(sd, strict=False)
    else:
        model.load_state_dict(sd, strict=True, assign=True)
    return model.eval(), ignored, left
