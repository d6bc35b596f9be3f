"""The one training loop. Every method (pixel, salt, vjepa) runs through `train_stage`, top to bottom:

    build method + masks + loader + optimiser -> resume if a checkpoint exists -> for each step:
    batch -> masks -> schedules -> forward/backward (micro-batches) -> finite check -> clip -> step
    -> method.after_step (EMA) -> log -> checkpoint  ... -> final.pt (the models alone, for the next stage)

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
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vjepa.eval.knn import PeriodicProbe
from vjepa.masks import Mask, MaskSampler
from vjepa.train import preemption
from vjepa.train.build import build_method
from vjepa.train.checkpoint import load_file, rng_state, save_atomic, set_rng_state
from vjepa.train.compile import setup_compile
from vjepa.train.data import build_train_loader
from vjepa.train.distributed import DistInfo, all_reduce_mean
from vjepa.train.fsdp import checkpoint_states, load_model_state, load_optimizer_state, scalar, sync_context, wrap_model
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
    masks = MaskSampler(generators, seed=seed, rank=info.rank, world_size=info.world_size)
    loader = build_train_loader(cfg, stage, info, seed, device)
    # perf options (docs/performance.md): fixed views + cached teacher targets, torch.compile, FSDP2
    loader = setup_target_cache(cfg, stage, method, stage_dir, info, device, seed, loader)
    masks = setup_compile(cfg, method, masks)
    model = wrap_model(method, info, cfg.perf)  # the method, DDP(method), or the method sharded in place
    trained = method.trained_modules()
    params = [p for m in trained.values() for p in m.parameters() if p.requires_grad]
    optimizer = build_optimizer(list(trained.values()), cfg.optim.lr, cfg.optim.betas)
    schedule = Schedule(total, cfg.optim.lr, cfg.optim.start_lr, cfg.optim.final_lr,
                        round(total * cfg.optim.warmup_fraction), cfg.optim.weight_decay, cfg.optim.final_weight_decay)

    step, wall_before, last_loss = 0, 0.0, None
    # per-step (loss, predict, trivial_zero, trivial_position) of the last steps, for the summary's tail means
    tail = deque(maxlen=max(math.ceil(total * TAIL_FRACTION), cfg.log_every))
    latest = ckpt_dir / "latest.pt"
    if cfg.resume and latest.exists():
        state = load_file(latest, trusted=True)
        for name, module in method.saved_modules().items():
            load_model_state(module, state["models"][name], f"{latest}: {name}")
        load_optimizer_state(model, optimizer, state["optimizer"])
        masks.load_state_dict(state["masks"])
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        step, wall_before, last_loss = state["step"], state.get("wall_seconds", 0.0), state.get("last_loss")
        tail.extend(tuple(t) for t in state.get("tail", []))
        if info.is_main:
            log.info("%s: resumed from %s at step %d", stage.name, latest, step)
        if step >= total and final_path.exists():
            return _summary(load_file(final_path), total)

    def save(path: Path, wall: float, last_loss: float | None) -> None:
        states = checkpoint_states(model, method, optimizer, info)  # FSDP: gathers shards on every rank
        if states is None:
            return
        save_atomic({
            "step": step, "stage": stage.name, "method": stage.method, "wall_seconds": wall, "last_loss": last_loss,
            "tail": list(tail), "models": states[0],
            "model_configs": model_configs, "optimizer": states[1], "masks": masks.state_dict(),
            "loader": loader.state_dict(), "rng": rng_state(),
            "config": OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else None,
        }, path)

    method.train()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    logger = MetricsLogger(stage_dir, stage.name, total, step, enabled=info.is_main)
    # periodic k-NN / linear quick probe (experiment.probe.every); FSDP would need every rank to join
    quick_probe = PeriodicProbe(cfg, stage_dir, device, enabled=info.is_main and not cfg.perf.fsdp)
    accum = cfg.optim.accum_steps
    t_start = time.perf_counter()
    window = []
    data_iter = iter(loader)
    try:
        while step < total:
            t0 = time.perf_counter()
            batch = next(data_iter)
            video = batch["video"].to(device, non_blocking=True)
            batch_masks = [m.to(device) for m in masks(video.shape[0])]
            t_data = time.perf_counter() - t0
            lr, wd = schedule.apply(optimizer, step)
            optimizer.zero_grad(set_to_none=True)
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
            loss_value = diagnostics[0]
            if not math.isfinite(loss_value):
                if cfg.nonfinite == "stop":
                    raise NonFiniteLoss(
                        f"stage {stage.name!r}: loss is {loss_value} at step {step}; stopping. The last good "
                        f"checkpoint is {latest if latest.exists() else 'none (none written yet)'}; set "
                        "nonfinite=skip to skip such steps instead, or lower optim.lr.")
                log.warning("%s: non-finite loss at step %d, step skipped", stage.name, step)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                continue
            grad_norm = None
            if cfg.optim.clip_grad:
                grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad))
            optimizer.step()
            extra = method.after_step(step, total)
            step += 1
            last_loss = loss_value
            window.append(diagnostics)
            tail.append(diagnostics)
            dt = time.perf_counter() - t0
            logger.advance()
            if step % cfg.log_every == 0 or step == total:
                # loss, trivial_zero, trivial_position and loss_ratio, averaged over the window
                logger.log(step, {**mean_diagnostics(window), "lr": lr, "weight_decay": wd, "grad_norm": grad_norm,
                                  "clips_per_s": video.shape[0] * info.world_size / dt, "data_wait_s": t_data,
                                  "step_s": dt, **extra})
                window = []
            quick_probe(step, total, method.encoder, logger)
            wall = wall_before + time.perf_counter() - t_start
            preempted = step < total and preemption.requested(info)
            interrupted = preempted or (cfg.stop_at_step is not None and cfg.stop_at_step <= step < total)
            if step % cfg.checkpoint_every == 0 or step == total or interrupted:
                save(latest, wall, last_loss)
            if cfg.keep_every and step % cfg.keep_every == 0:
                save(ckpt_dir / f"step_{step}.pt", wall, last_loss)
            if interrupted:
                if info.is_main:
                    log.info("%s: checkpointed at step %d and stopping (%s)", stage.name, step,
                             "preemption signal" if preempted else "stop_at_step")
                return {"steps": step, "final_loss": last_loss, **_tail_summary(tail), "wall_seconds": wall,
                        "complete": False, "preempted": preempted}
    finally:
        logger.close()

    wall = wall_before + time.perf_counter() - t_start
    learned = _tail_summary(tail)
    if info.is_main and learned["learning"] is False:
        log.warning("%s: NOT LEARNING: its loss over the last %d steps is %.3f of the better trivial predictor's "
                    "(zeros or the per-position mean target), not below %.2f", stage.name, len(tail),
                    learned["final_loss_ratio"], LEARNING_RATIO)
    states = checkpoint_states(model, method, info=info)
    if states is not None:
        save_atomic({"format": "vjepa-stage", "stage": stage.name, "method": stage.method, "step": step,
                     "wall_seconds": wall, "last_loss": last_loss, "diagnostics": learned,
                     "model_configs": model_configs, "models": states[0]}, final_path)
    skips = loader.skip_counts() if hasattr(loader, "skip_counts") else {}
    return {"steps": step, "final_loss": last_loss, **learned, "wall_seconds": wall, "skipped": skips,
            "complete": True}


def _summary(final: dict, total: int) -> dict:
    return {"steps": final.get("step", total), "final_loss": final.get("last_loss"),
            **final.get("diagnostics", _tail_summary([])), "wall_seconds": final.get("wall_seconds"),
            "skipped": {}, "complete": True}
