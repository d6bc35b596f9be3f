"""Our own export format: one `.pt` file, readable with `torch.load(weights_only=True)`.

    {"format": "vjepa", "version": 1,
     "encoder":   {"config": {...VisionTransformer kwargs...}, "state_dict": {...}},
     "predictor": {"config": {...Predictor kwargs...},         "state_dict": {...}}   # optional
     "meta": {...}}                                                                   # optional, free-form

Also reads the trainer's checkpoints: {"models": {"encoder": sd, "target_encoder": sd, "teacher": sd,
"predictor": sd, ...}, "model_configs": {"encoder": kwargs, "predictor": kwargs, "teacher": kwargs, ...}}.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from vjepa.interop.configs import (
    build_encoder_from_config,
    build_predictor_from_config,
    encoder_config,
    instantiate,
    predictor_config,
)
from vjepa.interop.keys import WRAPPER_PREFIXES, safe_load, strip_prefixes

FORMAT, VERSION = "vjepa", 1
TRAINER_ENCODER_KEYS = ("target_encoder", "encoder")  # default preference; "teacher" only when asked for

__all__ = ["FORMAT", "VERSION", "build_encoder_from_config", "build_predictor_from_config", "is_native",
           "is_trainer", "load_native", "native_dict", "save_native"]


def native_dict(encoder, predictor=None, meta: Mapping | None = None) -> dict:
    out = {"format": FORMAT, "version": VERSION,
           "encoder": {"config": encoder_config(encoder),
                       "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}}
    if predictor is not None:
        out["predictor"] = {"config": predictor_config(predictor),
                            "state_dict": {k: v.detach().cpu() for k, v in predictor.state_dict().items()}}
    if meta:
        out["meta"] = dict(meta)
    return out


def save_native(path: str | os.PathLike, encoder, predictor=None, meta: Mapping | None = None) -> None:
    """Write encoder (+ predictor) with their configs; `meta` is any weights_only-safe dict (e.g. preprocessing)."""
    if os.path.dirname(os.fspath(path)):
        os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    torch.save(native_dict(encoder, predictor, meta), path)


def is_native(ckpt) -> bool:
    return isinstance(ckpt, Mapping) and ckpt.get("format") == FORMAT


def is_trainer(ckpt) -> bool:
    return isinstance(ckpt, Mapping) and isinstance(ckpt.get("models"), Mapping) and isinstance(
        ckpt.get("model_configs"), Mapping)


def load_native(path_or_dict, allow_missing=(), dtype: torch.dtype = torch.float32):
    """Read a native file (or its dict) -> (encoder, predictor or None), both strict-loaded and in eval mode."""
    ckpt = safe_load(path_or_dict) if not isinstance(path_or_dict, Mapping) else path_or_dict
    if not is_native(ckpt):
        raise ValueError("not a vjepa native checkpoint (no format='vjepa' entry)")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"native checkpoint version {ckpt['version']} is newer than this code ({VERSION})")
    enc, _, _ = instantiate("encoder", ckpt["encoder"]["config"], ckpt["encoder"]["state_dict"], "encoder",
                            allow_missing, dtype)
    pred = None
    if ckpt.get("predictor"):
        pred, _, _ = instantiate("predictor", ckpt["predictor"]["config"], ckpt["predictor"]["state_dict"],
                                 "predictor", allow_missing, dtype)
    return enc, pred


def trainer_entry(ckpt: Mapping, key: str | None) -> tuple[str, dict, dict]:
    """(key, config, state) of one encoder in a trainer checkpoint. An EMA `target_encoder` without its own
    config uses the `encoder` config (same architecture)."""
    models, configs = ckpt["models"], ckpt["model_configs"]
    if key is None:
        key = next((k for k in TRAINER_ENCODER_KEYS if k in models), None)
        if key is None:
            raise KeyError(f"no encoder in the trainer checkpoint (entries: {sorted(models)}); pass checkpoint_key")
    if key not in models:
        raise KeyError(f"no {key!r} in the trainer checkpoint (entries: {sorted(models)})")
    cfg = configs.get(key)
    if cfg is None and key in ("target_encoder", "ema_encoder"):
        cfg = configs.get("encoder")
    if cfg is None:
        raise KeyError(f"the trainer checkpoint has no model_configs[{key!r}]")
    return key, dict(cfg), strip_prefixes(models[key], WRAPPER_PREFIXES)
