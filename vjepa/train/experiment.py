"""An experiment: its stages in order (each stage's final checkpoint can teach a later one), then the
probe of a random encoder and of every stage's encoder, then summary.json, the loss plot and a table."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vjepa.train import config as schema
from vjepa.train.build import build_encoder, encoder_kwargs, load_teacher
from vjepa.train.data import build_probe_loaders
from vjepa.train.distributed import init_distributed, pick_device
from vjepa.train.metrics import plot_losses
from vjepa.train.trainer import stage_seed, train_stage

log = logging.getLogger(__name__)


def run_experiment(cfg, run_dir: str | Path) -> dict:
    schema.check(cfg)
    run_dir = Path(run_dir)
    device = pick_device(cfg.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = pick_device(cfg.device, info.local_rank)
        torch.cuda.set_device(device)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        log.info("run directory: %s (device %s, world size %d)", run_dir, device, info.world_size)

    stages, finals = {}, {}
    for stage in cfg.experiment.stages:
        teacher = None
        if stage.method in ("salt", "tcjepa") and stage.teacher:
            teacher = finals.get(stage.teacher) or Path(stage.teacher)
        stages[stage.name] = train_stage(cfg, stage, run_dir / stage.name, info, device, teacher)
        if not stages[stage.name]["complete"]:
            if info.is_main:
                log.info("stopped in stage %s at step %d (stop_at_step); rerun to resume", stage.name,
                         stages[stage.name]["steps"])
            return {"run_dir": str(run_dir), "stages": stages, "probe": {}, "complete": False,
                    "preempted": stages[stage.name].get("preempted", False), "world_size": info.world_size}
        finals[stage.name] = run_dir / stage.name / "final.pt"
        if info.enabled:
            torch.distributed.barrier()  # the next stage reads this stage's final.pt

    summary = {"run_dir": str(run_dir), "stages": stages, "probe": {}, "complete": True,
               "world_size": info.world_size}
    if info.is_main:
        plot_losses({name: run_dir / name / "metrics.csv" for name in stages}, run_dir / "loss.png")
        if cfg.experiment.probe.enabled:
            summary["probe"] = probe_all(cfg, finals, device)
            summary["probe_kind"] = cfg.experiment.probe.kind
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_table(summary))
    return summary


def probe_all(cfg, finals: dict[str, Path], device) -> dict:
    """{encoder: {label: top-1 %}} of a probe per label (experiment.probe.kind: attentive = the best head of an
    lr x wd grid of attentive probes on cached frozen tokens, vjepa/eval/probe.py; linear = logistic regression
    on mean-pooled features) for a randomly initialised encoder and every stage's encoder."""
    from vjepa.eval.linear import probe_encoder
    from vjepa.eval.probe import ProbeSettings, best_top1, run_probe

    p = cfg.experiment.probe
    if p.kind not in ("attentive", "linear"):
        raise ValueError(f"config key experiment.probe.kind: {p.kind!r} is not attentive or linear")
    train_loader, val_loader = build_probe_loaders(cfg, device)
    first = cfg.experiment.stages[0]
    torch.manual_seed(stage_seed(cfg, first))
    encoders = {"random-init": build_encoder(encoder_kwargs(cfg))}
    encoders.update({name: load_teacher(path) for name, path in finals.items()})
    results = {}
    for name, enc in encoders.items():
        if p.kind == "linear":
            results[name] = probe_encoder(enc.to(device), train_loader, val_loader, device)
        else:
            settings = ProbeSettings(depth=p.depth, num_heads=p.num_heads, epochs=p.epochs, batch_size=p.batch_size,
                                     lrs=tuple(p.lrs), wds=tuple(p.wds), seed=cfg.seed)
            results[name] = best_top1(run_probe(enc, train_loader, val_loader, settings, device))
        log.info("%s probe %s: %s", p.kind, name, results[name])
    return results


def format_table(summary: dict) -> str:
    lines = ["", "stage        steps   final loss   wall (s)"]
    for name, s in summary["stages"].items():
        loss = f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"
        lines.append(f"{name:<12} {s['steps']:>5}   {loss:>10}   {s['wall_seconds'] or 0:>8.1f}")
    probe = summary.get("probe") or {}
    if probe:
        labels = sorted({k for v in probe.values() for k in v})
        lines += ["", f"{summary.get('probe_kind', 'linear')} probe, top-1 (%)",
                  "encoder".ljust(14) + "".join(f"{l:>12}" for l in labels)]
        for model, acc in probe.items():
            lines.append(f"{model:<14}" + "".join(f"{acc.get(l, float('nan')):>12.1f}" for l in labels))
    lines.append(f"\nrun directory: {summary['run_dir']}")
    return "\n".join(lines)
