"""A probe evaluation of a frozen encoder (`python -m launch.eval`, or its SLURM job): the config schema and
`evaluate`, which loads the encoder, runs the attentive probe and writes eval.json + confusion_<label>.png.

The checkpoint: our stage checkpoint (final.pt or a training checkpoint), our native export, an official
V-JEPA 1 / 2 `.pt` or a Hugging Face folder (everything `vjepa.interop.load_pretrained` reads). Without
data.train the embedded dataset is used.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from vjepa.train.config import DataConfig, LauncherConfig

log = logging.getLogger(__name__)


@dataclass
class EvalDataConfig(DataConfig):
    """The training data schema with evaluation defaults (224 px, frame step 4) and the probe's crop scale."""
    frame_step: Optional[int] = 4
    crop_size: int = 224
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # training augmentation only
    num_workers: int = 4


@dataclass
class EvalProbeConfig:
    """See vjepa.eval.probe.ProbeSettings."""
    name: str = "quick"
    depth: int = 4
    num_heads: Optional[int] = 16  # null: the encoder's
    num_queries: int = 1
    epochs: int = 20
    batch_size: int = 32
    lrs: List[float] = field(default_factory=lambda: [5e-3, 3e-3, 1e-3, 3e-4, 1e-4])
    wds: List[float] = field(default_factory=lambda: [0.01, 0.1, 0.4, 0.8])
    warmup: float = 0.0
    final_lr: float = 0.0
    num_segments: int = 1
    num_views: int = 1  # 1 (centre crop) or 3 (three crops)
    attend_across_segments: bool = True
    augment: bool = False
    randaugment: bool = False  # with augment: RandAugment on top of the random resized crop
    cache: str = "memory"  # memory | disk | none
    cache_dir: Optional[str] = None
    cache_dtype: str = "float16"
    labels: Optional[List[str]] = None  # which labels to probe (default: all in the manifests)


@dataclass
class EvalConfig:
    checkpoint: str = "???"
    checkpoint_key: Optional[str] = None  # which encoder of a multi-model checkpoint (default: target_encoder, encoder)
    format: str = "auto"  # auto | vjepa1 | vjepa2 | hf | native | trainer
    run_dir: Optional[str] = None  # default: hydra's run dir
    seed: int = 0
    device: str = "auto"
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    probe: EvalProbeConfig = field(default_factory=EvalProbeConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)



def settings_from(cfg):
    from vjepa.eval.probe import ProbeSettings

    p = cfg.probe
    return ProbeSettings(depth=p.depth, num_heads=p.num_heads, num_queries=p.num_queries, epochs=p.epochs,
                         batch_size=p.batch_size, lrs=tuple(p.lrs), wds=tuple(p.wds), warmup=p.warmup,
                         final_lr=p.final_lr, num_segments=p.num_segments, num_views=p.num_views,
                         attend_across_segments=p.attend_across_segments, augment=p.augment, cache=p.cache,
                         cache_dir=p.cache_dir, cache_dtype=p.cache_dtype, seed=cfg.seed)


def build_loaders(cfg, settings, device="cpu"):
    from data.loader import build_loader
    from data.synthetic import ensure_synthetic

    d = cfg.data
    if d.train:
        train, val = list(d.train), d.val
    else:
        root = ensure_synthetic(d.root)
        train, val = [str(Path(root) / "train.jsonl")], d.val or str(Path(root) / "val.jsonl")
    if not val:
        raise ValueError("config key data.val: the probe needs a validation manifest")
    if settings.num_views not in (1, 3):
        raise ValueError(f"config key probe.num_views: {settings.num_views} is not 1 or 3 (centre / three crops)")
    from vjepa.train.data import clip_kwargs

    kw = dict(**clip_kwargs(cfg, device), batch_size=d.batch_size, num_workers=d.num_workers, seed=cfg.seed,
              rank=0, world_size=1, num_clips=settings.num_segments)
    train_loader = build_loader(train, train=settings.augment, crop_scale=tuple(d.crop_scale),
                                randaugment=cfg.probe.randaugment, **kw)
    val_loader = build_loader([val], train=False, eval_crops=settings.num_views, **kw)
    return train_loader, val_loader


def evaluate(cfg, run_dir: Path) -> dict:
    """Load the encoder, run the probe, write eval.json + confusion PNGs; returns the report."""
    import torch

    from vjepa.eval.probe import best_top1, run_probe, write_report
    from vjepa.interop import load_pretrained
    from vjepa.train.distributed import pick_device

    if cfg.probe.cache not in ("memory", "disk", "none"):
        raise ValueError(f"config key probe.cache: {cfg.probe.cache!r} is not memory, disk or none")
    if not cfg.checkpoint or cfg.checkpoint == "???":
        raise ValueError("config key checkpoint: give the encoder to evaluate (checkpoint=PATH)")
    if not Path(cfg.checkpoint).exists():
        raise FileNotFoundError(f"config key checkpoint: {cfg.checkpoint} does not exist")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    settings = settings_from(cfg)
    pretrained = load_pretrained(cfg.checkpoint, format=cfg.format, checkpoint_key=cfg.checkpoint_key,
                                 predictor=False, img_size=cfg.data.crop_size, num_frames=cfg.data.frames_per_clip)
    log.info("encoder:\n%s", pretrained.summary())
    train_loader, val_loader = build_loaders(cfg, settings, device)
    t = time.perf_counter()
    results = run_probe(pretrained.encoder, train_loader, val_loader, settings, device,
                        label_names=list(cfg.probe.labels) if cfg.probe.labels else None)
    wall = time.perf_counter() - t
    extra = {"checkpoint": str(cfg.checkpoint), "encoder": pretrained.summary(), "protocol": cfg.probe.name,
             "wall_seconds": wall, "best_top1": best_top1(results)}
    path = write_report(results, run_dir, extra)
    print(format_results(results, path))
    return json.loads(path.read_text())


def format_results(results: dict, path: Path) -> str:
    lines = ["", f"{'label':<14}{'best top-1':>11}{'top-5':>8}   best head (lr, wd)   heads top-1 min..max"]
    for name, r in results["labels"].items():
        b = r["best"]
        tops = [h["top1"] for h in r["heads"]]
        lines.append(f"{name:<14}{b['top1']:>11.1f}{b['top5']:>8.1f}   ({b['lr']:g}, {b['wd']:g})"
                     f"{'':>8}{min(tops):.1f}..{max(tops):.1f}")
    lines.append(f"\n{path}")
    return "\n".join(lines)
