"""An experiment: its stages in order (each stage's final checkpoint can teach a later one), then the
probe protocol (vjepa/eval/protocol.py) on a random encoder, raw pixels and every stage's encoder, then
summary.json, the loss plot and the tables."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vjepa.methods.registry import method_spec
from vjepa.train import config as schema
from vjepa.train.build import build_encoder, encoder_kwargs, init_scheme, load_teacher
from vjepa.train.data import build_probe_loaders
from vjepa.train.distributed import barrier, close_distributed, init_distributed
from vjepa.train.metrics import plot_losses, stage_lines
from vjepa.train.trainer import stage_seed, train_stage

log = logging.getLogger(__name__)


def run_experiment(cfg, run_dir: str | Path) -> dict:
    schema.check(cfg)
    if cfg.experiment.probe.enabled:
        probe_settings(cfg)  # a bad probe key fails now, not after training
    run_dir = Path(run_dir)
    info = init_distributed(cfg.device)
    try:
        return _run_stages_then_probe(cfg, run_dir, info)
    finally:
        close_distributed(info)


def _run_stages_then_probe(cfg, run_dir: Path, info) -> dict:
    device = info.device
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        log.info("run directory: %s (device %s, world size %d)", run_dir, device, info.world_size)

    stages, finals = {}, {}
    for stage in cfg.experiment.stages:
        teacher = None
        if method_spec(stage.method).teacher != "none" and stage.teacher:
            teacher = finals.get(stage.teacher) or Path(stage.teacher)
        init = finals.get(stage.init) if stage.init else None  # an earlier stage's encoder, or a file (build)
        stages[stage.name] = train_stage(cfg, stage, run_dir / stage.name, info, device, teacher, init)
        if not stages[stage.name]["complete"]:
            if info.is_main:
                log.info("stopped in stage %s at step %d (stop_at_step); rerun to resume", stage.name,
                         stages[stage.name]["steps"])
            return {"run_dir": str(run_dir), "stages": stages, "probe": {}, "complete": False,
                    "preempted": stages[stage.name].get("preempted", False), "world_size": info.world_size}
        finals[stage.name] = run_dir / stage.name / "final.pt"
        barrier(info)  # the next stage reads this stage's final.pt

    summary = {"run_dir": str(run_dir), "stages": stages, "probe": {}, "complete": True,
               "world_size": info.world_size}
    if info.is_main:
        plot_losses({name: run_dir / name / "metrics.csv" for name in stages}, run_dir / "loss.png")
        if cfg.experiment.probe.enabled:
            info = {}
            summary["probe"] = probe_all(cfg, finals, device, info)
            summary["probe_settings"], summary["probe_timing"] = info["settings"], info["timing"]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_table(summary))
    return summary


def probe_settings(cfg):
    """The probe protocol's settings from `experiment.probe` (errors name the key)."""
    from vjepa.eval.probe import ProbeSettings
    from vjepa.eval.protocol import FAMILIES, ProtocolSettings

    p = cfg.experiment.probe
    families = list(p.families)
    if p.kind != "attentive":  # the old single-probe switch (default attentive: the protocol's families)
        if p.kind not in FAMILIES:
            raise ValueError(f"config key experiment.probe.kind: {p.kind!r} is not one of {list(FAMILIES)} (kind is "
                             "deprecated: use experiment.probe.families=[...])")
        log.warning("config key experiment.probe.kind=%s is deprecated: probing families=[%s]; use "
                    "experiment.probe.families=[%s]", p.kind, p.kind, p.kind)
        families = [p.kind]
    attentive = ProbeSettings(depth=p.depth, num_heads=p.num_heads, epochs=p.epochs, batch_size=p.batch_size,
                              lrs=tuple(p.lrs), wds=tuple(p.wds), seed=cfg.seed)
    settings = ProtocolSettings(families=tuple(families), seeds=p.seeds, seed=cfg.seed,
                                heldout_fraction=p.heldout_fraction, linear_cs=tuple(p.linear_cs),
                                knn_ks=tuple(p.knn_ks), attentive=attentive,
                                attentive_select_epochs=None if p.select_epochs is None else tuple(p.select_epochs))
    try:
        settings.check()
    except ValueError as e:
        raise ValueError(f"config key experiment.probe.{e}") from None
    return settings


def probe_all(cfg, finals: dict[str, Path], device, info: dict | None = None) -> dict:
    """The probe protocol (vjepa/eval/protocol.py) on a randomly initialised encoder, the raw-pixels baseline
    (vjepa/eval/baselines.py) and every stage's encoder, on clips decoded once and features extracted once per
    encoder. Returns {row: {family: {label: {"mean", "se", "seeds", "n_val", "binomial_se", ...}}}} (val top-1 %,
    heads chosen on a held-out part of train); `info` gets "settings" and "timing"."""
    from vjepa.eval.baselines import PixelEncoder
    from vjepa.eval.protocol import probe_encoders

    settings = probe_settings(cfg)
    train_loader, val_loader = build_probe_loaders(cfg, device)
    first = cfg.experiment.stages[0]
    torch.manual_seed(stage_seed(cfg, first))
    random_init = build_encoder(encoder_kwargs(cfg), init_scheme(cfg))
    pixel_dim = cfg.experiment.probe.pixel_dim
    pixels = PixelEncoder.like(random_init, random_init.embed_dim if pixel_dim is None else pixel_dim, seed=cfg.seed)
    encoders = {"random-init": random_init, "raw-pixels": pixels}
    encoders.update({name: (lambda path=path: load_teacher(path)) for name, path in finals.items()})
    timing = {}
    results = probe_encoders(encoders, train_loader, val_loader, settings, device, timing)
    if info is not None:
        info["settings"] = {**settings.describe(), "pixel_dim": pixels.embed_dim,
                            "pixel_projection": pixels.projection is not None}
        info["timing"] = timing
    return results


def format_table(summary: dict) -> str:
    lines = [""] + stage_lines(summary)
    probe = summary.get("probe") or {}
    if probe:
        from vjepa.eval.protocol import format_tables

        lines += format_tables(probe, summary.get("probe_settings"))
    lines.append(f"\nrun directory: {summary['run_dir']}")
    return "\n".join(lines)

