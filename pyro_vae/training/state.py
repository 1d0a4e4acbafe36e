"""A run's checkpoint: every random state as plain tensors and numbers, the parameters, the optimizer, the
counters and the epoch in progress, so a run continued from it takes exactly the steps it would have taken.

Plain functions over the parts (no Trainer): the Trainer calls them, and so does anything that writes a run
directory of its own (``baselines/export.py``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from pyro_vae.config import Config
from pyro_vae.errors import RunDirError, one_line
from pyro_vae.training import distributed
from pyro_vae.training.guards import NonFiniteError
from pyro_vae.training.stopping import EpochLimit


class RunFiles(Protocol):
    """Where a Trainer writes (``pyro_vae.rundir.RunDir`` is one): training never imports the run
    directory code, it is handed one."""

    path: Path  # the run directory
    checkpoint: Path  # its newest checkpoint file

    def save_checkpoint(self, state: Dict[str, Any]) -> None: ...

    def write_metrics(self, rows: List[Dict[str, Any]]) -> None: ...


def rng_state(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    """Every random state as tensors and plain Python values (so checkpoints load with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": [version, list(internal), gauss_next],
            **{k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    for k, g in generators.items():
        g.set_state(state[k])


def generators(seed: int) -> Dict[str, torch.Generator]:
    """A run's own streams, seeded by ``seed``: ``order`` (each epoch's permutation of the training rows) and
    ``binarizer`` (dynamic binarization's draws). The model's own draws (z) come from torch's global stream."""
    return {"order": torch.Generator().manual_seed(seed + 1), "binarizer": torch.Generator().manual_seed(seed + 2)}


def checkpoint_state(*, config: Optional[Config], x_dim: int, vae: nn.Module, optimizer: torch.optim.Optimizer,
                     stopping: EpochLimit, streams: Dict[str, torch.Generator], epoch: int = 0, step: int = 0,
                     seconds: float = 0.0, metrics: Sequence[Dict[str, Any]] = (),
                     current: Optional[Dict[str, Any]] = None, best: Optional[Dict[str, torch.Tensor]] = None,
                     restored: bool = False, finished: bool = False) -> Dict[str, Any]:
    """The checkpoint of a run: everything needed to continue exactly where it is.

    ``config`` (its dict and hash, which ``resume`` checks config.yaml against), ``x_dim``, the parameters and
    Adam's moments and step size, the counters (``epoch`` epochs and ``step`` steps done in ``seconds`` of
    training, one ``metrics`` row per epoch), ``current`` (the epoch in progress: its permutation, position,
    binarization state and running sums; None between epochs), every random state (:func:`rng_state` over
    ``streams``), the stopping rule's state, the best epoch's parameters ``best`` and whether they were
    ``restored``, and whether training is ``finished`` (what ``resume`` checks). Never written with a
    non-finite parameter: that is a :class:`NonFiniteError`, the last good checkpoint kept.
    """
    bad = [n for n, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"step {step}: parameter {bad[0]} is not finite; refusing to overwrite the last "
                             f"good checkpoint (lower optim.lr or set optim.clip_norm)")
    return {"config": None if config is None else config.to_dict(), "config_hash": None if config is None else config.hash(),
            "x_dim": x_dim, "vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step": step, "seconds": seconds, "metrics": metrics,
            "current": None if current is None else dict(current), "rng": rng_state(streams),
            "stopping": stopping.state_dict(), "best": best, "restored": restored, "finished": finished}


def gather_ranks(state: Dict[str, Any], ctx: distributed.Context) -> Dict[str, Any]:
    """Under torch.distributed (a collective: every rank calls it), add every rank's share to ``state``: each
    rank's torch stream (``rng.torch_ranks``), and the epoch's running sums ``total`` (of minus the objective)
    and ``points`` over all ranks, so any world size resumes the epoch, and per rank (``current.ranks``), so
    the same world size resumes it bitwise."""
    state["rng"]["torch_ranks"] = ctx.gather(torch.get_rng_state())
    current = state["current"]
    if current is not None:
        ranks = ctx.gather([float(current["total"]), int(current["points"])])
        current.update(total=torch.tensor(sum(t for t, _ in ranks), dtype=torch.float32),
                       points=sum(n for _, n in ranks), ranks=ranks)
    return state


def load_checkpoint_state(state: Dict[str, Any], *, x_dim: int, n_train: int, vae: nn.Module,
                          optimizer: torch.optim.Optimizer, stopping: EpochLimit, streams: Dict[str, torch.Generator],
                          seed: int, ctx: distributed.Context) -> Dict[str, Any]:
    """Load ``state`` (a :func:`checkpoint_state`) into the parts and the random streams; returns the counters
    ``{epoch, step, seconds, metrics, best, restored, current}``, ``current`` being this rank's share of the
    epoch in progress. A checkpoint that does not fit (``x_dim``, ``n_train`` rows, the model, the rule) is a
    RunDirError naming it.

    Under torch.distributed a checkpoint of the same world size gives each rank back its torch stream and
    running sums; one of another size gives ranks ``r > 0`` fresh streams (seeded by ``seed`` and the step)
    and rank 0 the epoch's sums so far over all ranks.
    """
    where = state.get("_path", "checkpoint")
    try:
        if state["x_dim"] != x_dim:
            raise ValueError(f"x_dim {state['x_dim']} but the data has {x_dim} features")
        current = state["current"]
        if current is not None and len(current["perm"]) != n_train:
            raise ValueError(f"its permutation has {len(current['perm'])} rows but the data has {n_train}")
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        counters = {k: state[k] for k in ("epoch", "step", "seconds", "best", "restored")}
        counters["metrics"] = list(state["metrics"])
        stopping.load_state_dict(state["stopping"])
        set_rng_state(state["rng"], streams)
        if ctx.distributed:
            ranks = state["rng"].get("torch_ranks")
            if ranks is not None and len(ranks) == ctx.world_size:
                torch.set_rng_state(ranks[ctx.rank])
            elif ctx.rank > 0:  # a checkpoint of another world size: fresh streams for the new ranks
                torch.manual_seed(distributed.rank_seed(seed + counters["step"], ctx.rank))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise RunDirError(f"{where}: does not fit this run ({one_line(err)})") from None
    current = None if current is None else dict(current)
    ranks = None if current is None else current.pop("ranks", None)
    if ctx.distributed and current is not None:
        if ranks is not None and len(ranks) == ctx.world_size:
            total, points = ranks[ctx.rank]
            current.update(total=torch.tensor(total, dtype=torch.float32), points=points)
        elif not ctx.is_main:  # another world size: rank 0 carries the epoch's sums so far
            current.update(total=torch.zeros(()), points=0)
    return {**counters, "current": current}
