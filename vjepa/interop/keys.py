"""Strict key matching shared by every loader, plus safe file reading.

Every conversion ends in `check_state_dict`: a missing, unexpected or mis-shaped key is an error that lists
all of them, unless the key matches a pattern in `allow_missing` (fnmatch globs, tested against the
checkpoint's name and our name). Checkpoint files are read with `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping

import torch

# prefixes added by DDP (`module.`), the reference's multi-mask wrappers (`backbone.`) and torch.compile
WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, damaged, or not fitting the model or the run (the trainer's
    checkpoints, vjepa/train/checkpoint.py, raise it too)."""


class CheckpointMismatchError(ValueError, CheckpointError):
    """A checkpoint does not fit the model: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.what = what
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{what}: the checkpoint does not fit the model"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            lines.append(f"  mis-shaped ({len(self.mismatched)}): " + ", ".join(
                f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        lines.append("  pass allow_missing=[...] (glob patterns) only for keys that are known extras" + (
            f"; {hint}" if hint else ""))
        super().__init__("\n".join(lines))


def strip_prefixes(state: Mapping[str, torch.Tensor], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Remove leading wrapper prefixes (repeatedly, in any order) from every key."""
    prefixes = tuple(prefixes)
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k in out:
            raise ValueError(f"two checkpoint entries map to {k!r} after removing the prefixes {prefixes}")
        out[k] = v
    return out


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_state_dict(expected: Mapping[str, torch.Size], provided: Mapping[str, torch.Tensor], what: str,
                     allow_missing: Iterable[str] = (), hint: str = "") -> tuple[list[str], list[str]]:
    """Compare a (renamed) checkpoint with the model's parameter names and shapes.

    Returns (ignored checkpoint keys, model keys left at their initial value), both only from
    `allow_missing`; raises CheckpointMismatchError listing everything else that does not fit.
    """
    allow = tuple(allow_missing)
    missing = [k for k in expected if k not in provided]
    unexpected = [k for k in provided if k not in expected]
    mismatched = [(k, tuple(provided[k].shape), tuple(s)) for k, s in expected.items()
                  if k in provided and tuple(provided[k].shape) != tuple(s)]
    bad_missing = [k for k in missing if not matches(k, allow)]
    bad_unexpected = [k for k in unexpected if not matches(k, allow)]
    if bad_missing or bad_unexpected or mismatched:
        raise CheckpointMismatchError(what, bad_missing, bad_unexpected, mismatched, hint)
    return sorted(set(unexpected)), sorted(set(missing))


def block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered sub-modules `prefix.N.` in a state dict (max N + 1)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    ids = [int(m.group(1)) for k in state if (m := pat.match(k))]
    return max(ids) + 1 if ids else 0


# numpy arrays / scalars / dtypes (e.g. a trainer's saved numpy RNG state) are data, not code: allowed
_NUMPY_DATA = re.compile(r"^numpy(\._core|\.core)?\."
                         r"(multiarray\.(_reconstruct|scalar)|ndarray|dtype|dtypes\.\w+DType)$")


def _numpy_globals(path: str) -> list | None:
    """The numpy data globals a checkpoint needs, or None if it needs anything else."""
    import importlib

    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    if not names or not all(_NUMPY_DATA.match(n) for n in names):
        return None
    out = []
    for n in names:
        mod, _, attr = n.rpartition(".")
        out.append(getattr(importlib.import_module(mod), attr))
    try:  # dtype classes are built while unpickling an array's dtype and are not listed up front
        dtypes = importlib.import_module("numpy.dtypes")
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "StringDType"]
    except ImportError:  # numpy < 1.25
        pass
    return out


def safe_load(path: str | os.PathLike, map_location="cpu"):
    """torch.load with weights_only=True (never unpickles code); memory-maps zip checkpoints when it can.

    Besides tensors and containers, only numpy arrays / scalars / dtypes are accepted (checked by name first)."""
    import pickle

    path = os.fspath(path)

    def load(**kw):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True, **kw)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e).lower() and "zip" not in str(e).lower():
                raise
        return torch.load(path, map_location=map_location, weights_only=True, **kw)

    try:
        return load()
    except pickle.UnpicklingError:
        allowed = _numpy_globals(path)
        if allowed is None:
            raise
    with torch.serialization.safe_globals(allowed):
        return load()
