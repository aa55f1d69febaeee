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

Starting fails fast, in one line, rather than hanging: the environment is checked before any
collective call (every problem at once: ``RANK`` in ``[0, WORLD_SIZE)``, ``LOCAL_RANK``,
``MASTER_ADDR`` set, ``MASTER_PORT`` a port), and the rendezvous waits at most
``$MRO_DIST_TIMEOUT`` seconds (default ``RENDEZVOUS_TIMEOUT``) for every rank to arrive, then names
the ranks that did not. Each rank marks its arrival in the rendezvous store (the agent's under
``torchrun``, rank 0's otherwise: ``torch.distributed``'s env:// rules), so the missing ones are
known; the process group is then built on that store.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from supernet.errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "MRO_DIST_TIMEOUT"  # seconds the rendezvous waits for every rank
RENDEZVOUS_TIMEOUT = 90.0  # long enough for ranks started by hand on two machines, short enough to notice


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
    otherwise. The rendezvous is torchrun's (``MASTER_ADDR``/``MASTER_PORT``, or the agent's store
    with ``--rdzv-endpoint``); a bad environment or a rank that never arrives is a ``ConfigError``
    (see the module's docstring)."""
    if os.environ.get("WORLD_SIZE") is None:
        return Distributed()
    rank, world_size, local_rank, addr, port = check_environment(os.environ)
    if world_size <= 1:
        return Distributed()
    if not dist.is_available():
        raise ConfigError("this torch was built without torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available() and device_setting in ("auto", "cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        store = rendezvous(rank, world_size, addr, port, rendezvous_timeout())
        dist.init_process_group(backend="nccl" if cuda else "gloo", store=dist.PrefixStore("default_pg", store),
                                rank=rank, world_size=world_size)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def check_environment(env) -> tuple[int, int, int, str, int]:
    """``(rank, world_size, local_rank, master_addr, master_port)`` from torchrun's variables;
    every problem at once in one ``ConfigError`` line."""
    problems: list[str] = []

    def integer(name: str, default: str | None = None) -> int | None:
        text = env.get(name, default)
        if text is None:
            problems.append(f"{name} is not set")
            return None
        try:
            return int(text)
        except ValueError:
            problems.append(f"{name}={text[:40]!r} is not an integer")
            return None

    world_size, rank = integer("WORLD_SIZE"), integer("RANK")
    local_rank = integer("LOCAL_RANK", None if rank is None else str(rank))
    if world_size is not None and world_size < 1:
        problems.append(f"WORLD_SIZE={world_size} must be at least 1")
    if rank is not None and world_size is not None and world_size >= 1 and not 0 <= rank < world_size:
        problems.append(f"RANK={rank} must be from 0 to WORLD_SIZE-1={world_size - 1}")
    if local_rank is not None and local_rank < 0:
        problems.append(f"LOCAL_RANK={local_rank} must be at least 0")
    addr, port = env.get("MASTER_ADDR", ""), None
    several = world_size is not None and world_size > 1
    if several and not addr.strip():
        problems.append("MASTER_ADDR is not set")
    if several:
        port = integer("MASTER_PORT")
        if port is not None and not 1 <= port <= 65535:
            problems.append(f"MASTER_PORT={port} must be a port from 1 to 65535")
    if problems:
        raise ConfigError(f"torchrun's environment is inconsistent: {'; '.join(problems)}; start the ranks with torchrun "
                          "(torchrun --nproc-per-node=N --no-python mro-search train ...), which sets them")
    return rank, world_size, local_rank, addr, port or 0


def rendezvous_timeout() -> float:
    """``$MRO_DIST_TIMEOUT`` seconds, else ``RENDEZVOUS_TIMEOUT``."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return RENDEZVOUS_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{TIMEOUT_ENV}={text[:40]!r} must be a number of seconds above 0")
    return value


def _await_listener(addr: str, port: int, deadline: float) -> bool:
    """Whether something listens on ``addr:port`` before ``deadline`` (tried every 0.2 s)."""
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection((addr, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def rendezvous(rank: int, world_size: int, addr: str, port: int, timeout: float) -> dist.Store:
    """The rendezvous store, once every rank has arrived in it; a ``ConfigError`` naming the ranks
    missing after ``timeout`` seconds (rank 0, when its store never answers)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"  # torchrun hosts the store
    where = f"{addr}:{port}"
    deadline = time.monotonic() + timeout
    host = "torchrun's rendezvous store" if agent else "rank 0's rendezvous store (rank 0 did not start?)"
    silent = f"rank {rank} of {world_size}: {host} at {where} did not answer within {timeout:g} s"
    if (agent or rank != 0) and not _await_listener(addr, port, deadline):  # before c10d's client, which logs every try
        raise ConfigError(f"{silent}; start every rank (torchrun starts them all) or raise {TIMEOUT_ENV}")
    try:
        store = dist.TCPStore(addr, port, world_size, is_master=rank == 0 and not agent, timeout=timedelta(seconds=timeout),
                              wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:  # DistStoreError and DistNetworkError are RuntimeErrors
        reason = " ".join(str(exc).split())[:200]
        if rank == 0 and not agent:
            raise ConfigError(f"rank 0 of {world_size} cannot host the rendezvous store at {where} ({reason}); "
                              "set MASTER_ADDR to this machine and MASTER_PORT to a free port") from exc
        raise ConfigError(f"{silent} ({reason}); start every rank (torchrun starts them all) or raise {TIMEOUT_ENV}") from exc
    arrivals = dist.PrefixStore(f"mro/arrived/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    arrivals.set(str(rank), "1")
    while True:
        missing = [r for r in range(world_size) if not arrivals.check([str(r)])]
        if not missing:
            store.set_timeout(default_pg_timeout)  # from here on, collectives' own patience
            return store
        if time.monotonic() >= deadline:
            shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ConfigError(f"rank {rank} of {world_size}: rank{'s' if len(missing) > 1 else ''} {shown} did not join the rendezvous "
                              f"at {where} within {timeout:g} s; start every rank (torchrun starts them all) or raise {TIMEOUT_ENV}")
        time.sleep(0.05)
