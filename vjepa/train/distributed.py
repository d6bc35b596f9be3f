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
    device: torch.device = torch.device("cpu")  # the training device: where the collectives' tensors live
    in_group: bool = False  # this process is in a torch.distributed process group (every rank runs collectives)
    owns_group: bool = False  # init_distributed made the group, so close_distributed tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.in_group


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n) not in (None, ""):
            return int(os.environ[n])
    return default


def backend_for(device: torch.device) -> str:
    """The process group's backend per device type. On GPUs NCCL serves CUDA tensors and gloo CPU ones:
    NCCL alone takes CUDA tensors only ("No backend type associated with device type cpu"), and some
    collectives are on the CPU whatever the training device (a barrier without a device, object collectives)."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Pick this process's device and join the process group if the environment describes one (torchrun's
    RANK/WORLD_SIZE, or SLURM's SLURM_PROCID/SLURM_NTASKS with MASTER_ADDR/PORT set by the launcher), or the
    group this process is already in (made by its caller, of any size)."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif world <= 1:
        return DistInfo(device=pick_device(device_name))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's and the trainer's current device: one GPU per rank
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError(f"world size {world} but MASTER_ADDR / MASTER_PORT are not set; launch with "
                               "torchrun or the SLURM launcher")
        dist.init_process_group(backend_for(device), rank=rank, world_size=world)
        return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device, in_group=True,
                        owns_group=True)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device, in_group=True)


def close_distributed(info: DistInfo) -> None:
    """Tear down the process group init_distributed made. Without this a rank that leaves while another is
    still busy (rank 0 writing a checkpoint or probing) can abort in the interpreter's teardown of gloo's
    threads ("terminate called without an active exception", SIGABRT), and torchrun fails the whole run."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean over ranks of `x` (a copy, on the training device)."""
    if info.enabled:
        x = x.detach().to(info.device, copy=True)
        dist.all_reduce(x)
        x /= info.world_size
    return x


def all_ranks_any(flag: bool, info: DistInfo) -> bool:
    """True when `flag` is true on any rank (every rank must call this)."""
    if not info.enabled:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in one process)."""
    if info is not None and info.enabled:
        dist.barrier()


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but CUDA is not available on this machine")
    if name == "cuda":  # one GPU per local rank, not all of them on GPU 0
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)
