"""A comparison's trainings, one (method, seed) run each: in this process one after another, or in worker processes.

Runs are independent (each builds its model from its own seed, on the same data), so with ``jobs > 1``
they go to a pool of ``jobs`` spawned processes, each with ``cpu_count // jobs`` torch threads. A worker
knows a method by name: the methods of ``pyro_vae`` itself and ``--method-set`` definitions (rebuilt from
their overrides); one registered elsewhere runs only with ``jobs = 1``. Parallel runs share the cores, so
their seconds and examples/s are those of a shared machine.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pyro_vae.compare.methods import METHODS, Budget, Method, MethodResult
from pyro_vae.compare.svi import svi_method
from pyro_vae.config import validate
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError


@dataclass(frozen=True)
class Run:
    """One training of a comparison: method ``name`` on the config ``config`` (a plain dict, so it crosses
    processes), whose ``seed`` is the run's seed. In this process ``local`` is the method object itself (it may be
    one no worker could rebuild); a worker rebuilds it by name, or from ``overrides`` for a ``--method-set``."""

    name: str
    config: Dict[str, Any]
    overrides: Optional[Tuple[str, ...]] = None
    local: Optional[Method] = field(default=None, compare=False, repr=False)

    def method(self) -> Method:
        if self.local is not None:
            return self.local
        return svi_method(list(self.overrides)) if self.overrides is not None else METHODS.get(self.name).fn

    def __call__(self, data: Dataset, budget: Budget) -> MethodResult:
        cfg = validate(self.config)
        result = self.method()(cfg, data, budget)
        result.name, result.seed = self.name, cfg.seed
        return result


def spec(name: str, method: Method) -> Optional[Tuple[str, ...]]:
    """How a worker rebuilds ``method``: None for a registered method of ``pyro_vae``, the overrides of a
    ``--method-set``; a ConfigError for a method a spawned process cannot know."""
    if name in METHODS and METHODS.get(name).fn is method:
        if getattr(method, "__module__", "").startswith("pyro_vae."):
            return None
    elif hasattr(method, "overrides"):
        return tuple(method.overrides)
    raise ConfigError(f"--jobs: method '{name}' is registered outside pyro_vae, so worker processes cannot run it; "
                      "use --jobs 1")


_DATA: Dict[str, Any] = {}  # a worker's data and budget, sent once when it starts


def _start_worker(threads: int, data: Dataset, budget: Budget) -> None:
    torch.set_num_threads(threads)
    _DATA.update(data=data, budget=budget)


def _run_in_worker(run: Run) -> MethodResult:
    return run(_DATA["data"], _DATA["budget"])


def run_all(runs: Sequence[Run], data: Dataset, budget: Budget, jobs: int = 1,
            done: Optional[Callable[[int, MethodResult], None]] = None,
            started: Optional[Callable[[int], None]] = None) -> List[MethodResult]:
    """Every run's result, in the order of ``runs``; ``started(i)`` before run ``i`` trains in this process,
    ``done(i, result)`` as each finishes (in finishing order with ``jobs > 1``)."""
    results: List[Optional[MethodResult]] = [None] * len(runs)
    if jobs <= 1 or len(runs) <= 1:
        for i, run in enumerate(runs):
            if started is not None:
                started(i)
            results[i] = run(data, budget)
            if done is not None:
                done(i, results[i])
        return results
    workers = min(jobs, len(runs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads, data, budget)) as pool:
        futures = {pool.submit(_run_in_worker, run): i for i, run in enumerate(runs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if done is not None:
                done(i, results[i])
    return results
