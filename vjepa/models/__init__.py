from vjepa.models.heads import normalized_pixel_targets, patchify, pixel_decoder
from vjepa.models.predictor import Predictor, predictor
from vjepa.models.vit import PRESETS, VisionTransformer, gather_tokens, token_grid, vit

__all__ = ["PRESETS", "Predictor", "VisionTransformer", "gather_tokens", "normalized_pixel_targets", "patchify",
           "pixel_decoder", "predictor", "token_grid", "vit"]
