"""Data-loader faults, injected with real processes and a real stalled file (docs/reliability.md):

- a trainer killed by SIGKILL takes its loader processes (forkserver, workers, resource tracker) along, even
  workers that cannot run (stopped), and the rerun resumes bit-identically;
- a worker that hangs (alive, not dead) stops the run after `worker_timeout`, naming the batch and its files.

The hang is a real one: while this process holds a write lease on a video (fcntl F_SETLEASE), the kernel blocks
every other process's open() of it for /proc/sys/fs/lease-break-time seconds, as a stalled network file system
does; the decoder in the worker waits inside open().
"""
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import REPO
from data.loader import WorkerTimeout, build_loader
from data.manifest import Item
from test_train import SMALL, assert_states_equal, final_state, make_cfg
from vjepa.train.experiment import run_experiment

# the trainer's subprocesses compute with this process's thread count: their steps and ours are bit-identical
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
CLIP = dict(frames_per_clip=4, frame_step=2, size=32)


# ---- processes, read from /proc (psutil is not a dependency) ------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
    except OSError:
        return None


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return "?"


def process_tree(root: int) -> dict[int, tuple[str, str]]:
    """`root` and its descendants now: pid -> (start time, which tells a reused pid apart; command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is not None:
            tree[pid] = (stat[19], command(pid))
            todo += children.get(pid, [])
    return tree


def survivors(tree: dict) -> list[str]:
    """The processes of `tree` still running (a zombie has finished: only its exit status is left)."""
    return [f"{pid} {cmd}" for pid, (start, cmd) in tree.items()
            if (s := _stat(pid)) is not None and s[19] == start and s[0] != "Z"]


def forkserver_and_workers(tree: dict) -> list[int]:
    return [pid for pid, (_, cmd) in tree.items() if "multiprocessing.forkserver" in cmd]


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: a pipe nobody reads would block the writers once full
        return subprocess.Popen(args, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)


def wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{what}: not seen (exit code {proc.poll()}): {log.read_text()[-3000:]}")
        time.sleep(0.05)


def sigkill_and_watch(proc: subprocess.Popen, grace: float = 60) -> tuple[dict, list[str]]:
    """SIGKILL `proc` alone; its tree as it was, and who of it is still running `grace` seconds later (then
    killed here, so that a failing test leaves nothing behind). The workers go when the forkserver has exited,
    about a second on a quiet machine (it is a Python process with torch loaded); `grace` is for a busy one."""
    tree = process_tree(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.time() + grace
    while survivors(tree) and time.time() < deadline:
        time.sleep(0.1)
    left = survivors(tree)
    for process in left:
        os.kill(int(process.split()[0]), signal.SIGKILL)
    return tree, left


# ---- a stalled file ------------------------------------------------------------------------------------------

LEASE_BREAK_S = int(Path("/proc/sys/fs/lease-break-time").read_text())  # how long a stalled open() waits


class Stall:
    """When another process first tried to open the stalled file (the kernel tells the lease holder, SIGIO)."""
    tried_at: float | None = None

    def tried(self) -> bool:
        return self.tried_at is not None

    def _signal(self, *_) -> None:
        self.tried_at = self.tried_at or time.monotonic()


@contextmanager
def stalled(path: Path):
    """Every other process's open() of `path` blocks, for LEASE_BREAK_S seconds, while this process holds a
    write lease on it (Linux); yields a Stall."""
    if LEASE_BREAK_S < 30:
        pytest.fail(f"/proc/sys/fs/lease-break-time is {LEASE_BREAK_S} s: a stalled open() would not outlast the test")
    stall = Stall()
    previous = signal.signal(signal.SIGIO, stall._signal)
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        yield stall
    finally:
        os.close(fd)  # releases the lease: a waiting open() goes on
        signal.signal(signal.SIGIO, previous)


@pytest.fixture
def stalled_video(embedded_data, tmp_path):
    """A copy of a real video, stalled (see `stalled`), and the real videos beside it."""
    videos = sorted((embedded_data / "videos").glob("*.mp4"))
    path = tmp_path / "stalled.mp4"
    shutil.copy(videos[0], path)
    with stalled(path) as stall:
        yield path, stall, [str(v) for v in videos[1:]]


# ---- the trainer dies: its loader goes with it ---------------------------------------------------------------

KILL_RUN = ["experiment=vjepa", "experiment.total_steps=40", "checkpoint_every=4", "data.num_workers=2"]


@pytest.mark.slow
def test_sigkill_of_the_trainer_takes_its_loader_along_and_the_rerun_resumes_exactly(embedded_data, tmp_path,
                                                                                       caplog):
    """`python -m launch.train` with 2 workers, SIGKILLed after its first checkpoint: the forkserver, the workers
    and the resource tracker exit by themselves within seconds; the rerun resumes to the weights of a run never
    killed, bit for bit. (Before the fix the forkserver and its workers kept each other alive for good.)"""
    run_dir = tmp_path / "killed"
    latest = run_dir / "student" / "checkpoints" / "latest.pt"
    log = tmp_path / "killed.log"
    proc = start([sys.executable, "-m", "launch.train", *SMALL, f"data.root={embedded_data}", *KILL_RUN,
                  f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"], log)
    try:
        wait_for(latest.exists, "the first checkpoint", proc, log)
        wait_for(lambda: len(forkserver_and_workers(process_tree(proc.pid))) >= 3, "forkserver and 2 workers", proc,
                 log)
    finally:
        tree, left = sigkill_and_watch(proc)
    assert len(forkserver_and_workers(tree)) >= 3, tree  # the forkserver and 2 workers (+ the resource tracker)
    assert not left, "still running after the trainer's SIGKILL:\n" + "\n".join(left)
    assert not (run_dir / "student" / "final.pt").exists()  # killed mid-run, as meant

    with caplog.at_level("INFO"):
        resumed = run_experiment(make_cfg(embedded_data, run_dir, *KILL_RUN), run_dir)
    assert resumed["complete"] and "resumed from" in caplog.text and "at step 0" not in caplog.text
    rows = (run_dir / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 41))  # steps after the checkpoint logged once
    run_experiment(make_cfg(embedded_data, tmp_path / "straight", *KILL_RUN), tmp_path / "straight")
    assert_states_equal(final_state(tmp_path / "straight", "student"), final_state(run_dir, "student"))


RUNNING_LOADER = """
import sys
from data.loader import build_loader
from data.manifest import Item

if __name__ == "__main__":
    loader = build_loader(items=[Item(p) for p in sys.argv[1:]], train=False, batch_size=1, num_workers=2,
                          frames_per_clip=4, frame_step=2, size=32)
    while True:
        for batch in loader:
            print("batch", flush=True)
"""


def test_workers_that_cannot_run_die_with_their_trainer(embedded_data, tmp_path):
    """Workers stopped with SIGSTOP, as good as stuck inside a decoder or a stalled read: torch's check for a dead
    parent never runs in them. They go because the kernel kills them with their parent (PR_SET_PDEATHSIG) once
    the forkserver has gone."""
    script, log = tmp_path / "loader.py", tmp_path / "loader.log"
    script.write_text(RUNNING_LOADER)
    videos = sorted((embedded_data / "videos").glob("*.mp4"))[:4]
    proc = start([sys.executable, str(script), *map(str, videos)], log)
    try:
        wait_for(lambda: "batch" in log.read_text(), "a first batch", proc, log)
        workers = [pid for pid in forkserver_and_workers(process_tree(proc.pid)) if _stat(pid)[1] != str(proc.pid)]
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
    finally:
        tree, left = sigkill_and_watch(proc)
    assert not left, "still running after the trainer's SIGKILL:\n" + "\n".join(left)


# ---- a worker hangs: the run says so ---------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_a_hung_worker_raises_after_worker_timeout_naming_the_batch_and_its_files(stalled_video):
    """Batches of 2 in file order, the stalled file 6th: batches 0 and 1 arrive, then batch 2 (files 5 and 6)
    raises WorkerTimeout after worker_timeout seconds, instead of waiting for good."""
    stalled_path, stall, videos = stalled_video
    items = [Item(p) for p in videos[:5] + [str(stalled_path)] + videos[5:7]]
    loader = build_loader(items=items, train=False, batch_size=2, num_workers=2, worker_timeout=5, **CLIP)
    got = []
    with pytest.raises(WorkerTimeout) as err:
        for batch in loader:
            got.append(batch["index"].tolist())
    raised_at = time.monotonic()
    assert got == [[0, 1], [2, 3]] and stall.tried()
    message = str(err.value)
    assert "epoch 0, batch 2" in message and "worker_timeout=5 s" in message and "data.worker_timeout" in message
    assert message.endswith(f"files:\n  {videos[4]}\n  {stalled_path}")
    assert raised_at - stall.tried_at < LEASE_BREAK_S  # raised while the worker still waited inside open()
    loader.close()


@pytest.mark.timeout(240)
def test_data_worker_timeout_stops_a_training_run(stalled_video, tmp_path):
    """data.worker_timeout reaches the training loader: a run whose data stalls stops with WorkerTimeout
    naming the stalled file."""
    stalled_path, stall, videos = stalled_video
    manifest = tmp_path / "train.csv"
    manifest.write_text("".join(f"{p} 0\n" for p in [str(stalled_path), *videos[:7]]))
    cfg = make_cfg(tmp_path, tmp_path / "run", f"data.train=[{manifest}]", "experiment=vjepa",
                   "experiment.total_steps=4", "data.num_workers=2", "data.worker_timeout=5")
    with pytest.raises(WorkerTimeout, match=r"(?s)worker_timeout=5 s.*" + str(stalled_path)):
        run_experiment(cfg, tmp_path / "run")
    assert stall.tried()
