"""Official V-JEPA 1 (facebookresearch/jepa) and V-JEPA 2 (facebookresearch/vjepa2) `.pt` checkpoints.

Layout: a dict with `encoder`, `target_encoder`, `predictor` (and optimiser state etc.), each a state dict
whose names carry `module.backbone.`. Encoder names equal ours (`patch_embed.proj`, `blocks.N.attn.qkv`, ...);
V-JEPA 1 adds the fixed sin-cos `pos_embed` buffer [1, N, D]. Predictor names: `predictor_embed`,
`mask_tokens.i` ([1, 1, P] each), `predictor_blocks.N`, `predictor_norm`, `predictor_proj`, and for
sin-cos models the `predictor_pos_embed` buffer.

The sin-cos buffers are known extras: each is checked against our closed-form table (which also tells the
clip size and `uniform_power` the model was built for) and then dropped; a buffer that matches no table is
an error, since the model could not reproduce it. V-JEPA 2 (no buffer) is RoPE with the released rotation
("vjepa2" variant).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from vjepa.interop.keys import WRAPPER_PREFIXES, strip_prefixes
from vjepa.models.pos import sincos_3d

ENCODER_KEYS = ("target_encoder", "encoder", "ema_encoder")  # default preference for the encoder entry
VJEPA1_KNOWN_EXTRAS = ("pos_embed", "predictor_pos_embed")
_PRED_RENAMES = (("predictor_embed.", "embed."), ("predictor_blocks.", "blocks."), ("predictor_norm.", "norm."),
                 ("predictor_proj.", "proj."))
_MASK_TOKEN = re.compile(r"mask_tokens\.(\d+)$")


def is_official(ckpt) -> bool:
    return isinstance(ckpt, Mapping) and any(
        isinstance(ckpt.get(k), Mapping) for k in (*ENCODER_KEYS, "predictor"))


def is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def encoder_state(state: Mapping[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None]:
    """Official encoder state dict -> (our names, the sin-cos `pos_embed` buffer or None)."""
    sd = strip_prefixes(state, WRAPPER_PREFIXES)
    return sd, sd.pop("pos_embed", None)


def predictor_state(state: Mapping[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None]:
    """Official predictor state dict -> (our names, the `predictor_pos_embed` buffer or None)."""
    sd = strip_prefixes(state, WRAPPER_PREFIXES)
    pos = sd.pop("predictor_pos_embed", None)
    out, tokens = {}, {}
    for k, v in sd.items():
        if m := _MASK_TOKEN.match(k):
            tokens[int(m.group(1))] = v
            continue
        for old, new in _PRED_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    if tokens:
        if sorted(tokens) != list(range(len(tokens))):
            raise ValueError(f"mask tokens are not numbered 0..n-1: {sorted(tokens)}")
        out["mask_tokens"] = torch.stack([tokens[i].reshape(1, 1, -1) for i in range(len(tokens))])
    return out, pos


def match_sincos(table: torch.Tensor, *, patch_size: int, tubelet_size: int, img_size: int | None = None,
                 num_frames: int | None = None, uniform_power: bool | None = None,
                 what: str = "pos_embed", atol: float = 1e-5) -> tuple[tuple[int, int, int], bool]:
    """Find the (T, H, W) grid and `uniform_power` whose fixed 3-D sin-cos table equals `table` [1?, N, D].

    With img_size / num_frames given only that grid is tried; otherwise every square grid with N tokens.
    Raises ValueError when no table matches (the model could not reproduce that position embedding).
    """
    table = table.detach().reshape(-1, table.shape[-1]).to(torch.float32)
    n, dim = table.shape
    if img_size is not None and num_frames is not None:
        grids = [(max(num_frames // tubelet_size, 1), img_size // patch_size, img_size // patch_size)]
    else:
        grids = []
        for t in range(1, n + 1):
            if n % t == 0 and (h := math.isqrt(n // t)) ** 2 == n // t:
                if num_frames is not None and t != max(num_frames // tubelet_size, 1):
                    continue
                if img_size is not None and h != img_size // patch_size:
                    continue
                grids.append((t, h, h))
    powers = (True, False) if uniform_power is None else (uniform_power,)
    best = math.inf
    for grid in grids:
        if grid[0] * grid[1] * grid[2] != n:
            continue
        for up in powers:
            err = (sincos_3d(dim, grid, up) - table).abs().max().item()
            best = min(best, err)
            if err <= atol:
                return grid, up
    raise ValueError(
        f"{what} [{n}, {dim}] matches no fixed 3-D sin-cos table (tried grids {grids}, uniform_power {powers}; "
        f"closest max abs diff {best:.3g}): this model cannot reproduce it. Pass img_size / num_frames if the "
        "clip size is known, or allow_missing=['{what}'] only if you accept different position embeddings")


def export_state(encoder, predictor=None, *, flavor: str | None = None, prefix: str = "module.backbone.",
                 target_encoder=None, epoch: int = 0) -> dict:
    """Our encoder (+ predictor) as an official-layout checkpoint dict (V-JEPA 1 or V-JEPA 2 flavour).

    `flavor` defaults to "vjepa1" for sin-cos models and "vjepa2" for RoPE models (which must use the
    released "vjepa2" rotation, or the official code would compute different outputs).
    """
    flavor = flavor or ("vjepa1" if encoder.pos_embed_type == "sincos" else "vjepa2")
    if flavor not in ("vjepa1", "vjepa2"):
        raise ValueError(f"flavor must be 'vjepa1' or 'vjepa2', got {flavor!r}")
    want = "sincos" if flavor == "vjepa1" else "rope"
    for name, m in (("encoder", encoder), ("predictor", predictor)):
        if m is None:
            continue
        if m.pos_embed_type != want:
            raise ValueError(f"{flavor} checkpoints use {want} positions; the {name} uses {m.pos_embed_type}")
        if want == "rope" and m.rope.variant != "vjepa2":
            raise ValueError(f"the {name} uses the {m.rope.variant!r} RoPE rotation; official V-JEPA 2 code "
                             "computes the 'vjepa2' rotation, so the exported weights would not reproduce it")

    def enc_sd(model):
        sd = {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
        if flavor == "vjepa1":
            sd[prefix + "pos_embed"] = sincos_3d(model.embed_dim, model.grid, model.uniform_power).unsqueeze(0)
        return sd

    out = {"encoder": enc_sd(encoder), "target_encoder": enc_sd(target_encoder or encoder), "epoch": epoch}
    if predictor is not None:
        sd = {}
        for k, v in predictor.state_dict().items():
            if k == "mask_tokens":
                for i in range(v.shape[0]):
                    sd[f"{prefix}mask_tokens.{i}"] = v[i].detach().clone().reshape(1, 1, -1)
                continue
            for new, old in _PRED_RENAMES:
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            sd[prefix + k] = v.detach().clone()
        if flavor == "vjepa1":
            sd[prefix + "predictor_pos_embed"] = sincos_3d(
                predictor.embed_dim, encoder.grid, predictor.uniform_power).unsqueeze(0)
        out["predictor"] = sd
    return out
