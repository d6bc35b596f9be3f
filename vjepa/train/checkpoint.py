"""Checkpoints: what a stage's checkpoint holds (built by `stage_checkpoint`, restored by `restore_stage`, so a
field cannot be saved and forgotten on resume), atomic writes, verified strict loads, the choice of the
checkpoint to resume from, and the RNG state needed for an exact resume. docs/reliability.md says what a user
gets when a write fails, a file is damaged or the config changed."""
from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from vjepa.interop.keys import CheckpointError, check_state_dict
from vjepa.train.fsdp import checkpoint_states, load_full_state_dict, load_optimizer_state

log = logging.getLogger(__name__)

FINAL_FORMAT = "vjepa-stage"  # final.pt: a stage's models alone, for the next stage (vjepa.interop reads it)

# The config keys a training checkpoint's state depends on: resuming with other values would load its weights,
# mask and loader state into another model or run, so a resume checks them. Other keys may change on resume
# (optim.lr after a divergence, step budgets, logging, workers, the launcher, the data's location).
RESUME_KEYS = ("seed", "model", "predictor", "decoder", "text", "mask", "data.frames_per_clip", "data.frame_step",
               "data.fps", "data.duration", "data.crop_size", "data.batch_size")
RESUME_FREE = ("model.grad_checkpointing",)  # under RESUME_KEYS, yet free to change: memory, not the model


def save_atomic(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill or a failure mid-write keeps the old
    file, and a failure (disk full, file-size limit, read-only folder) raises naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a crash of the machine
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: as they are
            raise
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"could not write checkpoint {path} ({kept}; is the disk full, or a quota or file-size "
                              f"limit reached?): {type(e).__name__}: {e}") from e


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temp files of writes that were killed midway (save_atomic's `.NAME.*.tmp`); call it only while
    nothing writes there (the main rank, before training)."""
    partial = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for p in partial:
        p.unlink(missing_ok=True)
    return partial


def load_file(path: str | Path, trusted: bool = False, verify: bool = False) -> dict:
    """Read a checkpoint. Files this tool wrote (trusted) may hold numpy RNG state; anything else is
    read with weights_only=True. `verify`: check every byte first (see `damage`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    why = damage(path) if verify else None
    if why:
        raise CheckpointError(f"checkpoint {path} is damaged: {why}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # a truncated / foreign file: name it
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def damage(path: str | Path) -> str | None:
    """Why `path` is not an intact checkpoint, or None. torch.save writes a zip archive with a CRC-32 per member,
    which torch.load does not check: a truncated file lacks the archive's directory (at its end), and a changed
    byte fails its member's CRC (torch.load would return the wrong weights)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # truncated, or not a zip archive
        return f"not a complete checkpoint archive ({type(e).__name__}: {e})"
    return None if bad is None else f"its member {bad} fails its CRC-32 check (corrupted bytes)"


def load_state_strict(module: nn.Module, state: dict, what: str, allow_missing=()) -> None:
    """load_state_dict that fails naming every missing, unexpected or mis-shaped key (the one check:
    vjepa.interop.keys.check_state_dict; `allow_missing` takes glob patterns of known extras)."""
    check_state_dict({k: v.shape for k, v in module.state_dict().items()}, state, f"state of {what!r}", allow_missing)
    module.load_state_dict(state, strict=not allow_missing)


def load_model_state(module: nn.Module, state: dict, what: str) -> None:
    """Strict load of a saved (full) state into a plain or sharded (FSDP: DTensor) module."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(v, DTensor) for v in module.state_dict().values()):
        load_full_state_dict(module, state, what)
    else:
        load_state_strict(module, state, what)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- a training stage's checkpoint: one builder, one restorer ------------------------------------------------

@dataclass
class StageParts:
    """The stateful parts of a training stage: what its checkpoint captures and a resume restores."""
    method: nn.Module  # its saved_modules() are the weights
    model: nn.Module  # what the step runs: the method, DDP(method), or the method sharded in place (FSDP)
    optimizer: torch.optim.Optimizer
    masks: Any  # a MaskSampler (state_dict / load_state_dict)
    loader: Any  # the training loader (state_dict / load_state_dict)
    model_configs: dict  # how to rebuild each saved module (vjepa.train.build)


@dataclass
class Progress:
    """Where the loop is and what it has seen: the rest of what a resume continues from."""
    step: int = 0
    wall_seconds: float = 0.0  # training time over every attempt so far
    last_loss: float | None = None
    tail: deque = field(default_factory=deque)  # per-step diagnostics of the last steps (the summary's tail)
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss (nonfinite=skip), over every attempt


def config_dict(cfg) -> dict | None:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else None


def stage_checkpoint(parts: StageParts, progress: Progress, cfg, stage, info=None, final: bool = False,
                     diagnostics: dict | None = None) -> dict | None:
    """What a stage's checkpoint file holds: its whole training state (latest.pt, step_N.pt), or with `final`
    its models alone for the next stage (final.pt, with the stage's `diagnostics`). With FSDP this gathers the
    shards, a collective: call it on every rank; None on the ranks that do not write."""
    states = checkpoint_states(parts.model, parts.method, None if final else parts.optimizer, info)
    if states is None:
        return None
    out = {"stage": stage.name, "method": stage.method, "step": progress.step, "wall_seconds": progress.wall_seconds,
           "last_loss": progress.last_loss, "nonfinite_steps": progress.nonfinite_steps,
           "model_configs": parts.model_configs, "models": states[0]}
    if final:
        return {"format": FINAL_FORMAT, **out, "diagnostics": diagnostics}
    return {**out, "tail": list(progress.tail), "optimizer": states[1], "masks": parts.masks.state_dict(),
            "loader": parts.loader.state_dict(), "rng": rng_state(), "config": config_dict(cfg)}


def restore_stage(state: dict, path: Path, parts: StageParts, progress: Progress, cfg, stage) -> None:
    """Load a training checkpoint (stage_checkpoint's) into the stage's parts and `progress`; first checks that
    the config still matches it (config_mismatch)."""
    differing = config_mismatch(state.get("config"), config_dict(cfg), stage.name)
    if differing:
        raise CheckpointError(f"cannot resume from {path}: the config differs from the one it was written with in "
                              f"{len(differing)} key(s): " + "; ".join(differing) + ". Resume with the checkpoint's "
                              "values, or train in another run_dir.")
    for name, module in parts.method.saved_modules().items():
        load_model_state(module, state["models"][name], f"{path}: {name}")
    load_optimizer_state(parts.model, parts.optimizer, state["optimizer"])
    parts.masks.load_state_dict(state["masks"])
    parts.loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    progress.step = state["step"]
    # files from before these fields were kept: no wall time, last loss or tail yet
    progress.wall_seconds, progress.last_loss = state.get("wall_seconds", 0.0), state.get("last_loss")
    progress.nonfinite_steps = state.get("nonfinite_steps", 0)
    progress.tail.clear()
    progress.tail.extend(tuple(t) for t in state.get("tail", []))


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _select(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def config_mismatch(saved: dict | None, now: dict | None, stage_name: str) -> list[str]:
    """'key: checkpoint value vs now' for each leaf of RESUME_KEYS and of the stage's own entry
    (experiment.stages[i]) that differs; [] when they match or a config is unknown (an older file)."""
    if saved is None or now is None:
        return []
    stages_now = _select(now, "experiment.stages") or []
    index = next((i for i, s in enumerate(stages_now) if s.get("name") == stage_name), None)

    def relevant(cfg: dict) -> dict:
        flat = {}
        for key in RESUME_KEYS:
            flat.update(_flat(_select(cfg, key), key))
        for key in RESUME_FREE:
            flat.pop(key, None)
        entry = next((s for s in _select(cfg, "experiment.stages") or [] if s.get("name") == stage_name), {})
        flat.update(_flat(entry, f"experiment.stages[{index}]"))
        return flat

    a, b = relevant(saved), relevant(now)

    def show(flat, key):
        return repr(flat[key]) if key in flat else "unset"

    return [f"{k}: {show(a, k)} (checkpoint) vs {show(b, k)} (now)" for k in sorted(a.keys() | b.keys())
            if k not in a or k not in b or a[k] != b[k]]


# ---- which checkpoint a stage resumes from -------------------------------------------------------------------

def kept_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The step_N.pt files (cfg.keep_every) of a stage, newest first."""
    named = ((re.fullmatch(r"step_(\d+)\.pt", p.name), p) for p in Path(ckpt_dir).glob("step_*.pt"))
    return [p for _, p in sorted(((int(m.group(1)), p) for m, p in named if m), reverse=True)]


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint this tool wrote, its every byte checked."""
    return load_file(path, trusted=True, verify=True)


def resume_point(ckpt_dir: Path, stage_name: str, resume_from: str | None = None) -> tuple[Path, dict] | None:
    """The checkpoint a stage resumes from and its contents, or None when it has none (it starts at step 0).

    That is the stage's latest.pt, unless `resume_from` (cfg.resume_from) names a checkpoint of this stage and
    latest.pt is older, missing or damaged. A damaged latest.pt, or step_N.pt files without a latest.pt, raise
    naming the newest intact step_N.pt: never a silent restart from step 0."""
    chosen = None
    if resume_from:
        state = load_checkpoint(Path(resume_from))
        if state.get("stage") == stage_name:
            chosen = (Path(resume_from), state)
    latest = Path(ckpt_dir) / "latest.pt"
    if latest.exists():
        try:
            state = load_checkpoint(latest)
        except CheckpointError as e:
            if chosen is None:
                raise CheckpointError(f"{e}\n{_fallback_hint(ckpt_dir)}") from None
            log.warning("%s: %s; resuming from %s (resume_from)", stage_name, e, chosen[0])
            return chosen
        return chosen if chosen is not None and chosen[1]["step"] > state["step"] else (latest, state)
    if chosen is None and kept_checkpoints(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} holds kept checkpoints but no latest.pt.\n{_fallback_hint(ckpt_dir)}")
    return chosen


def _fallback_hint(ckpt_dir: Path) -> str:
    intact = next((p for p in kept_checkpoints(ckpt_dir) if damage(p) is None), None)
    if intact is None:
        return (f"No intact step_N.pt is kept in {ckpt_dir} (keep_every). To start this stage over, move the "
                "checkpoints folder away (or set resume=false).")
    step = int(intact.stem.split("_")[1])
    return f"The newest intact kept checkpoint is {intact} (step {step}): resume from it with resume_from={intact}"
