"""Checkpoint interop: official V-JEPA 1 / V-JEPA 2 `.pt`, Hugging Face `VJEPA2Model` folders, our own format.

    from vjepa.interop import load_pretrained
    p = load_pretrained("vitl16.pt")          # or a HF folder, a native / trainer checkpoint
    feats = p.encoder(clip)                   # clip [B, C, T, H, W], preprocessed per p.preprocessing

Everything is strict (CheckpointMismatchError lists every missing / unexpected / mis-shaped key) and files are
read with torch.load(weights_only=True). See docs/interop.md.
"""
from vjepa.interop.api import (
    FORMATS,
    TARGETS,
    Pretrained,
    convert,
    detect_format,
    export,
    load_into,
    load_pretrained,
    save_hf,
    save_official,
)
from vjepa.interop.configs import (
    build_encoder_from_config,
    build_predictor_from_config,
    encoder_config,
    predictor_config,
)
from vjepa.interop.keys import CheckpointMismatchError, safe_load
from vjepa.interop.native import load_native, save_native

__all__ = ["FORMATS", "TARGETS", "CheckpointMismatchError", "Pretrained", "build_encoder_from_config",
           "build_predictor_from_config", "convert", "detect_format", "encoder_config", "export", "load_into",
           "load_native", "load_pretrained", "predictor_config", "safe_load", "save_hf", "save_native",
           "save_official"]
