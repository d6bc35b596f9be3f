"""Hugging Face `transformers` V-JEPA 2 (`VJEPA2Model`, `save_pretrained` folder with safetensors).

Names: `encoder.embeddings.patch_embeddings.proj`, `encoder.layer.N.{norm1, attention.{query,key,value,proj},
norm2, mlp.fc1, mlp.fc2}`, `encoder.layernorm`; `predictor.embeddings.{predictor_embeddings, mask_tokens}`,
`predictor.layer.N.*`, `predictor.layernorm`, `predictor.proj`. Our fused `attn.qkv` is the row-wise
concatenation [query; key; value]. HF computes RoPE with the released "vjepa2" rotation, LayerNorm eps from the
config (ours: 1e-6), exact GELU, and takes its position grid from `crop_size // patch_size` (ours from the
input), so outputs agree for clips of the configured crop size.

Behaviour notes checked against transformers' modeling_vjepa2.py:
  - `VJEPA2Model.forward` always encodes the full clip; `context_mask` / `target_mask` (lists of [B, K] id
    tensors) only select encoder outputs for the predictor. Our masked encoder (only context tokens) equals
    HF's layers run on the gathered tokens with `position_mask`.
  - its predictor uses mask token index 1 (`mask_index=1 % num_mask_tokens`) and sorts tokens by position
    before the blocks (a permutation: no effect on the result beyond float rounding).

Reading needs only `safetensors`; writing also builds the HF model on the meta device (no weights) to check
that every exported name and shape is what `VJEPA2Model.from_pretrained` expects.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from vjepa.interop.keys import CheckpointMismatchError, safe_load

HF_KNOWN_EXTRAS = ("pooler.*", "classifier.*")  # VJEPA2ForVideoClassification's head
_BLOCK_MAP = (("norm1.", "norm1."), ("attn.proj.", "attention.proj."), ("norm2.", "norm2."),
              ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))
_QKV = ("query", "key", "value")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------- names

def _block_to_hf(rest: str, v: torch.Tensor, out: dict, pre: str) -> bool:
    if rest.startswith("attn.qkv."):
        for name, part in zip(_QKV, v.chunk(3, dim=0)):
            out[f"{pre}attention.{name}.{rest[len('attn.qkv.'):]}"] = part.contiguous()
        return True
    for ours, theirs in _BLOCK_MAP:
        if rest.startswith(ours):
            out[pre + theirs + rest[len(ours):]] = v
            return True
    return False


def to_hf_state(encoder_sd: Mapping, predictor_sd: Mapping | None) -> dict:
    """Our state dicts -> HF VJEPA2Model names (unknown names raise)."""
    out, unknown = {}, []
    blk = re.compile(r"blocks\.(\d+)\.(.*)$")
    for k, v in encoder_sd.items():
        v = v.detach()
        if k.startswith("patch_embed.proj."):
            out["encoder.embeddings.patch_embeddings.proj." + k.split(".")[-1]] = v
        elif k.startswith("norm."):
            out["encoder.layernorm." + k[5:]] = v
        elif (m := blk.match(k)) and _block_to_hf(m.group(2), v, out, f"encoder.layer.{m.group(1)}."):
            pass
        else:
            unknown.append("encoder: " + k)
    for k, v in (predictor_sd or {}).items():
        v = v.detach()
        if k == "mask_tokens":
            out["predictor.embeddings.mask_tokens"] = v
        elif k.startswith("embed."):
            out["predictor.embeddings.predictor_embeddings." + k[6:]] = v
        elif k.startswith("norm."):
            out["predictor.layernorm." + k[5:]] = v
        elif k.startswith("proj."):
            out["predictor.proj." + k[5:]] = v
        elif (m := blk.match(k)) and _block_to_hf(m.group(2), v, out, f"predictor.layer.{m.group(1)}."):
            pass
        else:
            unknown.append("predictor: " + k)
    if unknown:
        raise ValueError("no Hugging Face name for: " + ", ".join(unknown))
    return out


def from_hf_state(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """HF names -> (encoder state, predictor state, other keys), fusing query/key/value into qkv.

    A `vjepa2.` prefix (VJEPA2ForVideoClassification) is removed; names we do not know are returned in
    `other` under their HF name so the strict check can list them.
    """
    enc, pred, other, qkv = {}, {}, {}, {}
    layer = re.compile(r"(encoder|predictor)\.layer\.(\d+)\.(.*)$")
    for k, v in state.items():
        if k.startswith("vjepa2."):
            k = k[len("vjepa2."):]
        if k.startswith("encoder.embeddings.patch_embeddings.proj."):
            enc["patch_embed.proj." + k.split(".")[-1]] = v
        elif k.startswith("encoder.layernorm."):
            enc["norm." + k.split(".")[-1]] = v
        elif k == "predictor.embeddings.mask_tokens":
            pred["mask_tokens"] = v
        elif k.startswith("predictor.embeddings.predictor_embeddings."):
            pred["embed." + k.split(".")[-1]] = v
        elif k.startswith("predictor.layernorm."):
            pred["norm." + k.split(".")[-1]] = v
        elif k.startswith("predictor.proj."):
            pred["proj." + k.split(".")[-1]] = v
        elif m := layer.match(k):
            part, i, rest = m.groups()
            dst = enc if part == "encoder" else pred
            if (a := re.match(r"attention\.(query|key|value)\.(weight|bias)$", rest)):
                qkv.setdefault((part, i, a.group(2)), {})[a.group(1)] = (k, v)
                continue
            for ours, theirs in _BLOCK_MAP:
                if rest.startswith(theirs):
                    dst[f"blocks.{i}.{ours}{rest[len(theirs):]}"] = v
                    break
            else:
                other[k] = v
        else:
            other[k] = v
    for (part, i, kind), parts in qkv.items():
        if set(parts) == set(_QKV):
            dst = enc if part == "encoder" else pred
            dst[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n][1] for n in _QKV], dim=0)
        else:  # incomplete triple: report under the original names
            other.update({name: t for name, t in parts.values()})
    return enc, pred, other


# ---------------------------------------------------------------------------------------------- configs

def configs_from_hf(cfg: Mapping) -> tuple[dict, dict | None]:
    """HF VJEPA2Config dict -> (our encoder config, our predictor config or None for a 0-layer predictor)."""
    if cfg.get("model_type") not in (None, "vjepa2"):
        raise ValueError(f"not a V-JEPA 2 config (model_type {cfg.get('model_type')!r})")
    eps = cfg.get("layer_norm_eps", 1e-6)
    if abs(eps - 1e-6) > 1e-12:
        raise ValueError(f"layer_norm_eps {eps} is not supported (our blocks use 1e-6)")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {cfg.get('hidden_act')!r} is not supported (ours: exact GELU)")
    patch = cfg.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ValueError(f"non-square patch size {patch} is not supported")
        patch = patch[0]
    enc = dict(img_size=cfg.get("crop_size", 256), num_frames=cfg.get("frames_per_clip", 64), patch_size=patch,
               tubelet_size=cfg.get("tubelet_size", 2), in_chans=cfg.get("in_chans", 3),
               embed_dim=cfg.get("hidden_size", 1024), depth=cfg.get("num_hidden_layers", 24),
               num_heads=cfg.get("num_attention_heads", 16), mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
               qkv_bias=cfg.get("qkv_bias", True), drop_path_rate=float(cfg.get("drop_path_rate", 0.0)),
               pos_embed="rope", uniform_power=False, rope_variant="vjepa2")
    if cfg.get("pred_num_hidden_layers", 12) == 0:
        return enc, None
    pred = dict(in_dim=enc["embed_dim"], out_dim=enc["embed_dim"], embed_dim=cfg.get("pred_hidden_size", 384),
                depth=cfg.get("pred_num_hidden_layers", 12), num_heads=cfg.get("pred_num_attention_heads", 12),
                mlp_ratio=float(cfg.get("pred_mlp_ratio", 4.0)), qkv_bias=cfg.get("qkv_bias", True),
                drop_path_rate=float(cfg.get("drop_path_rate", 0.0)),
                num_mask_tokens=cfg.get("pred_num_mask_tokens", 10), pos_embed="rope", uniform_power=False,
                rope_variant="vjepa2", zero_init_mask_tokens=cfg.get("pred_zero_init_mask_tokens", True))
    return enc, pred


def hf_config_from(encoder_cfg: Mapping, predictor_cfg: Mapping | None) -> dict:
    """Our configs -> a VJEPA2Config dict. Needs RoPE with the "vjepa2" rotation, a square crop and a predictor
    mapping encoder width to encoder width (HF's predictor projects back to `hidden_size`). Without a
    predictor a 0-layer placeholder predictor is written (and skipped again by our loader)."""
    e = encoder_cfg
    if e.get("pos_embed") != "rope" or e.get("rope_variant") != "vjepa2":
        raise ValueError("the Hugging Face VJEPA2 layout computes RoPE with the released 'vjepa2' rotation; this "
                         f"encoder uses pos_embed={e.get('pos_embed')!r}, rope_variant={e.get('rope_variant')!r}")
    img = e["img_size"]
    if not isinstance(img, int):
        if len(set(img)) != 1:
            raise ValueError(f"HF VJEPA2 needs a square crop, got {img}")
        img = int(img[0])
    cfg = dict(model_type="vjepa2", architectures=["VJEPA2Model"], patch_size=e["patch_size"], crop_size=img,
               frames_per_clip=e["num_frames"], tubelet_size=e["tubelet_size"], hidden_size=e["embed_dim"],
               in_chans=e["in_chans"], num_attention_heads=e["num_heads"], num_hidden_layers=e["depth"],
               drop_path_rate=e.get("drop_path_rate", 0.0), mlp_ratio=e["mlp_ratio"], layer_norm_eps=1e-6,
               qkv_bias=e["qkv_bias"], hidden_act="gelu")
    p = predictor_cfg
    if p is None:
        cfg.update(pred_hidden_size=e["embed_dim"], pred_num_attention_heads=e["num_heads"],
                   pred_num_hidden_layers=0, pred_num_mask_tokens=1, pred_mlp_ratio=4.0)
        return cfg
    if p.get("pos_embed") != "rope" or p.get("rope_variant") != "vjepa2":
        raise ValueError("the predictor must use RoPE with the 'vjepa2' rotation for the HF layout")
    if p["in_dim"] != e["embed_dim"] or (p.get("out_dim") or p["in_dim"]) != e["embed_dim"]:
        raise ValueError(f"HF's predictor maps width {e['embed_dim']} to itself; this one maps {p['in_dim']} -> "
                         f"{p.get('out_dim')}")
    if p["qkv_bias"] != e["qkv_bias"]:
        raise ValueError("HF uses one qkv_bias for encoder and predictor")
    cfg.update(pred_hidden_size=p["embed_dim"], pred_num_attention_heads=p["num_heads"],
               pred_num_hidden_layers=p["depth"], pred_num_mask_tokens=p["num_mask_tokens"],
               pred_mlp_ratio=p["mlp_ratio"], pred_zero_init_mask_tokens=p.get("zero_init_mask_tokens", True))
    return cfg


# ---------------------------------------------------------------------------------------------- files

def is_hf_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def read_hf_dir(path) -> tuple[dict, dict, dict | None]:
    """(config.json, the full state dict, video_preprocessor/preprocessor config or None) of a HF folder."""
    p = Path(path)
    cfg = json.loads((p / "config.json").read_text())
    from safetensors.torch import load_file
    if (p / "model.safetensors").is_file():
        state = load_file(p / "model.safetensors")
    elif (p / "model.safetensors.index.json").is_file():
        index = json.loads((p / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(p / shard))
    elif (p / "pytorch_model.bin").is_file():
        state = safe_load(p / "pytorch_model.bin")
    else:
        raise FileNotFoundError(f"{p}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    pre = None
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (p / name).is_file():
            pre = json.loads((p / name).read_text())
            break
    return cfg, state, pre


def write_hf_dir(path, encoder_sd: Mapping, predictor_sd: Mapping | None, hf_cfg: Mapping,
                 check: bool = True) -> None:
    """Write config.json + model.safetensors that `VJEPA2Model.from_pretrained(path)` loads without warnings."""
    from safetensors.torch import save_file

    if predictor_sd is None:  # 0-layer placeholder predictor: embeddings, mask token, norm, projection
        d = hf_cfg["hidden_size"]
        predictor_sd = {"embed.weight": torch.eye(d), "embed.bias": torch.zeros(d),
                        "mask_tokens": torch.zeros(1, 1, 1, d), "norm.weight": torch.ones(d),
                        "norm.bias": torch.zeros(d), "proj.weight": torch.eye(d), "proj.bias": torch.zeros(d)}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in to_hf_state(encoder_sd, predictor_sd).items()}
    if check:
        expected = hf_expected_shapes(hf_cfg)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mism = [(k, tuple(state[k].shape), tuple(s)) for k, s in expected.items()
                if k in state and tuple(state[k].shape) != tuple(s)]
        if missing or unexpected or mism:
            raise CheckpointMismatchError("Hugging Face export", missing, unexpected, mism)
    os.makedirs(path, exist_ok=True)
    full = dict(hf_cfg)
    try:
        import transformers
        full.setdefault("transformers_version", transformers.__version__)
    except ImportError:  # pragma: no cover
        pass
    full.setdefault("dtype", "float32")
    (Path(path) / "config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def hf_expected_shapes(hf_cfg: Mapping) -> dict:
    """Parameter names and shapes of `VJEPA2Model(config)`, built on the meta device (needs transformers)."""
    from transformers import VJEPA2Config, VJEPA2Model

    keep = {k: v for k, v in hf_cfg.items() if k not in ("model_type", "architectures", "transformers_version")}
    with torch.device("meta"):
        model = VJEPA2Model(VJEPA2Config(**keep))
    return {k: v.shape for k, v in model.state_dict().items()}


def preprocessing_from_hf(cfg: Mapping, pre: Mapping | None) -> dict:
    crop = cfg.get("crop_size", 256)
    out = dict(crop_size=crop, num_frames=cfg.get("frames_per_clip", 64), mean=IMAGENET_MEAN, std=IMAGENET_STD,
               resize_short_side=int(crop * 256 / 224))
    if pre:
        if isinstance(pre.get("crop_size"), Mapping):
            out["crop_size"] = pre["crop_size"].get("height", crop)
        elif isinstance(pre.get("crop_size"), int):
            out["crop_size"] = pre["crop_size"]
        for src, dst in (("image_mean", "mean"), ("image_std", "std")):
            if pre.get(src) is not None:
                out[dst] = tuple(pre[src])
        if isinstance(pre.get("size"), Mapping) and "shortest_edge" in pre["size"]:
            out["resize_short_side"] = pre["size"]["shortest_edge"]
    return out
