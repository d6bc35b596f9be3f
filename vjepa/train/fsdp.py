"""Distributed wrapping: DDP (default) or FSDP2 `fully_shard` (perf.fsdp) for models too big to replicate.

FSDP2 shards every transformer block and each network's root (encoder, predictor, and the teacher: a
frozen SALT teacher or an EMA copy, sharded like the student so the EMA update pairs shard with shard).
Parameters become DTensors; what leaves the trainer (checkpoints, final.pt) is gathered back to full
tensors, so files are the same as with DDP. Compute precision stays with the trainer's autocast (bf16 on
CUDA); gradients are averaged over ranks as DDP does. Runs on CUDA (NCCL) and on CPU (gloo).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP


def shard_method(method: torch.nn.Module, reshard_after_forward: bool = True) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for name in ("encoder", "predictor", "teacher", "decoder"):
        net = getattr(method, name, None)
        if not isinstance(net, torch.nn.Module) or not list(net.parameters()):
            continue
        for block in getattr(net, "blocks", []):
            fully_shard(block, reshard_after_forward=reshard_after_forward)
        fully_shard(net, reshard_after_forward=reshard_after_forward)
    return method


def wrap_model(method: torch.nn.Module, info, perf=None) -> torch.nn.Module:
    """What the trainer calls forward/backward on: the method itself (one process), DDP, or the method with
    its networks sharded in place (FSDP2)."""
    if not info.enabled:
        return method
    if perf is not None and perf.fsdp:
        return shard_method(method, perf.fsdp_reshard_after_forward)
    return DDP(method)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextmanager
def no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce / reduce-scatter for a micro-batch (accumulation)."""
    if isinstance(model, DDP):
        with model.no_sync():
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for m in sharded:
            m.set_requires_gradient_sync(True, recurse=False)


def sync_context(model, info, last_micro_batch: bool):
    return nullcontext() if (last_micro_batch or not info.enabled) else no_sync(model)


def full_state_dict(module: torch.nn.Module) -> dict:
    """A module's state with sharded (DTensor) entries gathered to full CPU tensors. A collective when the
    module is sharded: call it on every rank."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in module.state_dict().items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
    return out


def load_full_state_dict(module: torch.nn.Module, state: dict, what: str) -> None:
    """Inverse of full_state_dict: copy full tensors into a (possibly sharded) module, strictly."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from vjepa.interop.keys import check_state_dict

    own = module.state_dict()
    check_state_dict({k: v.shape for k, v in own.items()}, state, what)  # DTensor shapes are the full ones
    with torch.no_grad():
        for k, v in own.items():
            src = state[k]
            if isinstance(v, DTensor):
                src = distribute_tensor(src.to(v.device, v.dtype), v.device_mesh, v.placements)
                v.to_local().copy_(src.to_local())
            else:
                v.copy_(src)


def optimizer_state(model, optimizer) -> dict:
    """Optimiser state to save: full (gathered, FQN-keyed) when sharded, else the plain state_dict."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return {"fsdp_full": get_optimizer_state_dict(model, optimizer,
                                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))}


def load_optimizer_state(model, optimizer, state: dict) -> None:
    if not is_sharded(model):
        if "fsdp_full" in state:
            raise ValueError("this checkpoint's optimiser state was saved with perf.fsdp=true; resume with it on")
        optimizer.load_state_dict(state)
        return
    if "fsdp_full" not in state:
        raise ValueError("this checkpoint's optimiser state was saved without FSDP; resume with perf.fsdp=false")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state["fsdp_full"], options=StateDictOptions(full_state_dict=True))


def scalar(x) -> float:
    """.item() of a tensor that may be a DTensor (clip_grad_norm_ of sharded gradients)."""
    from torch.distributed.tensor import DTensor

    if isinstance(x, DTensor):
        x = x.full_tensor()
    return float(x.item())


def checkpoint_states(model, method, optimizer=None, info=None):
    """(model states, optimiser state or None) to save on the main rank; None on the others. Sharded states
    are gathered first, which is a collective: with FSDP every rank must call this."""
    sharded = is_sharded(model)
    main = info is None or info.is_main
    if not sharded and not main:
        return None
    models = {n: (full_state_dict(m) if sharded else m.state_dict()) for n, m in method.saved_modules().items()}
    opt = optimizer_state(model, optimizer) if optimizer is not None else None
    return (models, opt) if main else None
