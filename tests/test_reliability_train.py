"""Training faults, injected with real processes, files and process groups (docs/reliability.md):

- the trainer's collectives run in the process group a multi-GPU run makes (CPU: gloo standing in for NCCL; the
  GPU test: a real 1-rank NCCL group),
- SIGKILL inside a checkpoint write and SIGKILL between checkpoints: the rerun resumes bit-identically,
- a checkpoint write that fails midway (RLIMIT_FSIZE): an error naming the file, the previous one intact,
- a damaged latest.pt: an error naming it and the newest intact step_N.pt, and `resume_from` to use it,
- a resume with a config that no longer matches the checkpoint: one error naming the differing keys.
"""
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from conftest import REPO
from test_train import SMALL, _free_port, assert_states_equal, final_state, make_cfg
from vjepa.train import preemption
from vjepa.train.checkpoint import CheckpointError, damage, load_file, save_atomic
from vjepa.train.distributed import all_reduce_mean, backend_for, barrier, close_distributed, init_distributed
from vjepa.train.experiment import run_experiment

# the trainer's subprocesses compute with this process's thread count: their steps and ours are bit-identical
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}


# ---- collectives on the devices the process group serves ----------------------------------------------------

def gloo_stand_in(spec: str) -> str:
    """A backend spec serving the same device types as `spec`, each by gloo (NCCL needs a GPU): 'nccl' serves
    CUDA only, so it becomes 'cuda:gloo', which raises 'No backend type associated with device type cpu' on a CPU
    tensor, as NCCL does."""
    types = ([part.split(":")[0] for part in spec.split(",")] if ":" in spec
             else dist.Backend.backend_capability[spec])
    return ",".join(f"{t}:gloo" for t in types)


@pytest.fixture
def one_rank_group(tmp_path):
    """Make a 1-rank process group with a given backend spec; destroyed (and the preemption flag cleared) after."""
    def make(spec: str, **kw):
        dist.init_process_group(spec, init_method=f"file://{tmp_path / 'pg_store'}", rank=0, world_size=1, **kw)

    yield make
    preemption.clear()
    if dist.is_initialized():
        dist.destroy_process_group()


def check_trainer_collectives(info, data, run_dir, *overrides):
    """The trainer's collectives in the current group: the preemption agreement, the metric reduction, the
    barrier, then short runs (DDP, then FSDP2: the agreement and reduction every step, the stage barrier, the
    gathered checkpoints) stopped by a preemption request and resumed."""
    assert info.enabled and info.world_size == 1  # the collectives really run
    assert not preemption.requested(info)
    preemption.request()
    assert preemption.requested(info)
    x = torch.tensor([2.0, 4.0], device=info.device)
    assert torch.equal(all_reduce_mean(x, info), x)
    barrier(info)
    for name, fsdp, experiment in (("ddp", "false", "salt"), ("fsdp", "true", "vjepa")):
        cfg = make_cfg(data, run_dir / name, f"experiment={experiment}", "experiment.total_steps=4",
                       f"perf.fsdp={fsdp}", *overrides)
        preemption.request()  # agreed on at the first step: checkpoint and stop
        part = run_experiment(cfg, run_dir / name)
        assert part["preempted"] and not part["complete"]
        preemption.clear()
        assert run_experiment(cfg, run_dir / name)["complete"]


def test_trainer_collectives_run_in_the_process_group_a_gpu_run_makes(embedded_data, tmp_path, one_rank_group):
    """A GPU run's group is made from backend_for(cuda). Here each of its device types is served by gloo: were it
    NCCL alone (CUDA only), the trainer's CPU collectives would raise here as they did at the first step on GPUs."""
    one_rank_group(gloo_stand_in(backend_for(torch.device("cuda"))))
    info = init_distributed("cpu")
    check_trainer_collectives(info, embedded_data, tmp_path)


def _join_and_close(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_distributed("cpu")
    made = (info.owns_group, dist.is_initialized())
    barrier(info)
    close_distributed(info)
    results.put((rank, *made, dist.is_initialized()))


def test_a_group_init_distributed_made_is_torn_down_and_a_callers_is_kept(one_rank_group):
    """Each rank destroys the group it made before it exits: a rank that left with the group alive while another
    was still writing a checkpoint aborted in the teardown of gloo's threads (SIGABRT, the run failed). A group
    made by the caller stays the caller's."""
    ctx = torch.multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_join_and_close, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    # (rank, owns the group, group up after init, group up after close)
    assert sorted(results.get(timeout=5) for _ in procs) == [(0, True, True, False), (1, True, True, False)]
    one_rank_group("gloo")
    info = init_distributed("cpu")
    assert info.enabled and not info.owns_group
    close_distributed(info)
    assert dist.is_initialized()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu_check.sh)")
@pytest.mark.parametrize("spec", ["init_distributed", "nccl"])
def test_trainer_collectives_run_in_a_real_nccl_group(embedded_data, tmp_path, monkeypatch, one_rank_group, spec):
    """A real 1-rank NCCL group (MASTER_ADDR/PORT, world 1): the group init_distributed makes (gloo for CPU
    tensors, NCCL for CUDA ones), and NCCL alone, which serves CUDA tensors only: every collective of the
    trainer must put its tensor on the GPU."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    torch.cuda.set_device(0)
    dist.init_process_group(backend_for(torch.device("cuda")) if spec == "init_distributed" else spec,
                            rank=0, world_size=1)
    info = init_distributed("cuda")
    assert info.device == torch.device("cuda:0")
    check_trainer_collectives(info, embedded_data, tmp_path, "device=cuda")


# ---- SIGKILL: inside a checkpoint write, and between checkpoints ----------------------------------------------

# Runs launch.train with a fault point: "save STEP" writes half of the checkpoint of step STEP into its temp file
# and stops there; "step STEP" stops right after logging step STEP (between checkpoints). Either way it then
# writes the marker file and sleeps until the test SIGKILLs it.
DRIVER = r'''
import io, os, runpy, sys, time
import torch
from vjepa.train.metrics import MetricsLogger

mode, at, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def stop_here():
    with open(marker, "w") as f:
        f.write("stopped")
    time.sleep(600)

real_save, real_log = torch.save, MetricsLogger.log

def half_written_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == at and "optimizer" in obj:
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        stop_here()
    return real_save(obj, f, *args, **kwargs)

def log_then_stop(self, step, values):
    real_log(self, step, values)
    if step == at:
        stop_here()

if mode == "save":
    torch.save = half_written_save
else:
    MetricsLogger.log = log_then_stop
sys.argv = ["launch.train", *sys.argv[4:]]
runpy.run_module("launch.train", run_name="__main__")
'''

KILL_RUN = ["experiment=vjepa", "experiment.total_steps=6", "checkpoint_every=2"]


def train_args(data, run_dir, *extra):
    return [*SMALL, f"data.root={data}", *KILL_RUN, *extra, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]


def train_here(data, run_dir, *extra):
    return run_experiment(make_cfg(data, run_dir, *KILL_RUN, *extra), run_dir)


def run_until_fault_then_sigkill(data, run_dir, mode, at, tmp_path):
    driver, marker = tmp_path / "driver.py", tmp_path / f"stopped_{mode}"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), mode, str(at), str(marker), *train_args(data, run_dir)],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the run did not reach its fault point: {proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the trainer and any process it started
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def never_killed(embedded_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("never_killed")
    train_here(embedded_data, run_dir)
    return final_state(run_dir, "student")


@pytest.mark.parametrize("mode", ["save", "step"])
def test_sigkill_then_rerun_is_bit_identical_to_a_run_never_killed(embedded_data, tmp_path, never_killed, mode,
                                                                   caplog):
    """SIGKILL halfway through writing step 4's checkpoint, or right after step 3 (between checkpoints): the
    previous checkpoint (step 2) still loads, and the rerun resumes from it to the same weights, bit for bit."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "student" / "checkpoints"
    run_until_fault_then_sigkill(embedded_data, run_dir, mode, 4 if mode == "save" else 3, tmp_path)
    partial = list(ckpts.glob(".latest.pt.*.tmp"))
    assert len(partial) == (1 if mode == "save" else 0)  # the half-written temp file, never named latest.pt
    assert damage(ckpts / "latest.pt") is None and load_file(ckpts / "latest.pt", trusted=True)["step"] == 2
    assert not (run_dir / "student" / "final.pt").exists()
    with caplog.at_level("INFO"):
        train_here(embedded_data, run_dir)
    assert f"resumed from {ckpts / 'latest.pt'} at step 2" in caplog.text
    assert not list(ckpts.glob(".*.tmp"))  # the killed write's leftover was removed
    rows = (run_dir / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 7))  # steps after the checkpoint logged once
    assert_states_equal(never_killed, final_state(run_dir, "student"))


# ---- a write that fails midway, a damaged latest.pt, another config -------------------------------------------

def test_a_checkpoint_write_failing_midway_names_the_file_and_keeps_the_previous(embedded_data, tmp_path, caplog):
    """A file-size limit (RLIMIT_FSIZE) below a checkpoint's size: the write of step 4's checkpoint fails midway.
    The error names the file, the step-2 checkpoint is intact, no partial file is left, and a rerun without
    the limit resumes from step 2."""
    run_dir = tmp_path / "run"
    latest = run_dir / "student" / "checkpoints" / "latest.pt"
    train_here(embedded_data, run_dir, "stop_at_step=2")
    before = latest.read_bytes()
    limit = len(before) // 2

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = subprocess.run([sys.executable, "-m", "launch.train", *train_args(embedded_data, run_dir)], cwd=REPO,
                         env=ENV, capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert out.returncode != 0
    assert f"could not write checkpoint {latest} (the previous latest.pt is unchanged" in out.stderr
    assert latest.read_bytes() == before and damage(latest) is None
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest.pt"]
    with caplog.at_level("INFO"):
        assert train_here(embedded_data, run_dir)["complete"]
    assert f"resumed from {latest} at step 2" in caplog.text


def test_a_checkpoint_folder_that_cannot_be_written_names_the_path(tmp_path):
    """An unwritable place (here a file where the checkpoints folder should be; a read-only folder for a user
    other than root) fails at the start of the write with the same clear error."""
    folder = tmp_path / "checkpoints"
    folder.write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=re.escape(f"could not write checkpoint {folder / 'latest.pt'} "
                                                        "(no latest.pt was written")):
        save_atomic({"step": 1}, folder / "latest.pt")


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor's bytes: torch.load alone would read it without complaint
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage_latest", [truncate, flip_a_byte])
def test_a_damaged_latest_names_the_newest_intact_kept_checkpoint_and_resume_from_uses_it(
        embedded_data, tmp_path, damage_latest):
    common = ["experiment=vjepa", "experiment.total_steps=4", "keep_every=1"]
    straight = tmp_path / "straight"
    run_experiment(make_cfg(embedded_data, straight, *common), straight)
    run_dir = tmp_path / "run"
    ckpts = run_dir / "student" / "checkpoints"
    run_experiment(make_cfg(embedded_data, run_dir, *common, "stop_at_step=3"), run_dir)
    damage_latest(ckpts / "latest.pt")
    flip_a_byte(ckpts / "step_3.pt")  # damaged too: the newest intact one is step_2.pt
    damaged = (ckpts / "latest.pt").read_bytes()
    with pytest.raises(CheckpointError) as err:
        run_experiment(make_cfg(embedded_data, run_dir, *common), run_dir)
    msg = str(err.value)
    assert f"checkpoint {ckpts / 'latest.pt'} is damaged" in msg
    assert f"resume_from={ckpts / 'step_2.pt'}" in msg
    # never a silent restart from step 0: nothing was trained or written
    assert (ckpts / "latest.pt").read_bytes() == damaged
    assert len((run_dir / "student" / "metrics.csv").read_text().splitlines()) == 1 + 3
    resumed = run_experiment(make_cfg(embedded_data, run_dir, *common, f"resume_from={ckpts / 'step_2.pt'}"), run_dir)
    assert resumed["complete"]
    assert_states_equal(final_state(straight, "student"), final_state(run_dir, "student"))


def test_kept_checkpoints_without_a_latest_are_not_silently_ignored(embedded_data, tmp_path):
    common = ["experiment=vjepa", "experiment.total_steps=3", "keep_every=1"]
    run_experiment(make_cfg(embedded_data, tmp_path, *common, "stop_at_step=2"), tmp_path)
    ckpts = tmp_path / "student" / "checkpoints"
    (ckpts / "latest.pt").unlink()
    with pytest.raises(CheckpointError, match=f"(?s)no latest.pt.*resume_from={ckpts / 'step_2.pt'}"):
        run_experiment(make_cfg(embedded_data, tmp_path, *common), tmp_path)


def test_resuming_with_another_config_names_every_differing_key(embedded_data, tmp_path):
    common = ["experiment=vjepa", "experiment.total_steps=3"]
    run_experiment(make_cfg(embedded_data, tmp_path, *common, "stop_at_step=1"), tmp_path)
    other = make_cfg(embedded_data, tmp_path, *common, "model.depth=3", "experiment.stages.0.method=pixel",
                     "optim.lr=1e-4")  # the learning rate may change on resume (e.g. after a divergence)
    with pytest.raises(CheckpointError) as err:
        run_experiment(other, tmp_path)
    msg = str(err.value)
    assert "differs from the one it was written with in 2 key(s)" in msg
    assert "model.depth: 2 (checkpoint) vs 3 (now)" in msg
    assert "experiment.stages[0].method: 'vjepa' (checkpoint) vs 'pixel' (now)" in msg
