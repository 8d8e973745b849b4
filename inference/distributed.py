"""Training on several processes with ``torch.distributed``: the process group, seeds per
rank, and the gradient exchange that makes a step equal the single-process step.

A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address) is detected by :func:`process_group`, which joins the default process
group (gloo on CPUs, NCCL on GPUs, one GPU per local rank) unless the caller already has.
:func:`ppvae.inference.train.fit` then

- broadcasts the parameters (and buffers) from rank 0, so every rank starts alike;
- splits each global batch of the loader's permutation by rank
  (:class:`~ppvae.inference.batches.BatchLoader` with ``rank``/``world_size``);
- samples on each rank from a stream of its own (:func:`~ppvae.inference.rng.rank_seed`);
- exchanges gradients after each backward pass (:meth:`ProcessGroup.sync_gradients`).

Why not ``DistributedDataParallel``: DDP's reducer is armed by a call of the wrapped
module's ``forward`` and fires from hooks as gradients arrive. ppvae trains through
``elbo.differentiable_loss(model, guide, ...)``, which calls two Pyro programs (and, for
PyroModules, reads parameters through Pyro's own machinery) rather than one ``forward``;
DDP would need a wrapper module whose forward is the loss, and then still reports sites
that a batch does not touch (a VampPrior's pseudo-inputs, unused mixture parts) as unused
only with ``find_unused_parameters=True``, filling them with zeros, which moves Adam's
moments where a single process would leave the parameter alone. One explicit all-reduce
of the flattened gradients after ``backward()`` gives the same average DDP computes, knows
which parameters no rank touched (they keep ``grad=None``, as in one process), and weights
each rank by its batch size so that uneven final batches and sites outside the data plate
come out exactly as in one process. What it gives up is DDP's overlap of communication
with the backward pass, which matters for large networks, not for the networks here.

References
----------
Li et al. (2020), "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", VLDB 13(12) (DDP's gradient averaging and its unused-parameter handling).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "close_process_group",
    "DistributedError",
    "ProcessGroup",
    "process_group",
    "is_main_process",
    "launched_by_torchrun",
    "collective_errors",
]

# Seconds a collective waits for the other ranks before it fails (PPVAE_DIST_TIMEOUT
# overrides): long enough for a slow validation pass on one rank, short enough that a
# silent peer cannot hold the group for torch's default of 10 to 30 minutes.
DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """A collective failed: another rank died or stopped answering."""


def close_process_group(*, wait: bool = True) -> None:
    """End the default process group, if one is up (the end of a command under torchrun).

    With ``wait`` every rank first waits for the others, so that none exits while another
    still talks to it; then each releases its communicators. A process that exits with the
    group still up can abort in the communicators' threads at interpreter shutdown
    ("terminate called without an active exception"), which the launcher reports as a
    dead rank. Pass ``wait=False`` when another rank may be gone.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        with contextlib.suppress(RuntimeError, DistributedError):
            dist.barrier()
    dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """Whether this process is a rank of a ``torchrun`` launch (its environment says so)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 of the group (or of the launch, before the group exists), or a lone process.

    Only the main process writes files and prints.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the default process group.

    Attributes
    ----------
    rank, world_size, local_rank
        As ``torchrun`` numbers them (``local_rank`` picks the GPU on a node).
    comm_device
        Where tensors must be for the backend's collectives: the rank's GPU for NCCL,
        the CPU for gloo.
    """

    rank: int
    world_size: int
    local_rank: int
    comm_device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and history."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """Sum ``t`` over the ranks (on the backend's device), as a new tensor on t's device."""
        buf = t.detach().to(self.comm_device).clone()
        with self._failure(what):
            dist.all_reduce(buf)
        return buf.to(t.device)

    def broadcast_state(self, module: Any) -> None:
        """Give every rank rank 0's parameters and buffers (in place)."""
        if not hasattr(module, "state_dict"):
            raise TypeError("distributed training needs a model with state_dict()")
        with torch.no_grad(), self._failure("the initial broadcast of the parameters"):
            for t in module.state_dict().values():
                if not isinstance(t, torch.Tensor):
                    continue
                buf = t.to(self.comm_device)
                dist.broadcast(buf, 0)
                if buf is not t:
                    t.copy_(buf)

    def average_buffers(self, module: Any) -> None:
        """Average floating-point buffers that training changes (running statistics, EMA
        codebooks) over the ranks, so that checkpoints and the next epoch agree."""
        if not hasattr(module, "buffers"):
            return
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    b.copy_(self.all_reduce(b, "the buffer average") / self.world_size)

    def barrier(self, what: str) -> None:
        """Wait until every rank gets here."""
        with self._failure(what):
            dist.barrier()

    def shared_seed(self, seed: int | None) -> int | None:
        """The run's seed, the same on every rank: rank 0's draw when ``seed`` is None."""
        if seed is not None:
            return seed
        drawn = torch.randint(2**32, (1,), dtype=torch.int64)
        with self._failure("the seed broadcast"):
            buf = drawn.to(self.comm_device)
            dist.broadcast(buf, 0)
        return int(buf.item())

    def sync_gradients(self, params: Sequence[torch.Tensor], loss: float, weight: int) -> float:
        """Replace each rank's gradients by the batch-size-weighted average; the global loss.

        Rank r's loss on its b_r datapoints estimates the full-set loss, with the data
        plate scaled by N / b_r; Σ_r (b_r / B) ∇loss_r is then the gradient of the
        single-process loss on the global batch of B = Σ_r b_r datapoints, including
        terms outside the data plate, which every rank's loss holds once. A parameter
        without a gradient on every rank keeps ``grad=None``. A non-finite loss on any
        rank makes the returned global loss non-finite, so every rank skips the update.
        """
        finite = math.isfinite(loss)
        w = float(weight) if finite else 0.0
        grads = [p.grad if finite and w > 0 else None for p in params]
        ref = params[0]
        # One all-reduce per step: the weighted gradients, then which parameters have a
        # gradient, the weighted loss and the weight (exact in float32 up to 2**24).
        meta = [float(g is not None) for g in grads] + [w * loss if finite else loss, w]
        flat = torch.cat(
            [
                (g.reshape(-1) * w) if g is not None else ref.new_zeros(p.numel())
                for p, g in zip(params, grads, strict=True)
            ]
            + [torch.tensor(meta, dtype=ref.dtype, device=ref.device)]
        )
        flat = self.all_reduce(flat, "the gradient exchange")
        tail = flat[-len(meta) :].tolist()
        total_loss, total_weight, used = tail[-2], tail[-1], tail[:-2]
        if not math.isfinite(total_loss) or total_weight == 0:
            for p in params:
                p.grad = None
            return total_loss if not math.isfinite(total_loss) else math.nan
        flat = flat[: -len(meta)] / total_weight
        for p, part, u in zip(params, _split(flat, params), used, strict=True):
            p.grad = part.view_as(p) if u > 0 else None
        return total_loss / total_weight

    def gradient_sync(self, weight: int) -> Callable[[float, Sequence[torch.Tensor]], float]:
        """:meth:`sync_gradients` for a batch of ``weight`` datapoints, as ``train_step``'s
        ``sync`` argument."""
        return lambda loss, params: self.sync_gradients(params, loss, weight)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        t = self.all_reduce(torch.tensor(values, dtype=torch.float64), "a sum over ranks")
        return [float(v) for v in t]

    def _failure(self, what: str) -> contextlib.AbstractContextManager[None]:
        return collective_errors(self.rank, what)


@contextlib.contextmanager
def collective_errors(rank: int, what: str) -> Iterator[None]:
    """Turn a failed collective into :class:`DistributedError` with one clear sentence."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:
        # The backend's own message (a socket error, a timeout) stays in the chained
        # exception; the user needs to know which step failed and what is left.
        raise DistributedError(
            f"rank {rank} lost the process group during {what}: another rank died or did "
            f"not answer within PPVAE_DIST_TIMEOUT ({_timeout().total_seconds():g} s); the "
            "last checkpoint written is intact: continue with --resume (resume=True)"
        ) from err


def _split(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    start = 0
    for p in params:
        yield flat[start : start + p.numel()]
        start += p.numel()


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("PPVAE_DIST_TIMEOUT", DEFAULT_TIMEOUT)))


def process_group(
    distributed: bool | None, device: str | torch.device = "cpu"
) -> ProcessGroup | None:
    """The process group to train or evaluate in, joined now if need be; None for one process.

    ``distributed=None`` detects a ``torchrun`` launch (``RANK``, ``WORLD_SIZE`` in the
    environment) or an already initialised default group; ``True`` requires one;
    ``False`` ignores both. A group of one process is treated as no group, so that a
    one-process launch computes exactly what a plain call does. Joining uses gloo for a
    CPU ``device`` and NCCL for CUDA (after selecting the GPU ``LOCAL_RANK``); collectives
    time out after ``PPVAE_DIST_TIMEOUT`` seconds (default 300).
    """
    if distributed is False:
        return None
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and not launched_by_torchrun():
        if distributed:
            raise ValueError(
                "distributed=True needs a torchrun launch (RANK and WORLD_SIZE unset): run "
                "torchrun --nproc-per-node N your_script.py, or pass distributed=None"
            )
        return None
    cuda = torch.device(device).type == "cuda"
    # A group the caller set up without torchrun has no LOCAL_RANK: its GPU is the current one.
    default_local = torch.cuda.current_device() if cuda and torch.cuda.is_available() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", default_local))
    if not initialised:
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
        # The group ppvae opened is closed at exit (without waiting: a rank may be gone),
        # so that no process aborts in the communicators' threads at shutdown.
        atexit.register(close_process_group, wait=False)
    if dist.get_world_size() == 1:
        return None
    nccl = dist.get_backend() == "nccl"
    comm = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, comm)
