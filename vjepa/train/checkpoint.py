"""Checkpoints: atomic writes, strict loads, and the RNG state needed for an exact resume."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill mid-write keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_file(path: str | Path, trusted: bool = False) -> dict:
    """Read a checkpoint. Files this tool wrote (trusted) may hold numpy RNG state; anything else is
    read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # a truncated / foreign file: name it
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def load_state_strict(module: nn.Module, state: dict, what: str, allow_missing=()) -> None:
    """load_state_dict that fails naming every missing, unexpected or mis-shaped key (the one check:
    vjepa.interop.keys.check_state_dict; `allow_missing` takes glob patterns of known extras)."""
    from vjepa.interop.keys import check_state_dict

    check_state_dict({k: v.shape for k, v in module.state_dict().items()}, state, f"state of {what!r}", allow_missing)
    module.load_state_dict(state, strict=not allow_missing)


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
