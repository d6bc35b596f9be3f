from vjepa.masks.generators import Mask, MultiBlock2D, MultiBlock3D, TubeMask
from vjepa.masks.sampler import MaskSampler, build_masks

__all__ = ["Mask", "MaskSampler", "MultiBlock2D", "MultiBlock3D", "TubeMask", "build_masks"]
