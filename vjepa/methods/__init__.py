from vjepa.methods.base import Method
from vjepa.methods.latent import LatentPrediction
from vjepa.methods.pixel import PixelReconstruction
from vjepa.methods.tcjepa import TextConditionedPrediction

__all__ = ["LatentPrediction", "Method", "PixelReconstruction", "TextConditionedPrediction"]
