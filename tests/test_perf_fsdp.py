"""FSDP2 (`perf.fsdp=true`) trains exactly like DDP: 2 CPU processes with gloo, the real trainer end to end
(sharded EMA teacher, gradient accumulation through set_requires_gradient_sync, gathered checkpoints)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from test_train import SMALL, _free_port, assert_same_training, final_state


def torchrun(args, run_dir, env):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={_free_port()}", "-m", "launch.train", *args, f"run_dir={run_dir}",
                    f"hydra.run.dir={run_dir}"], check=True, cwd=REPO, env=env, timeout=600)


@pytest.mark.slow
def test_fsdp2_matches_ddp_on_two_gloo_processes(embedded_data, tmp_path):
    common = SMALL + [f"data.root={embedded_data}", "experiment=vjepa", "experiment.total_steps=3", "mask=tube",
                      "data.batch_size=4", "optim.accum_steps=2", "keep_every=1",
                      "optim.clip_grad=0.02"]  # the reference clipping: every step is clipped
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun(common, tmp_path / "ddp", env)
    torchrun(common + ["perf.fsdp=true"], tmp_path / "fsdp", env)
    # step by step: logged losses, pre-clipping gradient norms, the gradients into AdamW; then the weights
    assert_same_training(tmp_path / "fsdp", tmp_path / "ddp")
    a, b = final_state(tmp_path / "ddp", "student"), final_state(tmp_path / "fsdp", "student")
    assert a.keys() == b.keys() == {"encoder", "predictor", "target_encoder"}
    for name in a:
        for key in a[name]:
            assert type(b[name][key]) is torch.Tensor  # gathered: plain full tensors in the file, not DTensors
    # the FSDP checkpoint's optimiser state was gathered by parameter name
    latest = torch.load(tmp_path / "fsdp" / "student" / "checkpoints" / "latest.pt", weights_only=False)
    assert "fsdp_full" in latest["optimizer"]
    # and an interrupted FSDP run resumes from it (shards reloaded from full tensors) to the same weights
    torchrun(common + ["perf.fsdp=true", "stop_at_step=1"], tmp_path / "resumed", env)
    torchrun(common + ["perf.fsdp=true"], tmp_path / "resumed", env)
    c = final_state(tmp_path / "resumed", "student")
    for name in b:
        for key in b[name]:
            torch.testing.assert_close(c[name][key], b[name][key], atol=1e-6, rtol=1e-5, msg=f"{name}.{key}")
