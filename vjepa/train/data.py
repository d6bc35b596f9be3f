"""The trainer's view of the data package: an endless, resumable batch stream and the probe loaders."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from data.decoders import installed
from data.loader import build_loader
from data.mixture import build_mixture, loader_source, media_kind, source_items
from data.synthetic import ensure_synthetic

log = logging.getLogger(__name__)


def manifests(cfg) -> tuple[list[str], str | None]:
    """(train manifests, val manifest); the embedded dataset when none are configured."""
    if cfg.data.train:
        return list(cfg.data.train), cfg.data.val
    root = ensure_synthetic(cfg.data.root)
    return [str(Path(root) / "train.jsonl")], cfg.data.val or str(Path(root) / "val.jsonl")


_warned_no_dali = False


def resolve_backend(backend: str, dali_device: str, device) -> tuple[str, str]:
    """(backend, dali_device) for data.backend / data.dali_device on `device`. `auto` (the default): DALI on
    NVDEC ('mixed': frames decoded, cropped and normalised on the training GPU, never in host memory) when
    training on CUDA, PyAV on CPU. A file NVDEC does not take (VP8, MJPEG, ...) falls back per file to a CPU
    decoder, counted in the loader's skip counts and summary.json (docs/data.md, "Fallback, per file")."""
    global _warned_no_dali
    if backend != "auto":
        return backend, dali_device
    if torch.device(device).type != "cuda":
        return "pyav", "cpu"
    if installed("dali"):
        return "dali", "mixed"
    if not _warned_no_dali:
        _warned_no_dali = True
        log.warning("data.backend=auto on CUDA: NVIDIA DALI is not installed, so clips decode on the CPU with PyAV "
                    "(install nvidia-dali-cuda120 for NVDEC decoding on the GPU; docs/data.md)")
    return "pyav", "cpu"


def clip_kwargs(cfg, device="cpu") -> dict:
    """build_loader's clip, decoder and device settings from the data config; batches arrive on `device`, and
    DALI's NVDEC ('mixed') decodes on that GPU."""
    d = cfg.data
    backend, dali_device = resolve_backend(d.backend, d.dali_device, device)
    options = {}
    if backend == "dali":
        options = {"device": dali_device, "device_id": torch.device(device).index or 0}
    return dict(frames_per_clip=d.frames_per_clip, frame_step=d.frame_step, fps=d.fps, duration=d.duration,
                size=d.crop_size, backend=backend, decoder_options=options,
                max_consecutive_failures=d.max_consecutive_failures, worker_timeout=d.worker_timeout, device=device)


class LoaderWrapper:
    """A loader around another: state (epoch, batches consumed) and skip counts are the wrapped loader's."""

    sources = None  # a batch-mixed run's resolved sources (MixedLoader), which the trainer draws masks by

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


class MixedLoader(LoaderWrapper):
    """The batch mixture of data/mixture.py (endless itself), with the sources' resolved settings."""

    def __init__(self, loader, sources: list["Source"]):
        super().__init__(loader)
        self.sources = sources

    def __iter__(self):
        return iter(self.loader)


@dataclass
class Source:
    """One dataset of a batch-mixed run: its data.train entry, media kind, build_loader settings, mask."""
    path: str
    kind: str  # images | videos | mixed
    loader: dict  # its own build_loader arguments: clip settings, size, batch size, workers
    mask: str | None  # its mask recipe; None: the stage's


def mixed_sources(cfg) -> list[Source] | None:
    """The sources of a batch-mixed run (data.mix, docs/data.md), or None when data.train is one dataset."""
    d = cfg.data
    mode, overrides, train = d.get("mix", "auto"), list(d.get("sources") or []), list(d.train)
    if mode == "items" or not train or (mode == "auto" and len(train) == 1 and not overrides):
        return None
    kinds = [media_kind(source_items(path)) for path in train]
    if mode == "auto" and not overrides and len(set(kinds)) == 1:
        return None
    return [_source(d, k, path, kind, overrides[k] if overrides else None) for k, (path, kind) in
            enumerate(zip(train, kinds))]


def _source(d, k: int, path: str, kind: str, own) -> Source:
    get = (own or {}).get
    frames = get("frames_per_clip") or (1 if kind == "images" else d.frames_per_clip)
    if kind == "mixed" and frames != 1:
        raise ValueError(f"config key data.train[{k}]: {path} holds both images and videos, and a batch cannot "
                         f"stack 1-frame images with {frames}-frame clips; split it into an image and a video manifest")
    if kind == "images" and frames != 1:
        raise ValueError(f"config key data.sources[{k}].frames_per_clip: {path} holds images, whose clips have "
                         f"1 frame, not {frames}")
    timing = {key: get(key) for key in ("frame_step", "fps", "duration")}
    if all(v is None for v in timing.values()):
        timing = {key: d[key] for key in timing}
    workers = get("num_workers")
    settings = dict(frames_per_clip=frames, **timing, size=get("crop_size") or d.crop_size,
                    batch_size=get("batch_size") or d.batch_size,
                    num_workers=d.num_workers if workers is None else workers)
    return Source(str(path), kind, settings, get("mask") or ("ijepa" if frames == 1 else None))


def build_train_loader(cfg, stage, info, seed: int, device="cpu") -> EndlessLoader | MixedLoader:
    sources = mixed_sources(cfg)
    if sources is not None:
        perf = cfg.perf
        if perf.fixed_views or perf.target_cache.enabled:
            raise ValueError(f"config key perf.fixed_views/target_cache: data.train mixes {len(sources)} "
                             "datasets batch by batch; fixed views and cached targets are for one dataset")
        mixture = build_mixture([{"path": s.path, **s.loader} for s in sources], cfg.data.weights, seed=seed,
                                rank=info.rank, world_size=info.world_size, train=True, **clip_kwargs(cfg, device))
        return MixedLoader(mixture, sources)
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
    # a batch-mixed run probes its first dataset (data.train[0]), whose clips are the shape of val's
    fit = loader_source(train[0]) if mixed_sources(cfg) is not None else {"manifests": train}
    return build_loader(**fit, **kw), build_loader([val], **kw)
