"""The one training loop. Every method (pixel, salt, vjepa) runs through `train_stage`, top to bottom:

    build method + masks + loader + optimiser -> resume if a checkpoint exists -> for each step:
    batch -> `_train_step` (masks -> schedules -> forward/backward (micro-batches) -> finite check -> clip -> step
    -> method.after_step (EMA)) -> log -> checkpoint  ... -> final.pt (the models alone, for the next stage)

What a checkpoint holds is built and restored in one place each (vjepa/train/checkpoint.py).

Beside the loss, every step keeps what trivial predictors score on the same targets (the method's
"trivial_zero" / "trivial_position" metrics); the log windows and the stage summary report the loss against
the better of them (`loss_ratio`), and a stage whose tail ratio is not below LEARNING_RATIO is flagged.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from vjepa.eval.knn import PeriodicProbe
from vjepa.masks import Mask, MaskSampler
from vjepa.train import preemption
from vjepa.train.build import build_method, source_mask_generators
from vjepa.train.checkpoint import (
    Progress,
    StageParts,
    load_file,
    remove_partial_writes,
    restore_stage,
    resume_point,
    save_atomic,
    stage_checkpoint,
)
from vjepa.train.compile import setup_compile
from vjepa.train.data import build_train_loader
from vjepa.train.distributed import DistInfo, all_reduce_mean
from vjepa.train.fsdp import scalar, sync_context, wrap_model
from vjepa.train.metrics import LEARNING_RATIO, MetricsLogger, mean_diagnostics
from vjepa.train.optim import Schedule, build_optimizer
from vjepa.train.target_cache import setup_target_cache

log = logging.getLogger(__name__)

TAIL_FRACTION = 0.1  # the stage summary's tail: the last 10% of the steps (at least one log window)


class NonFiniteLoss(RuntimeError):
    pass


def stage_steps(cfg, stage) -> int:
    return max(1, round(cfg.experiment.total_steps * stage.fraction))


def stage_seed(cfg, stage) -> int:
    return cfg.seed * 1000 + zlib.crc32(stage.name.encode()) % 1000


def _micro_batches(video: torch.Tensor, masks: list[Mask], captions, n: int, targets=None):
    size = video.shape[0] // n
    for j in range(n):
        sl = slice(j * size, (j + 1) * size)
        extra = {} if targets is None else {"targets": targets[sl]}  # cached teacher targets
        yield video[sl], [Mask(m.context[sl], m.target[sl]) for m in masks], captions[sl] if captions else None, extra


def _diagnostics(loss: torch.Tensor, metrics: dict) -> torch.Tensor:
    """A micro-batch's [loss, prediction term, trivial_zero, trivial_position] (NaN: the method has no baselines)."""
    nan = torch.full((), math.nan, device=loss.device)
    return torch.stack([loss.detach().float(), metrics.get("predict", loss).detach().float(),
                        metrics.get("trivial_zero", nan).float(), metrics.get("trivial_position", nan).float()])


def _tail_summary(tail) -> dict:
    """The stage summary's evidence of learning, from the per-step values of its last steps."""
    d = mean_diagnostics(list(tail))
    ratio = d["loss_ratio"]
    return {"tail_loss": d["loss"], "final_trivial": {"zero": d["trivial_zero"], "position": d["trivial_position"]},
            "final_loss_ratio": ratio, "learning": None if ratio is None else ratio < LEARNING_RATIO}


def train_stage(cfg, stage, stage_dir: Path, info: DistInfo, device: torch.device,
                teacher_file: Path | None = None, init_file: Path | None = None) -> dict:
    """Train one stage to its step budget (resuming when `stage_dir` holds a checkpoint); returns its summary."""
    stage_dir = Path(stage_dir)
    ckpt_dir = stage_dir / "checkpoints"
    final_path = stage_dir / "final.pt"
    total = stage_steps(cfg, stage)
    seed = stage_seed(cfg, stage)
    torch.manual_seed(seed)  # model initialisation

    method, model_configs, generators = build_method(cfg, stage, teacher_file, init_file)
    method.to(device)
    loader = build_train_loader(cfg, stage, info, seed, device)
    # one mask recipe per data source when the run mixes datasets batch by batch (images: 2-D masks)
    masks = MaskSampler(generators, seed=seed, rank=info.rank, world_size=info.world_size,
                        sources=source_mask_generators(cfg, stage, method.encoder, loader.sources))
    # perf options (docs/performance.md): fixed views + cached teacher targets, torch.compile, FSDP2
    loader = setup_target_cache(cfg, stage, method, stage_dir, info, device, seed, loader)
    masks = setup_compile(cfg, method, masks)
    model = wrap_model(method, info, cfg.perf)  # the method, DDP(method), or the method sharded in place
    trained = method.trained_modules()
    params = [p for m in trained.values() for p in m.parameters() if p.requires_grad]
    optimizer = build_optimizer(list(trained.values()), cfg.optim.lr, cfg.optim.betas)
    schedule = Schedule(total, cfg.optim.lr, cfg.optim.start_lr, cfg.optim.final_lr,
                        round(total * cfg.optim.warmup_fraction), cfg.optim.weight_decay, cfg.optim.final_weight_decay)

    parts = StageParts(method, model, optimizer, masks, loader, model_configs)
    # per-step (loss, predict, trivial_zero, trivial_position) of the last steps, for the summary's tail means
    progress = Progress(tail=deque(maxlen=max(math.ceil(total * TAIL_FRACTION), cfg.log_every)))
    latest = ckpt_dir / "latest.pt"
    if info.is_main:
        for partial in remove_partial_writes(ckpt_dir):
            log.warning("%s: removed %s, a checkpoint write that was killed midway", stage.name, partial)
    found = resume_point(ckpt_dir, stage.name, cfg.get("resume_from")) if cfg.resume else None
    if found is not None:
        restore_stage(found[1], found[0], parts, progress, cfg, stage)
        if info.is_main:
            log.info("%s: resumed from %s at step %d", stage.name, found[0], progress.step)
        if progress.step >= total and final_path.exists():
            return _summary(load_file(final_path), total)

    def save(*paths: Path) -> None:
        state = stage_checkpoint(parts, progress, cfg, stage, info)  # FSDP: gathers shards on every rank
        if state is not None:
            for path in paths:
                save_atomic(state, path)

    method.train()
    logger = MetricsLogger(stage_dir, stage.name, total, progress.step, enabled=info.is_main)
    # periodic k-NN / linear quick probe (experiment.probe.every); FSDP would need every rank to join
    quick_probe = PeriodicProbe(cfg, stage_dir, device, enabled=info.is_main and not cfg.perf.fsdp)
    wall_before, t_start = progress.wall_seconds, time.perf_counter()
    window = []
    data_iter = iter(loader)
    try:
        while progress.step < total:
            t0 = time.perf_counter()
            batch = next(data_iter)
            t_data = time.perf_counter() - t0
            result = _train_step(cfg, parts, schedule, params, batch, progress.step, total, info, device)
            if not math.isfinite(result.loss):
                if cfg.nonfinite == "stop":
                    raise NonFiniteLoss(
                        f"stage {stage.name!r}: loss is {result.loss} at step {progress.step}; stopping. The last "
                        f"good checkpoint is {latest if latest.exists() else 'none (none written yet)'}; set "
                        "nonfinite=skip to skip such steps instead, or lower optim.lr.")
                progress.nonfinite_steps += 1
                log.warning("%s: non-finite loss at step %d, step skipped (%d skipped so far)", stage.name,
                            progress.step, progress.nonfinite_steps)
                progress.step += 1
                continue
            progress.step += 1
            progress.last_loss = result.loss
            window.append(result.diagnostics)
            progress.tail.append(result.diagnostics)
            dt = time.perf_counter() - t0
            logger.advance()
            step = progress.step
            if step % cfg.log_every == 0 or step == total:
                # loss, trivial_zero, trivial_position and loss_ratio, averaged over the window
                logger.log(step, {**mean_diagnostics(window), **result.values, "data_wait_s": t_data, "step_s": dt,
                                  "clips_per_s": batch["video"].shape[0] * info.world_size / dt})
                window = []
            quick_probe(step, total, method.encoder, logger)
            progress.wall_seconds = wall_before + time.perf_counter() - t_start
            preempted = step < total and preemption.requested(info)
            interrupted = preempted or (cfg.stop_at_step is not None and cfg.stop_at_step <= step < total)
            keep = [ckpt_dir / f"step_{step}.pt"] if cfg.keep_every and step % cfg.keep_every == 0 else []
            if keep or interrupted or step % cfg.checkpoint_every == 0 or step == total:
                save(latest, *keep)  # latest.pt is never older than a kept step_N.pt
            if interrupted:
                if info.is_main:
                    log.info("%s: checkpointed at step %d and stopping (%s)", stage.name, step,
                             "preemption signal" if preempted else "stop_at_step")
                return {"steps": step, "final_loss": progress.last_loss, **_tail_summary(progress.tail),
                        "wall_seconds": progress.wall_seconds, "complete": False, "preempted": preempted}
    finally:
        logger.close()

    progress.wall_seconds = wall_before + time.perf_counter() - t_start
    learned = _tail_summary(progress.tail)
    if info.is_main and learned["learning"] is False:
        log.warning("%s: NOT LEARNING: its loss over the last %d steps is %.3f of the better trivial predictor's "
                    "(zeros or the per-position mean target), not below %.2f", stage.name, len(progress.tail),
                    learned["final_loss_ratio"], LEARNING_RATIO)
    final = stage_checkpoint(parts, progress, cfg, stage, info, final=True, diagnostics=learned)
    if final is not None:
        save_atomic(final, final_path)
    skips = loader.skip_counts() if hasattr(loader, "skip_counts") else {}
    return {"steps": progress.step, "final_loss": progress.last_loss, **learned, "wall_seconds": progress.wall_seconds,
            "skipped": skips, "data_fallbacks": skips.get("fallbacks", {}), "nonfinite_steps": progress.nonfinite_steps,
            "complete": True}


@dataclass
class StepResult:
    diagnostics: tuple  # (loss, predict, trivial_zero, trivial_position), averaged over micro-batches and ranks
    values: dict  # what the step adds to a log row: lr, weight_decay, grad_norm and the method's after_step values

    @property
    def loss(self) -> float:
        return self.diagnostics[0]


def _train_step(cfg, parts: StageParts, schedule: Schedule, params: list, batch: dict, step: int, total: int,
                info: DistInfo, device: torch.device) -> StepResult:
    """One optimiser step on `batch`: masks, schedules, forward/backward over the micro-batches (gradients synced
    over ranks on the last), then, when the loss is finite, clip, step and the method's after_step (EMA). A
    non-finite loss leaves the weights and the optimiser untouched (the caller stops or skips the step)."""
    method, model, optimizer = parts.method, parts.model, parts.optimizer
    video = batch["video"].to(device, non_blocking=True)
    grid = method.encoder.patch_embed_grid(video)  # the masks must be drawn on the batch's own token grid
    batch_masks = [m.to(device) for m in parts.masks(video.shape[0], batch.get("source"), grid)]
    lr, wd = schedule.apply(optimizer, step)
    optimizer.zero_grad(set_to_none=True)
    accum = cfg.optim.accum_steps
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    sums = torch.zeros(4, device=device)  # loss, predict, trivial_zero, trivial_position (_diagnostics)
    targets = batch["targets"].to(device, non_blocking=True) if "targets" in batch else None
    micro = _micro_batches(video, batch_masks, batch.get("captions"), accum, targets)
    for j, (v, ms, caps, kw) in enumerate(micro):
        # DDP / FSDP sync gradients on the last micro-batch only
        with sync_context(model, info, j == accum - 1), autocast:
            loss, metrics = model(v, ms, caps, **kw)
            (loss / accum).backward()
        # the baselines average over micro-batches like the loss (each micro-batch's per-position mean
        # is over its own items)
        sums += _diagnostics(loss, metrics) / accum
    # one all_reduce for the four, as for the loss alone before: the baselines are averaged over ranks
    # like the loss (each rank's per-position mean is over its own items: local baselines, averaged)
    diagnostics = tuple(all_reduce_mean(sums, info).tolist())
    if not math.isfinite(diagnostics[0]):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(diagnostics, {})
    grad_norm = None
    if cfg.optim.clip_grad:
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad))
    optimizer.step()
    extra = method.after_step(step, total)
    return StepResult(diagnostics, {"lr": lr, "weight_decay": wd, "grad_norm": grad_norm, **extra})


def _summary(final: dict, total: int) -> dict:
    return {"steps": final.get("step", total), "final_loss": final.get("last_loss"),
            **final.get("diagnostics", _tail_summary([])), "wall_seconds": final.get("wall_seconds"),
            "skipped": {}, "nonfinite_steps": final.get("nonfinite_steps", 0), "complete": True}
