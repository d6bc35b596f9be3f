"""Preemption requests: a signal handler only raises a flag; the trainer acts on it at the next step
boundary (a consistent state to checkpoint), never in the middle of an optimiser step."""
from __future__ import annotations

import signal

import torch

_requested = False


def _handler(signum, frame) -> None:
    global _requested
    _requested = True


def install(signum: int = signal.SIGUSR2):
    """Route `signum` to the flag; returns the previous handler (e.g. submitit's requeue handler)."""
    return signal.signal(signum, _handler)


def request() -> None:
    _handler(None, None)


def requested(info=None) -> bool:
    """True when any rank was asked to stop (ranks agree, so they all checkpoint the same step)."""
    flag = _requested
    if info is not None and info.enabled:
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def clear() -> None:
    global _requested
    _requested = False
