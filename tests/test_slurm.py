"""Launching on a real one-node SLURM cluster (started by .ci/run with ../shared/slurm/start.sh)."""
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from ci_skips import require
from conftest import REPO
from test_train import SMALL, assert_states_equal, final_state, make_cfg
from vjepa.train.experiment import run_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SHARED_SLURM = REPO.parent / "shared" / "slurm"


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    require(bool(os.environ.get("SLURM_CONF")) and shutil.which("sbatch") is not None,
            "no SLURM cluster here: .ci/run starts one with ../shared/slurm/start.sh and exports SLURM_CONF")
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    require(state.returncode == 0, f"SLURM is not answering: {state.stderr.strip()}")
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{SHARED_SLURM}:{old_path}"  # submitit asks sacct for job states: the stand-in
    yield
    os.environ["PATH"] = old_path


def slurm_cfg(data, run_dir, *overrides):
    return make_cfg(data, run_dir, "launcher=slurm", "launcher.cpus_per_task=1", "launcher.timeout_min=10",
                    *overrides)


def test_cli_submits_and_the_job_matches_a_local_run(embedded_data, tmp_path):
    common = ["experiment=salt", "experiment.total_steps=4"]
    out = subprocess.run(
        [sys.executable, "-m", "launch.train", *SMALL, f"data.root={embedded_data}", *common, "launcher=slurm",
         "launcher.cpus_per_task=1", "launcher.wait=true", f"run_dir={tmp_path / 'slurm'}",
         f"hydra.run.dir={tmp_path / 'slurm'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "submitted SLURM job" in out.stdout and str(tmp_path / "slurm") in out.stdout
    local = run_experiment(make_cfg(embedded_data, tmp_path / "local", *common), tmp_path / "local")
    import json

    remote = json.loads((tmp_path / "slurm" / "summary.json").read_text())
    for stage in ("teacher", "student"):
        assert remote["stages"][stage]["steps"] == local["stages"][stage]["steps"]
        assert remote["stages"][stage]["final_loss"] == pytest.approx(local["stages"][stage]["final_loss"], rel=1e-5)
    assert (tmp_path / "slurm" / "code" / "vjepa" / "train" / "trainer.py").is_file()
    assert "git rev-parse HEAD" in (tmp_path / "slurm" / "code" / "GIT.txt").read_text()


def _wait_for_rows(csv, n, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if csv.exists() and len(csv.read_text().splitlines()) > n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{csv} did not reach {n} rows in {timeout} s")


def test_usr2_checkpoints_requeues_and_resumes_exactly(embedded_data, tmp_path):
    from launch.slurm import submit, wait

    common = ["experiment=vjepa", "experiment.total_steps=60", "checkpoint_every=1000"]
    job = submit(slurm_cfg(embedded_data, tmp_path / "slurm", *common), tmp_path / "slurm")
    _wait_for_rows(tmp_path / "slurm" / "student" / "metrics.csv", 5)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    summary = wait(job)
    assert summary["complete"] and summary["stages"]["student"]["steps"] == 60
    attempts = (tmp_path / "slurm" / "job_attempts.txt").read_text().splitlines()
    assert len(attempts) == 2 and "attempt 1" in attempts[1]
    run_experiment(make_cfg(embedded_data, tmp_path / "local", *common), tmp_path / "local")
    a, b = final_state(tmp_path / "slurm", "student"), final_state(tmp_path / "local", "student")
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"


def test_two_task_job_runs_ddp_across_slurm_tasks(embedded_data, tmp_path):
    from launch.slurm import submit, wait

    common = ["experiment=vjepa", "experiment.total_steps=3", "mask=tube"]
    job = submit(slurm_cfg(embedded_data, tmp_path / "slurm", *common, "launcher.tasks_per_node=2",
                           "data.batch_size=2"), tmp_path / "slurm")
    summary = wait(job)
    assert summary["complete"] and summary["world_size"] == 2
    run_experiment(make_cfg(embedded_data, tmp_path / "local", *common, "data.batch_size=4"), tmp_path / "local")
    a, b = final_state(tmp_path / "slurm", "student"), final_state(tmp_path / "local", "student")
    for key in a["encoder"]:
        torch.testing.assert_close(a["encoder"][key], b["encoder"][key], atol=2e-5, rtol=1e-4)


def test_usr2_to_both_tasks_of_a_ddp_job_requeues_and_resumes_bit_identically(embedded_data, tmp_path):
    """Preemption of a 2-task DDP job: USR2 to both tasks (what SLURM sends before preempting), the ranks agree
    on the step, rank 0 checkpoints and requeues the job, and the requeued job ends with the weights of the
    same 2-task job never interrupted, bit for bit."""
    from launch.slurm import submit, wait

    common = ["experiment=vjepa", "experiment.total_steps=30", "checkpoint_every=1000", "launcher.tasks_per_node=2",
              "data.batch_size=2"]
    preempted, straight = tmp_path / "preempted", tmp_path / "straight"
    job = submit(slurm_cfg(embedded_data, preempted, *common), preempted)
    _wait_for_rows(preempted / "student" / "metrics.csv", 5, timeout=900)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # every task of the job's steps
    reference = submit(slurm_cfg(embedded_data, straight, *common), straight)  # runs once the CPUs are free
    summary = wait(job)
    assert summary["complete"] and summary["world_size"] == 2 and summary["stages"]["student"]["steps"] == 30
    attempts = (preempted / "job_attempts.txt").read_text().splitlines()
    assert len(attempts) == 2 and "attempt 1" in attempts[1] and all("world 2" in a for a in attempts)
    assert all(a.endswith(f"code {preempted.resolve() / 'code'}") for a in attempts)  # the snapshot, not the checkout
    rows = (preempted / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 31))  # resumed where it stopped: each step once
    assert wait(reference)["complete"]
    assert (straight / "job_attempts.txt").read_text().count("\n") == 1
    assert_states_equal(final_state(preempted, "student"), final_state(straight, "student"))


@pytest.mark.parametrize("override,reason", [
    ("launcher.partition=nosuchpartition", "partition"),
    ("launcher.nodes=5", "node"),
])
def test_bad_submission_fails_at_submit_time_with_the_reason(embedded_data, tmp_path, override, reason):
    from launch.slurm import SubmissionError, submit

    with pytest.raises(SubmissionError, match=f"(?i)SLURM refused the job.*{reason}"):
        submit(slurm_cfg(embedded_data, tmp_path, override), tmp_path)


def test_eval_submits_through_the_same_launcher(embedded_data, tmp_path):
    import json

    from test_eval import stage_checkpoint

    ckpt = stage_checkpoint(tmp_path / "final.pt")
    run = tmp_path / "eval"
    out = subprocess.run(
        [sys.executable, "-m", "launch.eval", f"checkpoint={ckpt}", f"data.root={embedded_data}",
         "data.frames_per_clip=4", "data.crop_size=32", "data.num_workers=0", "probe.epochs=1", "launcher=slurm",
         "launcher.cpus_per_task=1", "launcher.wait=true", f"hydra.run.dir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "submitted SLURM job" in out.stdout
    report = json.loads((run / "eval.json").read_text())
    assert set(report["labels"]) == {"digit", "direction", "speed"}


def test_extract_array_matches_a_single_process_run(embedded_data, tmp_path):
    """launch.extract launcher=slurm num_shards=2: a job array of 2 tasks writes the bytes one process does."""
    from test_extract import assert_same_outputs, sharding_run, tiny_encoder
    from vjepa.interop import save_native

    save_native(tmp_path / "tiny.pt", tiny_encoder())
    args, env = sharding_run(tmp_path / "tiny.pt", embedded_data)
    out = subprocess.run([sys.executable, *args, f"out={tmp_path / 'slurm'}", "launcher=slurm", "num_shards=2",
                          "launcher.cpus_per_task=1", "launcher.wait=true"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "submitted SLURM job array" in out.stdout and "shard 1/2: 15 videos" in out.stdout
    one = subprocess.run([sys.executable, *args, f"out={tmp_path / 'one'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert_same_outputs(tmp_path / "one", tmp_path / "slurm", 30)
