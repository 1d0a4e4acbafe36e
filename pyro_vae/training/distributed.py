"""Data-parallel training with ``torch.distributed``: process groups, devices, shards and the DDP loss module.

A run of ``W`` processes (``pyro-vae train --nproc W`` or ``torchrun --nproc-per-node W -m pyro_vae train``)
takes the same global minibatches as a single-process run: every rank draws the same seeded
permutation, cuts it into the same global batches of ``train.batch_size`` rows, and takes the
rows ``batch[rank::W]`` (``DistributedSampler``'s rule, applied per global batch).

Loss scaling. With ``B`` rows in the global batch and ``l_i`` minus the ELBO of row ``i``, the
single-process step minimises ``L = (1/B) sum_i l_i``, gradient ``g = (1/B) sum_i grad l_i``.
Rank ``r`` minimises ``L_r = (W/B) sum_{i in shard_r} l_i``; DDP averages gradients over ranks, so

    (1/W) sum_r grad L_r = (1/W) (W/B) sum_r sum_{i in shard_r} grad l_i = (1/B) sum_i grad l_i = g,

exactly, for shards of any sizes (also the uneven last batch). beta (``poutine.scale`` on ``z``)
is inside each ``l_i``, and the VAE has no global latent, so no ``N/B`` factor enters.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pyro_vae.build import resolve_device
from pyro_vae.errors import UserError, file_system_error

T = TypeVar("T")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node) and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch of indices: ``batch[rank::world_size]`` (possibly empty)."""
        return batch[self.rank::self.world_size] if self.distributed else batch

    def all_sum(self, *values: float | torch.Tensor) -> List[float]:
        """Sum each scalar over the ranks (one all-reduce)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.distributed:
            t = t.to(self.device) if self.device.type == "cuda" else t  # nccl reduces CUDA tensors only
            dist.all_reduce(t)
        return t.cpu().tolist()

    def all_max(self, *values: float) -> List[float]:
        """The maximum of each scalar over the ranks: how ranks agree on "did anyone see a NaN / a signal"."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.distributed:
            t = t.to(self.device) if self.device.type == "cuda" else t
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> Optional[T]:
        """Run ``fn`` on rank 0 only; a UserError it raises is raised on every rank (so none waits forever)."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as err:
                error = err
            except OSError as err:  # the file system's refusals are user errors too (and must reach every rank)
                error = file_system_error(err)
        if self.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current() -> Context:
    """The context of an initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device)


def init(device: str = "cpu") -> Context:
    """Join the process group that ``torchrun`` (or :func:`launch`) describes in the environment; idempotent.

    Without ``WORLD_SIZE > 1`` in the environment this is the single-process context on ``device``.
    The backend is ``nccl`` on CUDA and ``gloo`` on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return Context(device=dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown() -> None:
    """Leave the process group in step with the other ranks: every rank waits at a barrier (so none tears
    down its sockets while another still uses them, e.g. rank 0 writing plots), then destroys it.

    Call it after the last collective, once the DDP wrappers are released; a no-op without a process group.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # a DDP reducer kept alive by a reference cycle must go before its process group
        dist.barrier()
        dist.destroy_process_group()


def _destroy() -> None:
    """The atexit fallback for a run that ended early (an error on every rank): no barrier, a rank may be gone."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s sampling stream (rank 0 keeps ``seed``: its stream is the single-process one)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class LossModule(nn.Module):
    """Holds the VAE (model and guide parameters alike); ``forward(x, kl_weight)`` is the scaled loss DDP differentiates.

    ``loss_fn(x, kl_weight)`` is minus the objective summed over the rows of ``x`` (``(b, x_dim)``,
    this rank's shard); ``forward`` returns it times ``scale`` (``W / B``, see the module docstring).
    An empty shard (a last batch with fewer rows than ranks) contributes a zero loss that still
    touches every parameter, so the rank joins the gradient all-reduce with zeros.
    """

    def __init__(self, vae: nn.Module, loss_fn: Callable[[torch.Tensor, float], torch.Tensor]):
        super().__init__()
        self.vae = vae
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, kl_weight: float, scale: float) -> torch.Tensor:
        if len(x) == 0:
            return sum(p.sum() for p in self.vae.parameters() if p.requires_grad) * 0.0
        return self.loss_fn(x, kl_weight) * scale


def wrap(vae: nn.Module, loss_fn, ctx: Context, find_unused_parameters: bool) -> nn.Module:
    """``DistributedDataParallel(LossModule(vae, loss_fn))``: broadcasts rank 0's parameters, then all-reduces
    (averages) gradients in ``backward``."""
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(vae, loss_fn)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


# -- launching N local processes ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank: int, fn: Callable[..., int], nproc: int, port: int, args: Sequence[Any]) -> None:
    """One spawned rank: the environment torchrun would give it, its own process group (so a terminal's
    Ctrl-C reaches only the launcher, which forwards it once), then ``fn(*args)``; exits with its code."""
    os.setpgrp()
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        code = fn(*args)
    except UserError as err:
        if local_rank == 0:  # every rank raises the same error; say it once
            print(f"pyro-vae: error: {err}", file=sys.stderr, flush=True)
        code = err.exit_code
    except KeyboardInterrupt:
        if local_rank == 0:
            print("pyro-vae: interrupted", file=sys.stderr, flush=True)
        code = 130
    sys.stdout.flush()
    sys.exit(code or 0)


def launch(fn: Callable[..., int], nproc: int, *args: Any) -> int:
    """Run ``fn(*args)`` in ``nproc`` fresh local processes (ranks ``0..nproc-1``, gloo/nccl chosen by each rank's
    :func:`init`) and return rank 0's exit code (else the first non-zero one).

    ``fn`` must be importable (a module-level function). SIGINT/SIGTERM to the launcher is forwarded to
    every rank once, and the ranks agree to stop at the same step (rank 0 writes the checkpoint).
    """
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_entry, args=(fn, nproc, free_port(), args), nprocs=nproc, join=False,
                             start_method="spawn")

    def forward(signum, frame):
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    first: Optional[Dict[int, int]] = None  # the ranks found failed first, and their exit codes
    try:
        # a rank that died outside our error handling would leave the others waiting in a collective
        while any(p.is_alive() for p in ctx.processes):
            for p in ctx.processes:
                p.join(timeout=0.1)
            failed = {r: p.exitcode for r, p in enumerate(ctx.processes) if p.exitcode not in (None, 0)}
            if failed:
                first = first or failed
                for p in ctx.processes:
                    p.join(timeout=5)
                    if p.is_alive():
                        p.terminate()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    raw = [p.exitcode for p in ctx.processes]
    if first and (raw[0] or 0) <= 0:  # rank 0 exiting by itself says its own error; else only a status would show
        print(f"pyro-vae: error: {failure(first, nproc)}", file=sys.stderr, flush=True)
    codes = [128 - c if c is not None and c < 0 else (c or 0) for c in raw]  # killed by signal n: 128+n
    return codes[0] or next((c for c in codes if c), 0)


def failure(failed: Dict[int, int], nproc: int) -> str:
    """One line for the ranks that failed first (``{rank: exitcode}``, a negative code: killed by that signal)."""
    rank = min(failed, key=lambda r: (failed[r] < 0, r))  # one that exited by itself, else the first killed
    code = failed[rank]
    try:
        name = f" ({signal.Signals(-code).name})" if code < 0 else ""
    except ValueError:
        name = ""
    how = f"was killed by signal {-code}{name}" if code < 0 else f"exited with status {code}"
    return f"rank {rank} of {nproc} {how} (its own output, if any, is above); the other ranks were stopped"
