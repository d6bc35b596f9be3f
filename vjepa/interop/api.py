"""One entry point for released and our own weights: `load_pretrained(src)` -> ready encoder (+ predictor).

Sources (`format`, auto-detected by default):
  "vjepa1"  official V-JEPA 1 `.pt` (sin-cos, `pos_embed` buffer, `module.backbone.` names)
  "vjepa2"  official V-JEPA 2 `.pt` (RoPE, released rotation), or a bare encoder state dict without `pos_embed`
  "hf"      a Hugging Face `VJEPA2Model` / `VJEPA2ForVideoClassification` `save_pretrained` folder
  "native"  our export (`save_native`)
  "trainer" our trainer's checkpoints ({"models": ..., "model_configs": ...})
Targets of `export` / `convert`: "native", "hf", "vjepa1", "vjepa2".
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from vjepa.interop import hf as hf_mod
from vjepa.interop import official
from vjepa.interop.configs import (
    VJEPA2_PREDICTOR_HEADS,
    encoder_config,
    infer_encoder_config,
    infer_predictor_config,
    instantiate,
    predictor_config,
)
from vjepa.interop.keys import check_state_dict, matches, safe_load, strip_prefixes
from vjepa.interop.native import is_native, is_trainer, native_dict, save_native, trainer_entry

FORMATS = ("vjepa1", "vjepa2", "hf", "native", "trainer")
TARGETS = ("native", "hf", "vjepa1", "vjepa2")
IMAGENET_MEAN, IMAGENET_STD = hf_mod.IMAGENET_MEAN, hf_mod.IMAGENET_STD
VJEPA2_DEFAULT_CROP, VJEPA2_DEFAULT_FRAMES = 256, 64  # released V-JEPA 2 (hub defaults); not in the weights


@dataclass
class Pretrained:
    """A loaded model: encoder (eval mode), optional predictor, their configs and preprocessing settings.

    `preprocessing`: crop_size, num_frames, tubelet_size, patch_size, mean, std, resize_short_side (eval
    resize of the short side before the centre crop, 256/224 of the crop by the reference convention).
    `predictor_mask_index`: the mask token the source code uses by default at inference (1 for the official
    predictors and HF); pass it as `mask_index=` to reproduce their predictions.
    """
    encoder: torch.nn.Module
    predictor: torch.nn.Module | None
    encoder_config: dict
    predictor_config: dict | None
    preprocessing: dict
    source_format: str
    checkpoint_key: str | None = None
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictor_mask_index: int = 1

    def summary(self) -> str:
        e = self.encoder_config
        lines = [f"source: {self.source_format}" + (f" [{self.checkpoint_key}]" if self.checkpoint_key else ""),
                 f"encoder: width {e['embed_dim']}, depth {e['depth']}, heads {e['num_heads']}, patch "
                 f"{e['tubelet_size']}x{e['patch_size']}x{e['patch_size']}, {e['pos_embed']}"
                 + (f" ({e.get('rope_variant')})" if e['pos_embed'] == 'rope' else
                    f" (uniform_power={e.get('uniform_power')})")
                 + f", built for {e['num_frames']} frames at {e['img_size']} px"]
        if self.predictor_config:
            p = self.predictor_config
            lines.append(f"predictor: width {p['embed_dim']}, depth {p['depth']}, heads {p['num_heads']}, "
                         f"{p['num_mask_tokens']} mask tokens, {p['in_dim']} -> {p['out_dim']}")
        lines.append(f"preprocessing: {self.preprocessing}")
        if len(self.ignored_keys) > 6:  # group long lists (e.g. a classification head) by their first name
            groups: dict[str, int] = {}
            for k in self.ignored_keys:
                groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
            lines += [f"ignored: {g}.* ({n} keys)" if n > 1 else f"ignored: {g}" for g, n in groups.items()]
        else:
            lines += [f"ignored: {k}" for k in self.ignored_keys]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _preprocessing(cfg: Mapping, **extra) -> dict:
    crop = cfg["img_size"] if isinstance(cfg["img_size"], int) else cfg["img_size"][0]
    out = dict(crop_size=crop, num_frames=cfg["num_frames"], tubelet_size=cfg["tubelet_size"],
               patch_size=cfg["patch_size"], mean=IMAGENET_MEAN, std=IMAGENET_STD,
               resize_short_side=int(crop * 256 / 224))
    out.update(extra)
    return out


def detect_format(src) -> tuple[str, object]:
    """(format, loaded checkpoint object or None for folders). Reads files with weights_only=True."""
    if not isinstance(src, Mapping):
        if hf_mod.is_hf_dir(src):
            return "hf", None
        if os.path.isdir(src):
            raise ValueError(f"{src} is a folder without config.json: not a Hugging Face model folder")
        src = safe_load(src)
    if is_native(src):
        return "native", src
    if is_trainer(src):
        return "trainer", src
    if official.is_official(src) or official.is_state_dict(src):
        sd = src if official.is_state_dict(src) else next(
            src[k] for k in (*official.ENCODER_KEYS, "predictor") if isinstance(src.get(k), Mapping))
        has_pos = any(k.split(".")[-1] in ("pos_embed", "predictor_pos_embed") for k in sd)
        return ("vjepa1" if has_pos else "vjepa2"), src
    keys = sorted(src)[:20] if isinstance(src, Mapping) else type(src).__name__
    raise ValueError(f"unrecognised checkpoint layout (top-level entries: {keys})")


def load_pretrained(src, *, format: str = "auto", checkpoint_key: str | None = None, predictor: bool = True,
                    num_heads: int | None = None, pred_num_heads: int | None = None, img_size: int | None = None,
                    num_frames: int | None = None, allow_missing=(), dtype: torch.dtype = torch.float32
                    ) -> Pretrained:
    """Load any supported checkpoint into our VisionTransformer (+ Predictor), strictly.

    src: a file, a HF folder, or an already loaded dict. checkpoint_key: which encoder entry (official:
    default `target_encoder`, then `encoder`; trainer: `target_encoder`, then `encoder`; `teacher` on request).
    num_heads / pred_num_heads: needed only for widths outside the reference presets (official files).
    img_size / num_frames: the clip size the model is used at (official V-JEPA 1 infers it from `pos_embed`;
    V-JEPA 2 defaults to 256 px / 64 frames). allow_missing: glob patterns of keys that may be absent on
    either side (known extras); anything else that does not fit raises CheckpointMismatchError.
    """
    if format == "auto":
        format, ckpt = detect_format(src)
        auto = True
    else:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} or 'auto', got {format!r}")
        auto = False
        ckpt = None if format == "hf" else (src if isinstance(src, Mapping) else safe_load(src))
    kw = dict(checkpoint_key=checkpoint_key, with_predictor=predictor, num_heads=num_heads,
              pred_num_heads=pred_num_heads, img_size=img_size, num_frames=num_frames,
              allow_missing=tuple(allow_missing), dtype=dtype)
    if format == "hf":
        p = _load_hf(src, **kw)
    elif format in ("vjepa1", "vjepa2"):
        p = _load_official(ckpt, format, **kw)
        if auto:
            p.notes.insert(0, f"format auto-detected as {format} ("
                           + ("sin-cos pos_embed buffer present" if format == "vjepa1" else "no pos_embed buffer: RoPE")
                           + "); pass format= to override")
    else:
        p = _load_ours(ckpt, format, **kw)
    return p


def _check_override(name, given, actual):
    if given is not None and given != actual:
        raise ValueError(f"{name}={given} contradicts the checkpoint's own config ({actual})")


def _load_ours(ckpt, fmt, *, checkpoint_key, with_predictor, num_heads, pred_num_heads, img_size, num_frames,
               allow_missing, dtype) -> Pretrained:
    notes: list[str] = []
    if fmt == "native":
        if checkpoint_key not in (None, "encoder"):
            raise KeyError(f"a native checkpoint holds one encoder; checkpoint_key={checkpoint_key!r} is not in it")
        key, cfg, sd = "encoder", dict(ckpt["encoder"]["config"]), ckpt["encoder"]["state_dict"]
        pentry = ckpt.get("predictor") or None
        pcfg, psd = (dict(pentry["config"]), pentry["state_dict"]) if pentry else (None, None)
        pre_extra = dict((ckpt.get("meta") or {}).get("preprocessing") or {})
    else:
        key, cfg, sd = trainer_entry(ckpt, checkpoint_key)
        pcfg = ckpt["model_configs"].get("predictor")
        psd = ckpt["models"].get("predictor")
        pcfg, psd = (dict(pcfg), psd) if pcfg is not None and psd is not None else (None, None)
        pre_extra = {}
    cfg.update({k: v for k, v in dict(img_size=img_size, num_frames=num_frames).items() if v is not None})
    encoder, ignored, _ = instantiate("encoder", cfg, sd, f"encoder [{key}]", allow_missing, dtype)
    _check_override("num_heads", num_heads, encoder.num_heads)
    predictor = None
    if with_predictor and pcfg is not None:
        _check_override("pred_num_heads", pred_num_heads, pcfg.get("num_heads"))
        predictor, ig2, _ = instantiate("predictor", pcfg, strip_prefixes(psd), "predictor", allow_missing, dtype)
        ignored += ["predictor." + k for k in ig2]
    pre = _preprocessing(encoder_config(encoder))
    pre.update({k: v for k, v in pre_extra.items() if k not in ("crop_size", "num_frames") or
                (img_size is None and num_frames is None)})
    return Pretrained(encoder, predictor, encoder_config(encoder), predictor_config(predictor) if predictor else None,
                      pre, fmt, key, ignored, notes)


def _load_official(ckpt, flavor, *, checkpoint_key, with_predictor, num_heads, pred_num_heads, img_size, num_frames,
                   allow_missing, dtype) -> Pretrained:
    notes: list[str] = []
    if official.is_state_dict(ckpt):
        ckpt = {"encoder": ckpt}
    if checkpoint_key is None:
        checkpoint_key = next((k for k in official.ENCODER_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        if checkpoint_key is None:
            raise KeyError(f"no encoder entry ({', '.join(official.ENCODER_KEYS)}) in the checkpoint")
    if not isinstance(ckpt.get(checkpoint_key), Mapping):
        raise KeyError(f"no {checkpoint_key!r} state dict in the checkpoint (entries: {sorted(ckpt)})")
    sd, pos = official.encoder_state(ckpt[checkpoint_key])
    rope = flavor == "vjepa2"
    ignored: list[str] = []
    cfg = infer_encoder_config(sd, rope=rope, num_heads=num_heads)
    if flavor == "vjepa1":
        if pos is None:
            raise ValueError("a V-JEPA 1 (sin-cos) checkpoint must carry its pos_embed buffer; this one does not "
                             "(a RoPE checkpoint? pass format='vjepa2')")
        grid, up = official.match_sincos(pos, patch_size=cfg["patch_size"], tubelet_size=cfg["tubelet_size"],
                                         img_size=img_size, num_frames=num_frames, what="pos_embed")
        cfg.update(img_size=img_size or grid[1] * cfg["patch_size"],
                   num_frames=num_frames or grid[0] * cfg["tubelet_size"], pos_embed="sincos", uniform_power=up)
        ignored.append("pos_embed (equal to our fixed sin-cos table for grid "
                       f"{grid}, uniform_power={up}; dropped)")
    else:
        if pos is not None:
            if not matches("pos_embed", allow_missing):
                raise ValueError("a pos_embed buffer in a RoPE (V-JEPA 2) checkpoint: pass format='vjepa1' if it is a "
                                 "sin-cos model, or allow_missing=['pos_embed'] to ignore an unused buffer")
            ignored.append("pos_embed (allowed; unused by RoPE)")
        if img_size is None or num_frames is None:
            notes.append(f"clip size not stored in V-JEPA 2 weights: assuming the release defaults "
                         f"{img_size or VJEPA2_DEFAULT_CROP} px, {num_frames or VJEPA2_DEFAULT_FRAMES} frames "
                         "(RoPE positions do not depend on it; pass img_size / num_frames to change)")
        cfg.update(img_size=img_size or VJEPA2_DEFAULT_CROP, num_frames=num_frames or VJEPA2_DEFAULT_FRAMES,
                   pos_embed="rope", rope_variant="vjepa2", uniform_power=False)
    encoder, ig, _ = instantiate("encoder", cfg, sd, f"encoder [{checkpoint_key}]", allow_missing, dtype)
    ignored += ig
    predictor = None
    if with_predictor and isinstance(ckpt.get("predictor"), Mapping) and len(ckpt["predictor"]):
        psd, ppos = official.predictor_state(ckpt["predictor"])
        heads = pred_num_heads or (cfg["num_heads"] if flavor == "vjepa1" else VJEPA2_PREDICTOR_HEADS)
        if pred_num_heads is None:
            notes.append(f"predictor heads not stored in the weights: using {heads} "
                         f"({'the encoder' if flavor == 'vjepa1' else 'the V-JEPA 2 release'}'s; pass pred_num_heads)")
        pcfg = infer_predictor_config(psd, num_heads=heads)
        if flavor == "vjepa1":
            if ppos is None:
                raise ValueError("the V-JEPA 1 predictor lacks its predictor_pos_embed buffer")
            _, pup = official.match_sincos(ppos, patch_size=cfg["patch_size"], tubelet_size=cfg["tubelet_size"],
                                           img_size=cfg["img_size"], num_frames=cfg["num_frames"],
                                           what="predictor_pos_embed")
            pcfg.update(pos_embed="sincos", uniform_power=pup)
            ignored.append("predictor.predictor_pos_embed (equal to our fixed sin-cos table; dropped)")
        else:
            if ppos is not None:
                if not matches("predictor_pos_embed", allow_missing):
                    raise ValueError("a predictor_pos_embed buffer in a RoPE (V-JEPA 2) checkpoint: pass "
                                     "allow_missing=['predictor_pos_embed'] to ignore it")
                ignored.append("predictor.predictor_pos_embed (allowed; unused by RoPE)")
            pcfg.update(pos_embed="rope", rope_variant="vjepa2", uniform_power=False)
        predictor, ig2, _ = instantiate("predictor", pcfg, psd, "predictor", allow_missing, dtype)
        ignored += ["predictor." + k for k in ig2]
    return Pretrained(encoder, predictor, encoder_config(encoder),
                      predictor_config(predictor) if predictor else None,
                      _preprocessing(cfg), flavor, checkpoint_key, ignored, notes)


def _load_hf(src, *, checkpoint_key, with_predictor, num_heads, pred_num_heads, img_size, num_frames,
             allow_missing, dtype) -> Pretrained:
    notes: list[str] = []
    if checkpoint_key is not None:
        raise KeyError("a Hugging Face folder holds one encoder; checkpoint_key does not apply")
    hcfg, state, pre = hf_mod.read_hf_dir(src)
    cfg, pcfg = hf_mod.configs_from_hf(hcfg)
    _check_override("num_heads", num_heads, cfg["num_heads"])
    if pcfg is not None:
        _check_override("pred_num_heads", pred_num_heads, pcfg["num_heads"])
    if img_size is not None and img_size != cfg["img_size"]:
        notes.append(f"img_size {img_size} differs from the HF crop_size {cfg['img_size']}: our RoPE positions follow "
                     "the input grid, HF's follow crop_size, so outputs at this size differ from HF's")
    cfg.update({k: v for k, v in dict(img_size=img_size, num_frames=num_frames).items() if v is not None})
    enc_sd, pred_sd, other = hf_mod.from_hf_state(state)
    allow = tuple(allow_missing) + hf_mod.HF_KNOWN_EXTRAS
    encoder, ignored, _ = instantiate("encoder", cfg, {**enc_sd, **other}, "encoder (Hugging Face)", allow, dtype)
    predictor = None
    if pcfg is None:
        notes.append("the folder has a 0-layer placeholder predictor (an encoder-only export): no predictor loaded")
    elif with_predictor:
        predictor, ig2, _ = instantiate("predictor", pcfg, pred_sd, "predictor (Hugging Face)", allow_missing, dtype)
        ignored += ["predictor." + k for k in ig2]
    pre = hf_mod.preprocessing_from_hf(hcfg, pre)
    pre.update(crop_size=cfg["img_size"] if img_size is not None else pre["crop_size"],
               num_frames=cfg["num_frames"], tubelet_size=cfg["tubelet_size"], patch_size=cfg["patch_size"])
    return Pretrained(encoder, predictor, encoder_config(encoder),
                      predictor_config(predictor) if predictor else None, pre, "hf", None, ignored, notes)


# ---------------------------------------------------------------------------------------------- export

def save_hf(path, encoder, predictor=None) -> None:
    """Write a `VJEPA2Model.from_pretrained`-loadable folder (RoPE 'vjepa2' models only).

    Without a predictor, a 0-layer placeholder predictor is written (HF's model always has one)."""
    ecfg = encoder_config(encoder)
    pcfg = predictor_config(predictor) if predictor is not None else None
    hf_mod.write_hf_dir(path, encoder.state_dict(), predictor.state_dict() if predictor is not None else None,
                        hf_mod.hf_config_from(ecfg, pcfg))


def save_official(path, encoder, predictor=None, flavor: str | None = None, target_encoder=None) -> None:
    """Write an official-layout `.pt` (V-JEPA 1 for sin-cos models, V-JEPA 2 for RoPE models)."""
    if os.path.dirname(os.fspath(path)):
        os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    torch.save(official.export_state(encoder, predictor, flavor=flavor, target_encoder=target_encoder), path)


def export(dst, encoder, predictor=None, *, to: str | None = None, meta: Mapping | None = None) -> str:
    """Save encoder (+ predictor) to `dst` as "native" (default for files), "hf" (default for folders /
    paths without a suffix), "vjepa1" or "vjepa2". Returns the target used."""
    if to is None:
        to = "native" if os.fspath(dst).endswith((".pt", ".pth")) else "hf"
    if to not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {to!r}")
    if to == "native":
        save_native(dst, encoder, predictor, meta)
    elif to == "hf":
        save_hf(dst, encoder, predictor)
    else:
        save_official(dst, encoder, predictor, flavor=to)
    return to


def convert(src, dst, *, to: str | None = None, **load_kwargs) -> tuple[Pretrained, str]:
    """load_pretrained(src, **load_kwargs) then export(dst, to=...); returns (the loaded model, target)."""
    p = load_pretrained(src, **load_kwargs)
    meta = {"preprocessing": p.preprocessing, "source_format": p.source_format}
    return p, export(dst, p.encoder, p.predictor, to=to, meta=meta)


def load_into(model: torch.nn.Module, src, *, strict_arch: bool = True, **load_kwargs) -> Pretrained:
    """Initialise an existing encoder (e.g. the trainer's student or teacher) from `src`, strictly.

    Checks that the architecture matches (positions, heads, RoPE variant, widths...), not just the tensor
    shapes, then copies the weights in place."""
    load_kwargs.setdefault("predictor", False)
    p = load_pretrained(src, **load_kwargs)
    want, got = encoder_config(model), p.encoder_config
    fields = ["embed_dim", "depth", "num_heads", "patch_size", "tubelet_size", "in_chans", "qkv_bias", "pos_embed"]
    fields += ["rope_variant"] if got["pos_embed"] == "rope" else ["uniform_power"]
    diff = {f: (want.get(f), got.get(f)) for f in fields if want.get(f) != got.get(f)}
    if abs(want["mlp_ratio"] - got["mlp_ratio"]) > 1e-9:
        diff["mlp_ratio"] = (want["mlp_ratio"], got["mlp_ratio"])
    if diff and strict_arch:
        raise ValueError("the checkpoint's encoder differs from the model (model vs checkpoint): "
                         + ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items()))
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, p.encoder.state_dict(), "load_into")
    with torch.no_grad():
        model.load_state_dict(p.encoder.state_dict(), strict=True)
    return p


__all__ = ["FORMATS", "TARGETS", "Pretrained", "convert", "detect_format", "export", "load_into",
           "load_pretrained", "native_dict", "save_hf", "save_official"]
