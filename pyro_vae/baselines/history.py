"""What every baseline returns: its fitted parameters and a log-likelihood trace against iterations and wall time."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped at ``max_iter`` before its log-likelihood changed by less than ``tol``."""


@dataclass
class History:
    """Per-iteration records ``{"iteration", "log_likelihood", "seconds"}``; log-likelihoods are nats per data point.

    ``seconds`` is the cumulative wall time of the algorithm itself; evaluation done only for this
    record (never needed by the algorithm) is excluded with :meth:`paused`.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)
    _excluded: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._excluded

    def record(self, iteration: int, log_likelihood: float, **extra: float) -> None:
        self.rows.append({"iteration": iteration, "log_likelihood": float(log_likelihood),
                          "seconds": self.elapsed(), **{k: float(v) for k, v in extra.items()}})

    def paused(self):
        """Context manager: time spent inside is not counted (evaluation for the record only)."""
        history = self

        class _Pause:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                history._excluded += time.perf_counter() - self.t

        return _Pause()

    @property
    def log_likelihood(self) -> list[float]:
        return [r["log_likelihood"] for r in self.rows]

    @property
    def seconds(self) -> float:
        return self.rows[-1]["seconds"] if self.rows else 0.0


@dataclass
class Fit:
    """A fitted model: ``params`` (float64 tensors), its ``history``, and whether it met its tolerance.

    A fit kept as the best of several restarts (e.g. :func:`~pyro_vae.baselines.gmm.em_restarts`) has one
    record per restart in ``restarts``, ``{"seed", "log_likelihood", "iterations", "converged", "seconds"}``;
    ``history`` is then the kept restart's own, and :attr:`total_seconds` the time of all of them.
    """

    params: dict[str, torch.Tensor]
    history: History
    iterations: int
    converged: bool
    kind: str
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # e.g. an amortized guide's encoder
    restarts: list[dict[str, Any]] = field(default_factory=list)  # one record per restart, when restarted

    @property
    def log_likelihood(self) -> float:
        """Final training log-likelihood, nats per data point."""
        return self.history.log_likelihood[-1]

    @property
    def total_seconds(self) -> float:
        """Wall time of the whole fit: the sum of the restarts' ``seconds``, else the history's own."""
        return sum(r["seconds"] for r in self.restarts) if self.restarts else self.history.seconds


def check_convergence(history: History, tol: float, max_iter: int, what: str) -> bool:
    """True once the last log-likelihood change is below ``tol``; warns when ``max_iter`` is used up first."""
    ll = history.log_likelihood
    converged = len(ll) >= 2 and abs(ll[-1] - ll[-2]) < tol
    if not converged and len(ll) - 1 >= max_iter:
        change = abs(ll[-1] - ll[-2]) if len(ll) >= 2 else float("nan")
        warnings.warn(f"{what} did not converge in max_iter={max_iter} iterations (last change "
                      f"{change:.2e} nats/point >= tol={tol:g}); raise max_iter or tol", ConvergenceWarning, stacklevel=3)
    return converged


def out_of_time(history: History, seconds: float | None) -> bool:
    """True once the algorithm has spent its wall-time budget (``None``: no budget)."""
    return seconds is not None and history.elapsed() >= seconds
