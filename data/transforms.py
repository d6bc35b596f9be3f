"""Clip transforms on uint8 video tensors with torchvision.transforms.v2.

Input: uint8 ``[T, H, W, C]`` (what the decoders return). :func:`apply` runs the geometry (crop, resize,
flip) in torchvision v2 on uint8 and returns uint8 ``[C, T, H, W]``; :func:`normalize` turns a batch of
those into float32 normalised with ImageNet mean/std. The loader normalises *after* the batch reached its
device (``data.loader.ClipLoader``): uint8 is 4x less to collate, pass between processes and copy to the
GPU, and the float pass costs nothing there, while in a CPU worker it cost about a tenth of the decode.
All frames of a clip get the same crop and flip (v2 transforms draw one set of parameters per call for
a ``tv_tensors.Video``).

Randomness is drawn from torch's global generator inside ``torch.random.fork_rng`` seeded by the
caller, so a clip's augmentation is a pure function of the seed it is given (see dataset.py) and the
training process's own RNG is untouched.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_SCALE = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(3, 1, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1, 1)


def normalize(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., C, T, H, W]`` -> float32, ``(x / 255 - mean) / std`` per channel (= v2.ToDtype +
    v2.Normalize), on the tensor's device."""
    if video.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 video, got {video.dtype}")
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device).copy_(video)
    return out.mul_(_SCALE.to(video.device)).add_(_SHIFT.to(video.device))


def train_transform(size: int = 224, scale=(0.3, 1.0), ratio=(0.75, 1.35), flip: float = 0.5,
                    randaugment: bool = False) -> v2.Compose:
    # crop/resize on uint8 (4x less memory traffic than float) before converting
    steps = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True), v2.RandomHorizontalFlip(flip)]
    if randaugment:  # the probe's optional augmentation; one draw of ops per clip, so all frames get the same
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def eval_transform(size: int = 224, resize_ratio: float = 256 / 224) -> v2.Compose:
    return v2.Compose([v2.Resize(int(round(size * resize_ratio)), antialias=True), v2.CenterCrop(size)])


class ThreeCrop:
    """Evaluation views: resize the short side to ``size`` and take left/centre/right (or top/centre/bottom) crops."""

    def __init__(self, size: int = 224):
        self.size = size
        self.resize = v2.Resize(size, antialias=True)

    def __call__(self, video: torch.Tensor) -> list[torch.Tensor]:
        video = self.resize(video)
        h, w = video.shape[-2:]
        s = self.size
        if w >= h:
            boxes = [(0, (w - s) * k // 2) for k in range(3)]
        else:
            boxes = [((h - s) * k // 2, 0) for k in range(3)]
        return [v2.functional.crop(video, top, left, s, s) for top, left in boxes]


def apply(transform, frames: torch.Tensor, seed: int | None = None) -> list[torch.Tensor]:
    """uint8 [T, H, W, C] -> list of uint8 [C, T, H, W] views (one, or three for ThreeCrop; strided, not
    necessarily contiguous); see :func:`normalize`."""
    video = tv_tensors.Video(frames.permute(0, 3, 1, 2))  # [T, C, H, W]
    # one clip is too small for intra-op threads: on a busy machine they cost 100x the work itself
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if seed is None:
            out = transform(video)
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding (with a stack trace)
                torch.default_generator.manual_seed(seed)
                out = transform(video)
    finally:
        torch.set_num_threads(threads)
    views = out if isinstance(out, list) else [out]
    # a view, not a copy: the resize wrote [T, H, W, C] memory, and the batch's torch.stack (collate) makes
    # the one copy to [B, C, T, H, W] anyway
    return [v.as_subclass(torch.Tensor).permute(1, 0, 2, 3) for v in views]


def build_transform(train: bool, size: int = 224, eval_crops: int = 1, **train_kw):
    if train:
        return train_transform(size, **train_kw)
    if eval_crops == 3:
        return ThreeCrop(size)
    if eval_crops != 1:
        raise ValueError(f"eval_crops must be 1 or 3, got {eval_crops}")
    return eval_transform(size)
