"""`python -m launch.extract checkpoint=PATH data.videos=MANIFEST_OR_FOLDER out=DIR [pool=mean|none|cls_attentive]
[stride=SECONDS | clips_per_video=N] [layers=[-1]]`: features of every clip of every video, written to DIR
(one safetensors file per video + index.json; docs/extract.md). Running the same command again resumes.

PATH: anything `vjepa.interop.load_pretrained` reads (our checkpoints, official V-JEPA 1 / 2 `.pt`, Hugging Face
folders). Several processes: `torchrun --nproc-per-node=K -m launch.extract ...` (rank r takes shard r of K);
`launcher=slurm num_shards=K`: a SLURM job array of K tasks, one shard each.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import hydra
import submitit
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from vjepa.train.config import LauncherConfig


@dataclass
class ExtractDataConfig:
    videos: str = "???"  # a folder (searched recursively) or a manifest (csv / jsonl, docs/data.md)
    frames_per_clip: Optional[int] = None  # null: the checkpoint's
    frame_step: Optional[int] = None  # exactly one of frame_step / fps / duration; none given: frame_step=4
    fps: Optional[float] = None
    duration: Optional[float] = None
    crop_size: Optional[int] = None  # null: the checkpoint's
    backend: str = "pyav"  # pyav | decord (a file one cannot read goes to the other, data/decoders.py)
    num_workers: int = 2  # decoding processes
    batch_size: int = 16  # clips per encoder call


@dataclass
class ExtractConfig:
    checkpoint: str = "???"
    checkpoint_key: Optional[str] = None  # which encoder of a multi-model checkpoint (default: target_encoder, encoder)
    format: str = "auto"  # auto | vjepa1 | vjepa2 | hf | native | trainer
    num_heads: Optional[int] = None  # official .pt of a width outside the reference presets (not in the weights)
    out: str = "???"
    data: ExtractDataConfig = field(default_factory=ExtractDataConfig)
    pool: str = "mean"  # mean | none (all tokens) | cls_attentive (a trained attentive probe's query output)
    probe_checkpoint: Optional[str] = None  # pool=cls_attentive: a reference attentive-probe .pt ({"classifiers": ...})
    probe_index: int = 0  # which of its classifiers
    probe_heads: int = 16  # its attention heads (not stored in the weights)
    stride: Optional[float] = None  # seconds between clip starts; null: back to back
    clips_per_video: Optional[int] = None  # instead of stride: N evenly spaced clips
    layers: List[int] = field(default_factory=lambda: [-1])  # encoder blocks; several: a layer axis
    dtype: str = "float16"  # float16 | bfloat16 | float32
    device: str = "auto"
    shard: Optional[int] = None  # default: RANK (torchrun), else 0
    num_shards: Optional[int] = None  # default: WORLD_SIZE (torchrun), else 1; launcher=slurm: the array size
    progress: bool = True
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


ConfigStore.instance().store(name="extract_schema", node=ExtractConfig)


def extract(cfg, shard: int | None = None, num_shards: int | None = None) -> dict:
    """Run one shard (default: from the config, else torchrun's RANK / WORLD_SIZE); returns its summary."""
    from vjepa.eval.extract import (
        FeatureEncoder,
        extract_features,
        list_videos,
        load_probe_pooler,
        run_record,
        settings_for,
    )
    from vjepa.interop import load_pretrained
    from vjepa.train.distributed import pick_device

    for key in ("checkpoint", "out", "data.videos"):
        if OmegaConf.select(cfg, key) in (None, "", "???"):
            raise ValueError(f"config key {key}: required (launch.extract checkpoint=PATH data.videos=... out=DIR)")
    if not Path(cfg.checkpoint).exists():
        raise FileNotFoundError(f"config key checkpoint: {cfg.checkpoint} does not exist")
    shard = shard if shard is not None else cfg.shard if cfg.shard is not None else int(os.environ.get("RANK", 0))
    num_shards = num_shards or cfg.num_shards or int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    d = cfg.data
    pretrained = load_pretrained(cfg.checkpoint, format=cfg.format, checkpoint_key=cfg.checkpoint_key,
                                 num_heads=cfg.num_heads, predictor=False, img_size=d.crop_size,
                                 num_frames=d.frames_per_clip)
    settings = settings_for(pretrained, frames_per_clip=d.frames_per_clip, crop_size=d.crop_size,
                            frame_step=d.frame_step, fps=d.fps, duration=d.duration, stride=cfg.stride,
                            clips_per_video=cfg.clips_per_video, pool=cfg.pool, layers=tuple(cfg.layers),
                            dtype=cfg.dtype)
    pooler = None
    if cfg.pool == "cls_attentive":
        if not cfg.probe_checkpoint:
            raise ValueError("config key probe_checkpoint: pool=cls_attentive pools with a trained attentive probe")
        pooler = load_probe_pooler(cfg.probe_checkpoint, cfg.probe_index, cfg.probe_heads)
    model = FeatureEncoder(pretrained.encoder, settings.layers, settings.pool, pooler)
    videos, root, problems = list_videos(d.videos)
    run = run_record(pretrained, cfg.checkpoint, settings, probe=cfg.probe_checkpoint, probe_index=cfg.probe_index)
    summary = extract_features(model, videos, root, cfg.out, settings, run, shard=shard, num_shards=num_shards,
                               batch_size=d.batch_size, num_workers=d.num_workers, backend=d.backend,
                               device=device, problems=problems, progress=cfg.progress)
    print(f"shard {shard}/{num_shards}: {summary.rates()} -> {Path(cfg.out) / 'index.json'}", flush=True)
    return asdict(summary)


class ShardJob(submitit.helpers.Checkpointable):
    """One SLURM array task: one shard. Requeued after a preemption or a timeout, it resumes (done videos
    are skipped)."""

    def __init__(self, cfg: dict, num_shards: int):
        self.cfg, self.num_shards = cfg, num_shards

    def __call__(self, shard: int) -> dict:
        return extract(OmegaConf.merge(OmegaConf.structured(ExtractConfig), self.cfg), shard, self.num_shards)


def submit_shards(cfg) -> list:
    """A job array of num_shards tasks (one process each; launcher.gpus_per_node 0 or 1)."""
    from launch.slurm import SubmissionError, prepared_executor, tasks_per_node

    lc = cfg.launcher
    if lc.nodes != 1 or tasks_per_node(lc) != 1:
        raise ValueError("launcher: each array task of launch.extract is one process (launcher.nodes=1, "
                         "launcher.gpus_per_node 0 or 1, launcher.tasks_per_node 1); use num_shards for more")
    num_shards = cfg.num_shards or 1
    executor = prepared_executor(cfg, Path(cfg.out).resolve() / "slurm")
    job = ShardJob(OmegaConf.to_container(cfg, resolve=True), num_shards)
    try:
        jobs = executor.map_array(job, range(num_shards))
    except Exception as e:  # submitit wraps sbatch's stderr
        raise SubmissionError(f"SLURM refused the job: {e}") from None
    print(f"submitted SLURM job array {jobs[0].job_id.split('_')[0]} ({num_shards} tasks); output: {cfg.out}",
          flush=True)
    return jobs


@hydra.main(config_path="../configs", config_name="extract", version_base=None)
def main(cfg) -> None:
    if cfg.launcher.name == "slurm":
        # through the module, not this __main__: the job must unpickle launch.extract.ShardJob by name
        from launch.extract import submit_shards as submit

        jobs = submit(cfg)
        if cfg.launcher.wait:
            for j in jobs:
                s = j.result()
                print(f"shard {s['shard']}/{s['num_shards']}: {s['extracted']} videos, {s['failed']} failed")
        return
    if cfg.launcher.name != "local":
        raise ValueError(f"config key launcher.name: {cfg.launcher.name!r} is not local or slurm")
    extract(cfg)


if __name__ == "__main__":
    main()
