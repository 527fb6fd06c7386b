"""Process group set-up from torchrun's or SLURM's environment, for train and eval alike; rank queries."""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def init_distributed(device_kind: str) -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; under `srun` SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID stand in (MASTER_ADDR and MASTER_PORT must then be exported by the job script)."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    if world == 1:
        return Dist()
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


# what gloo says when the process at the other end of a collective is gone (killed, crashed, out of memory)
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting")


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank is gone: gloo raises a RuntimeError naming the closed
    connection (a DistNetworkError in some versions); NCCL's watchdog aborts the process instead."""
    if not dist.is_initialized():
        return False
    return isinstance(err, dist.DistNetworkError) or (
        isinstance(err, RuntimeError) and any(s in str(err) for s in LOST_PEER)
    )


def mean_over_ranks(values: dict) -> dict:
    """Each scalar averaged over all ranks (one all_reduce), so a logged loss is the whole global
    batch's and does not depend on the world size; unchanged in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()) for v in values.values()])
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    stacked = stacked.to(backend_device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / dist.get_world_size()).tolist()))


@contextlib.contextmanager
def process_group(device_kind: str):
    """init_distributed for the length of a command; the group is destroyed after when this call made it."""
    created = not dist.is_initialized()
    ranks = init_distributed(device_kind)
    try:
        yield ranks
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
