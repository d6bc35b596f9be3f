from vjepa.methods.base import Method
from vjepa.methods.latent import LatentPrediction
from vjepa.methods.pixel import PixelReconstruction

__all__ = ["LatentPrediction", "Method", "PixelReconstruction"]
