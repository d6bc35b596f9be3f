"""The trainer's view of the data package: an endless, resumable batch stream and the probe loaders."""
from __future__ import annotations

from pathlib import Path

import torch

from data.loader import build_loader
from data.synthetic import ensure_synthetic


def manifests(cfg) -> tuple[list[str], str | None]:
    """(train manifests, val manifest); the embedded dataset when none are configured."""
    if cfg.data.train:
        return list(cfg.data.train), cfg.data.val
    root = ensure_synthetic(cfg.data.root)
    return [str(Path(root) / "train.jsonl")], cfg.data.val or str(Path(root) / "val.jsonl")


def clip_kwargs(cfg, device="cpu") -> dict:
    """build_loader's clip, decoder and device settings from the data config; batches arrive on `device`, and
    DALI's NVDEC ('mixed') decodes on that GPU."""
    d = cfg.data
    options = {}
    if d.backend == "dali":
        options = {"device": d.dali_device, "device_id": torch.device(device).index or 0}
    return dict(frames_per_clip=d.frames_per_clip, frame_step=d.frame_step, fps=d.fps, duration=d.duration,
                size=d.crop_size, backend=d.backend, decoder_options=options,
                max_consecutive_failures=d.max_consecutive_failures, device=device)


class LoaderWrapper:
    """A loader around another: state (epoch, batches consumed) and skip counts are the wrapped loader's."""

    def __init__(self, loader):
        self.loader = loader

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def skip_counts(self) -> dict:
        return self.loader.skip_counts()


class EndlessLoader(LoaderWrapper):
    """Yields batches across epochs forever."""

    def __iter__(self):
        while True:
            yield from self.loader


def build_train_loader(cfg, stage, info, seed: int, device="cpu") -> EndlessLoader:
    train, _ = manifests(cfg)
    loader = build_loader(train, weights=cfg.data.weights, train=True, batch_size=cfg.data.batch_size,
                          num_workers=cfg.data.num_workers, seed=seed, rank=info.rank,
                          world_size=info.world_size, **clip_kwargs(cfg, device))
    return EndlessLoader(loader)


def build_probe_loaders(cfg, device="cpu"):
    """Deterministic (evaluation-transform) loaders over the train and val manifests, batches on `device`."""
    train, val = manifests(cfg)
    if val is None:
        raise ValueError("config key data.val: the probe needs a validation manifest")
    kw = dict(train=False, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed,
              rank=0, world_size=1, **clip_kwargs(cfg, device))
    return build_loader(train, **kw), build_loader([val], **kw)
