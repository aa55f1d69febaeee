"""Data-parallel training under ``torchrun``: one supernet, its batches split across processes.

``torchrun --nproc-per-node=N --no-python mro-search train --study NAME`` starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in their environment;
:func:`from_environment` reads them and joins the process group (NCCL on CUDA, gloo otherwise).
Without them, or with ``WORLD_SIZE=1``, training is the plain single process.

What ``train_supernet`` does with it, so that N ranks train the *same* supernet as one process
with the whole batch, up to float summation order:

- ``[train] batch_size`` is the **global** batch: every rank draws the same shuffled order and the
  same masks (one seed), and takes its contiguous share of each batch (:meth:`shard`); the shares
  differ by at most one sample.
- Gradients are averaged by hand (:meth:`average_gradients`), weighted by each rank's share of
  the batch, in one flat all-reduce, instead of wrapping the model in ``DistributedDataParallel``:
  a step runs ``forward`` several times (one per mask) or not at all (per-sample masks go through
  ``pooled_paths``), and paths left out of a step have no gradient, which DDP handles only with
  ``find_unused_parameters=True`` (a graph walk every step) and a gradient-free forward of the
  prior refinement would confuse. A parameter whose gradient is missing on every rank stays
  without one, so AdamW skips it as the single process does.
- The relation-graph statistics and the rank losses of the prior's masks are averaged over the
  ranks (weighted by share): every rank then makes the same prior update, and the priors stay
  identical without being broadcast.
- Rank 0 alone writes the checkpoint and prints; the others wait for it at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from supernet.errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class Distributed:
    """This process's place among the ranks (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous rows of a batch of ``n`` (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; itself when not distributed)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def weighted_mean(self, tensor: torch.Tensor, weight: float, total: float) -> torch.Tensor:
        """Σ_r weight_r · tensor_r / total: a batch mean from the ranks' share means."""
        if not self.active:
            return tensor
        return self.sum(tensor * (weight / total))

    def average_gradients(self, parameters: list[torch.nn.Parameter], weight: float, total: float) -> None:
        """Each parameter's gradient becomes Σ_r (weight_r / total) · grad_r, over all ranks, in
        one flat all-reduce; one that no rank computed stays ``None`` (as in one process)."""
        if not self.active:
            return
        device = parameters[0].device
        present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
        flat = torch.cat([
            (p.grad * (weight / total)).reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype)
            for p in parameters
        ])
        self.sum(present)
        self.sum(flat)
        at = 0
        for p, anywhere in zip(parameters, present.tolist()):
            n = p.numel()
            p.grad = flat[at : at + n].view_as(p).clone() if anywhere else None
            at += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights on every rank (the same seed already gives the same ones; this makes
        it certain)."""
        if self.active:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device_setting: str = "auto") -> Distributed:
    """Join ``torchrun``'s process group if this process is one of several ranks.

    NCCL when the ranks train on CUDA (``[train] device`` auto or cuda, and a GPU here), gloo
    otherwise. The rendezvous (``MASTER_ADDR``/``MASTER_PORT`` or ``--rdzv-endpoint``) is
    torchrun's: ``init_process_group`` reads it from the environment."""
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return Distributed()
    try:
        world_size, rank = int(world), int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"torchrun's environment is malformed (RANK, WORLD_SIZE, LOCAL_RANK must be integers): {exc}") from exc
    if world_size <= 1:
        return Distributed()
    if not dist.is_available():
        raise ConfigError("this torch was built without torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available() and device_setting in ("auto", "cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
