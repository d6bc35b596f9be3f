"""Data-loader workers die with the training process, however it ends (a SIGKILL, the OOM killer, a crash).

The workers start from Python's forkserver (data/loader.py ``_worker_context``). The forkserver exits when the
last holder of its "alive" pipe has gone: meant to be the training process, but the forkserver hands a copy of
that pipe to every process it forks (so that they could use the server in turn). The workers thus kept the
forkserver alive, and the forkserver kept the workers alive: torch's worker watchdog asks only whether the
worker's parent lives, and that parent is the forkserver. After a SIGKILL of the trainer, the forkserver and
all its workers lived on with their memory.

A worker starts no processes, so it closes its copy of the pipe: the forkserver then sees the trainer's end
close and exits. And the worker asks the kernel to SIGKILL it when its parent exits (``PR_SET_PDEATHSIG``), so
that a busy or hung worker (inside a decoder) goes at once too, not only an idle one at torch's next check.
The forkserver itself gets no PDEATHSIG: that signal fires when the *thread* that forked the process exits,
and the trainer's thread that happened to start the server need not live as long as the trainer; the pipe
closes with the whole process.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing import forkserver

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def release_forkserver() -> None:
    """Close this process's copy of the forkserver's alive pipe (set in forkserver children, and in fork
    children of a process that runs a forkserver); the forkserver then lives only as long as its starter."""
    server = forkserver._forkserver  # the module's singleton; the attribute is private but stable since 3.4
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        server._forkserver_alive_fd = None
        os.close(fd)


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux; elsewhere a no-op). The parent must be a process
    whose forking thread lives as long as it does (the forkserver's single thread)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent went before the request took effect
        os._exit(1)


def bind_worker_to_trainer(started_by_forkserver: bool) -> None:
    """Call first thing in a data-loader worker (its ``worker_init_fn``)."""
    if started_by_forkserver:  # first: the release below may end the forkserver at once
        die_with_parent()
    release_forkserver()
