"""Process-group helpers that also work with no process group at all.

Launch with ``torchrun`` (it sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR); a plain ``python script.py``
runs as a single process on the CPU or one GPU. Every helper falls back to the single-process answer when
``torch.distributed`` is not initialised, so the same code runs on a laptop and on a cluster.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from patchmix.config import ConfigError

__all__ = ["DistInfo", "init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process",
           "parameters_in_sync", "wrap_ddp", "pick_device", "collective_device", "batch_per_process",
           "barrier", "concat_all_gather", "all_reduce_mean", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use --device cpu.")
        index = local_rank if requested == "cuda" else torch.device(requested).index
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(requested)


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment, or run as one process.

    The backend is NCCL for CUDA and gloo for the CPU. ``timeout_minutes`` bounds how long a collective waits
    for a rank that died, so a broken job fails instead of hanging forever.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, pick_device(device, 0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order, without gradient.

    Used for the contrastive keys: they carry no gradient, so a plain ``all_gather_into_tensor`` suffices.
    """
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    output = tensor.new_empty((world_size * tensor.shape[0],) + tuple(tensor.shape[1:]))
    dist.all_gather_into_tensor(output, tensor)
    return output


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (for logging)."""
    if get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / get_world_size()


def batch_per_process(batch_size: int, world_size: int) -> int:
    """The share of a GLOBAL batch each process gets (a one-line error when it does not divide evenly)."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} (global) is not divisible by the {world_size} processes; use "
                          f"a multiple of {world_size}.")
    return batch_size // world_size


def collective_device() -> torch.device:
    """Where small tensors for a collective must live: the GPU with NCCL, the CPU with gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@torch.no_grad()
def parameters_in_sync(module: torch.nn.Module) -> bool:
    """True when every process holds bit-identical parameters (a cheap per-tensor checksum is compared).

    DDP keeps replicas identical by construction; this catches what it cannot (a rank that skipped a step,
    a non-deterministic update applied differently), once per epoch.
    """
    if get_world_size() == 1:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in module.parameters()])
    gathered = [torch.zeros_like(checksum) for _ in range(get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Return ``(model, trained)``: the model with SyncBatchNorm (CUDA) and the module to call for training
    (DistributedDataParallel when several processes run, else the model itself).

    BatchNorm statistics are synchronised across GPUs as in the official code. torch's SyncBatchNorm has no
    CPU implementation, so multi-process CPU runs (gloo; for tests and debugging) keep per-process statistics.
    Buffers are not re-broadcast every forward (official ``broadcast_buffers=False``).
    """
    if get_world_size() == 1:
        return model, model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif is_main_process():
        print("note: SyncBatchNorm needs CUDA; the heads' BatchNorm uses per-process statistics on the CPU.")
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    trained = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **buffers)
    return model, trained
