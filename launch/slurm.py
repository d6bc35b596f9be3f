"""SLURM through submitit: submission (with a code snapshot), the job callable, preemption and requeue.

A job runs the same `run_experiment` as a local run. On USR2 (preemption, or `signal_delay_s` before
the time limit) every rank finishes its step, rank 0 writes the checkpoint, and the job requeues itself
through submitit; the next start resumes from the run directory exactly.
"""
from __future__ import annotations

import datetime
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import submitit
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT_DIRS = ("vjepa", "data", "launch", "configs")


class SubmissionError(RuntimeError):
    pass


def snapshot_code(run_dir: Path) -> Path:
    """Copy the packages into the run dir, with the git commit and diff they came from, so a requeued
    job runs the code it was submitted with even if the checkout changed since."""
    code = run_dir / "code"
    if code.exists():  # a resubmission into the same run dir keeps the first snapshot
        return code
    for name in SNAPSHOT_DIRS:
        shutil.copytree(REPO / name, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git = []
    for args in (["rev-parse", "HEAD"], ["status", "--porcelain"], ["diff", "HEAD"]):
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        git.append(f"$ git {' '.join(args)}\n{r.stdout if r.returncode == 0 else r.stderr}")
    (code / "GIT.txt").write_text("\n".join(git))
    return code


def tasks_per_node(lc) -> int:
    return lc.tasks_per_node or max(lc.gpus_per_node, 1)


def preflight(lc) -> None:
    """Ask SLURM (`sbatch --test-only`) whether it could ever run the job: an unknown partition or
    impossible resources fail now with the scheduler's words, instead of a job pending forever."""
    flags = [f"--nodes={lc.nodes}", f"--ntasks-per-node={tasks_per_node(lc)}", f"--cpus-per-task={lc.cpus_per_task}",
             f"--time={lc.timeout_min}"]
    flags += [f"--{k}={getattr(lc, k)}" for k in ("partition", "account", "qos", "constraint") if getattr(lc, k)]
    if lc.gpus_per_node:
        flags.append(f"--gpus-per-node={lc.gpus_per_node}")
    if lc.mem_gb:
        flags.append(f"--mem={lc.mem_gb}G")
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in lc.additional.items()]
    try:
        r = subprocess.run(["sbatch", "--test-only", *flags, "--wrap=true"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SubmissionError("sbatch not found: launcher=slurm needs the SLURM client tools on PATH") from None
    if r.returncode != 0:
        reason = " ".join((r.stderr + r.stdout).split())
        raise SubmissionError(f"SLURM refused the job ({' '.join(flags)}): {reason}")


def executor_for(cfg, run_dir: Path, code: Path | None) -> submitit.AutoExecutor:
    lc = cfg.launcher
    tasks = tasks_per_node(lc)
    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster="slurm",
                                     slurm_max_num_timeout=lc.max_requeues)
    params = dict(name=lc.job_name, nodes=lc.nodes, tasks_per_node=tasks, cpus_per_task=lc.cpus_per_task,
                  timeout_min=lc.timeout_min, slurm_signal_delay_s=lc.signal_delay_s,
                  slurm_additional_parameters=dict(lc.additional))
    if lc.gpus_per_node:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.mem_gb:
        params["mem_gb"] = lc.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(lc, key):
            params[f"slurm_{key}"] = getattr(lc, key)
    if code is not None:
        # `python -m` (how submitit starts a task) puts the working directory first on sys.path, ahead of
        # PYTHONPATH: submitted from the checkout, the job imported the checkout, not the snapshot.
        # PYTHONSAFEPATH (Python 3.11+) leaves the working directory out.
        params["slurm_setup"] = [f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]
    executor.update_parameters(**params)
    return executor


def prepared_executor(cfg, run_dir: Path) -> submitit.AutoExecutor:
    """What every submission does first: ask SLURM (preflight), save config.yaml and the code snapshot in
    run_dir, build the executor."""
    preflight(cfg.launcher)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    code = snapshot_code(run_dir) if cfg.launcher.snapshot_code else None
    return executor_for(cfg, run_dir, code)


def submit(cfg, run_dir: str | Path, kind: str = "train"):
    """Submit a training experiment (kind "train") or a probe evaluation ("eval"); returns the submitit
    job. Fails here, with sbatch's reason, if SLURM refuses."""
    run_dir = Path(run_dir).resolve()
    executor = prepared_executor(cfg, run_dir)
    job_cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        job = executor.submit(TrainJob(job_cfg, str(run_dir), kind=kind))
    except Exception as e:  # submitit wraps sbatch's stderr; say plainly that SLURM said no
        raise SubmissionError(f"SLURM refused the job: {e}") from None
    print(f"submitted SLURM job {job.job_id}; run directory: {run_dir}", flush=True)
    return job


def launch(cfg, run_dir: Path, kind: str, run_local, describe) -> None:
    """The one dispatch of the entry points: launcher=local runs `run_local(cfg, run_dir)` here;
    launcher=slurm submits a `kind` job (and, with launcher.wait, prints `describe(result)`)."""
    if cfg.launcher.name == "slurm":
        job = submit(cfg, run_dir, kind=kind)
        if cfg.launcher.wait:
            print(describe(wait(job)))
        return
    if cfg.launcher.name != "local":
        raise ValueError(f"config key launcher.name: {cfg.launcher.name!r} is not local or slurm")
    run_local(cfg, run_dir)


def wait(job) -> dict:
    """Block until the job ends; rank 0's summary (every task returns one)."""
    return job.results()[0]


class TrainJob(submitit.helpers.Checkpointable):
    """The callable a SLURM task runs; `checkpoint()` is what submitit requeues on USR2."""

    def __init__(self, cfg: dict, run_dir: str, attempt: int = 0, kind: str = "train"):
        self.cfg, self.run_dir, self.attempt, self.kind = cfg, run_dir, attempt, kind

    def __call__(self) -> dict:
        if self.kind == "eval":  # no training state: a requeued evaluation simply runs again
            from vjepa.eval.run import EvalConfig, evaluate

            return evaluate(OmegaConf.merge(OmegaConf.structured(EvalConfig), self.cfg), Path(self.run_dir))
        from vjepa.train import preemption
        from vjepa.train.config import TrainConfig
        from vjepa.train.experiment import run_experiment

        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        job_env = submitit.JobEnvironment()
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        preemption.install(signal.SIGUSR2)
        if dist_env.rank == 0:
            with open(Path(self.run_dir) / "job_attempts.txt", "a") as f:
                f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} job {job_env.job_id} "
                        f"attempt {self.attempt} world {dist_env.world_size} host {job_env.hostname} code {REPO}\n")
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), self.cfg)
        summary = run_experiment(cfg, self.run_dir)
        if summary.get("preempted"):
            if dist_env.rank == 0 and callable(requeue):
                requeue(signal.SIGUSR2, None)  # calls self.checkpoint(), requeues, exits
            sys.exit(0)  # other ranks: the requeue restarts the whole job
        return summary

    def checkpoint(self, *args, **kwargs):
        # the state itself is already on disk (the trainer checkpointed at the step boundary)
        if self.attempt >= self.cfg["launcher"]["max_requeues"]:
            print(f"not requeuing: {self.attempt} requeues reached launcher.max_requeues", flush=True)
            return None
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg, self.run_dir, self.attempt + 1, self.kind))
