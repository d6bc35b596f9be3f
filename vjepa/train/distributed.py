"""torch.distributed set-up from torchrun, SLURM or submitit environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n) not in (None, ""):
            return int(os.environ[n])
    return default


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if the environment describes one (torchrun's RANK/WORLD_SIZE, or SLURM's
    SLURM_PROCID/SLURM_NTASKS with MASTER_ADDR/PORT set by the launcher); NCCL on GPU, gloo on CPU."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError(f"world size {world} but MASTER_ADDR / MASTER_PORT are not set; launch with "
                               "torchrun or the SLURM launcher")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= info.world_size
    return x


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but CUDA is not available on this machine")
    return torch.device(name)
