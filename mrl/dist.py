"""Data-parallel helpers: torchrun init, rank helpers, the one all-gather with gradient.

The same code path serves ``python train.py`` (one process: every helper is the identity or a
no-op) and ``torchrun --nproc_per_node=N train.py`` (NCCL on CUDA, gloo on CPU).

Contrastive losses across ranks (see `mrl.losses.mnrl_loss`, argument ``local``): every rank
encodes its B rows, gathers all ranks' columns **with gradient** (`gather_with_grad`), scores its
own anchors against the G = world * B gathered candidates with targets offset by ``rank * B``
(`rank_slice`), and backpropagates its local mean. The all-gather's backward sends each rank the
sum of the gradients that all ranks' losses put on its embeddings; DDP then averages parameter
gradients over ranks, which makes the update that of one process on the global batch. The loss
is therefore not scaled by the world size (the full argument is in `mrl.losses.mnrl_loss`).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mrl.runtime import pick_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device_name: str = "auto", timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else stay alone.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. On CUDA each process
    takes GPU ``LOCAL_RANK`` (and makes it the current device) and talks NCCL; on the CPU, gloo.
    One process (no torchrun, or WORLD_SIZE=1) initialises nothing and gets rank 0 of 1 on
    ``pick_device(device_name)``. ``timeout`` bounds the start-up (reaching the master and
    waiting for every process) and every collective (torch's default otherwise). A start-up
    that takes more than a few seconds says what it waits for; one that fails or times out
    raises `DistStartError` with one line naming the master, the rank and the timeout.
    """
    world_size = _env_int("WORLD_SIZE", "1")
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=pick_device(device_name))
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < world_size:
        raise DistStartError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    device = pick_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            visible = torch.cuda.device_count()
            raise DistStartError(f"LOCAL_RANK={local_rank} but only {visible} GPUs are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and every bare .cuda() use this GPU
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    master = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    limit = f"{timeout.total_seconds():g} s" if timeout is not None else "torch's default timeout"
    waiting = (
        f"rank {rank}/{world_size}: "
        + ("hosting" if rank == 0 else "connecting to")
        + f" the process group at {master} (MASTER_ADDR:MASTER_PORT); waiting for all {world_size} "
        f"processes to join, for at most {limit} (--dist-timeout)"
    )
    kwargs = {"timeout": timeout} if timeout is not None else {}
    # torch's C++ side logs every failed connection attempt with a stack trace on fd 2: hold that
    # output back while joining; it is replayed if the start succeeds, dropped for our one line.
    sys.stderr.flush()
    held = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
    try:
        terminal = os.dup(2)
        os.dup2(held.fileno(), 2)
    except OSError:  # no fd 2 to redirect (a detached process): nothing to hold back either
        terminal = None

    def say_what_we_wait_for() -> None:
        if terminal is None:
            print(waiting, file=sys.stderr, flush=True)
        else:
            os.write(terminal, (waiting + "\n").encode())

    # Nothing is printed when the start is quick; a slow one says what it is waiting for.
    notice = threading.Timer(STARTUP_NOTICE_S, say_what_we_wait_for)
    notice.daemon = True
    notice.start()
    failure = None
    try:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    except (RuntimeError, ValueError, OSError) as error:  # DistNetworkError, DistStoreError, ...
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        failure = (
            f"rank {rank}/{world_size}: could not start the process group at {master} within {limit} "
            f"(--dist-timeout): {type(error).__name__}: {reason}"
        )
    finally:
        notice.cancel()
        notice.join()
        if terminal is not None:
            os.dup2(terminal, 2)
            os.close(terminal)
            if failure is None:
                held.seek(0)
                os.write(2, held.read())
        held.close()
    if failure:
        raise DistStartError(failure)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


# Seconds of start-up after which a waiting process says what it waits for.
STARTUP_NOTICE_S = 10.0


class DistStartError(RuntimeError):
    """The process group could not be joined (bad torchrun variables, unreachable master, a
    process that never came); the message is one line."""


def _env_int(name: str, default: str | None = None) -> int:
    value = os.environ.get(name, default)
    if value is None:
        raise DistStartError(f"{name} is not set (WORLD_SIZE > 1: start with torchrun, which sets it)")
    try:
        return int(value)
    except ValueError:
        raise DistStartError(f"{name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: Tensor, dim: int = 0) -> Tensor:
    """All ranks' ``x`` concatenated along ``dim`` in rank order, differentiable.

    Every rank must pass the same shape. The backward of
    `torch.distributed.nn.functional.all_gather` sums over ranks the gradients flowing into each
    rank's slice and returns that sum to the rank that owns the slice (its own loss's share
    included). Identity in one process. E.g. columns (C, B, D) -> (C, world * B, D) with dim=-2.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=dim)


@torch.no_grad()
def gather_nograd(x: Tensor, dim: int = 0) -> Tensor:
    """All ranks' ``x`` concatenated along ``dim`` in rank order, without gradient (e.g. labels).
    Every rank must pass the same shape. Identity in one process."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run dir name); must be picklable. Identity alone."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_slice(batch_size: int, rank: int) -> slice:
    """The rows of ``rank`` in a gathered batch of equal per-rank batches: [rank*B, (rank+1)*B)."""
    return slice(rank * batch_size, (rank + 1) * batch_size)
