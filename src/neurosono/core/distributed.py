"""Training in several processes: this process's place in a ``torchrun`` launch.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and the rendezvous address) in each process it
starts; a plain run has none of them and is rank 0 of 1. The process group is gloo on CPUs
and NCCL where CUDA is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # None: a single process

    @property
    def main(self) -> bool:
        """The process that reports progress and writes the run."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def share(self, batch: int) -> int:
        """Cases per step in each process, so that a step still averages over ``batch``."""
        return max(2, batch // self.world_size)

    def share_threads(self) -> None:
        """This process's share of the machine's cores for torch. ultralytics sets torch to
        every core when it loads a detector; several processes on one machine, each on every
        core, run several times slower than one."""
        if self.world_size > 1:
            from neurosono.core.runtime import cpu_cores

            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, cpu_cores() // local))

    def record(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


def distributed() -> Distributed:
    """This process's place; the first call in a torchrun process starts its process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(0, 1, 0, None)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if dist.get_backend() == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend()
    )


def shared_work(items: list, compute: Callable[[list], list]) -> list:
    """``compute(items)``, one result per item in order, each process computing its share
    (every world-size-th item) and every process receiving all of it."""
    place = distributed()
    if place.world_size == 1:
        return compute(items)
    import torch.distributed as dist

    parts: list = [None] * place.world_size
    dist.all_gather_object(parts, compute(items[place.rank :: place.world_size]))
    results: list = [None] * len(items)
    for rank, part in enumerate(parts):
        results[rank :: place.world_size] = part
    return results


def broadcast_float(value: float, source: int = 0) -> float:
    """``value`` as process ``source`` has it, in every process (identity in a single process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    place = distributed()
    tensor = torch.tensor([value], dtype=torch.float64, device=place.device)
    dist.broadcast(tensor, source)
    return float(tensor.item())


def broadcast_buffers(model: torch.nn.Module, source: int = 0) -> None:
    """Batch-norm statistics as process ``source`` has them, in every process: DDP averages
    gradients, so the weights agree, but each process updates its running statistics with
    its own batches."""
    import torch.distributed as dist

    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, source)


def finish() -> None:
    """Leave the process group (where one was started), as torch asks before exit.

    Every process waits for the others first: with gloo, a process that tears its group down
    while a peer is still in a collective closes the peer's connection, and the peer aborts."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
