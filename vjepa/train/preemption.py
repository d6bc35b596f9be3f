"""Preemption requests: a signal handler only raises a flag; the trainer acts on it at the next step
boundary (a consistent state to checkpoint), never in the middle of an optimiser step."""
from __future__ import annotations

import signal

from vjepa.train.distributed import all_ranks_any

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
    return _requested if info is None else all_ranks_any(_requested, info)


def clear() -> None:
    global _requested
    _requested = False
