"""Comparison methods: the budget every method of a comparison shares, the row each returns, and their registry."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from pyro_vae.config import Config, apply_overrides, validate
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.registry import Named
from pyro_vae.training.stopping import BudgetLimit


@dataclass(frozen=True)
class Budget:
    """What every method of one comparison may spend.

    Training stops after ``epochs`` epochs or once ``seconds`` of wall-clock training time have
    been used (checked at epoch ends), whichever comes first; at least one must be set.
    ``eval_samples`` is K of the test IWAE bound, ``grad_samples`` the number of repeated
    gradient evaluations behind the gradient-variance estimate.
    """

    epochs: Optional[int] = None
    seconds: Optional[float] = None
    eval_samples: int = 1000
    grad_samples: int = 50

    def __post_init__(self):
        if self.epochs is None and self.seconds is None:
            raise ConfigError("budget: set --epochs or --seconds")

    def exhausted(self, epochs: int, seconds: float) -> bool:
        """Whether ``epochs`` epochs and ``seconds`` of training have spent the budget."""
        return (self.epochs is not None and epochs >= self.epochs) or (self.seconds is not None and seconds >= self.seconds)

    def rule(self, lr: float) -> BudgetLimit:
        """The budget as the Trainer's stopping rule at the fixed step size ``lr``: it checks :meth:`exhausted`
        after every epoch (so at least one epoch trains) on the Trainer's clock, which counts training steps
        alone, and ends on the last epoch's parameters."""
        return BudgetLimit(lr, max_epochs=self.epochs, seconds=self.seconds)


@dataclass
class MethodResult:
    """One row of a comparison; bounds are nats per data point (higher is better).

    ``test_log_likelihood`` is the exact log p(x) when the model has one, else the IWAE estimate
    with ``Budget.eval_samples`` samples; ``exact_log_likelihood`` is None when no closed form
    exists. ``curve`` holds one ``{"epoch", "wall_time", "val_elbo"[, "log_likelihood"]}`` per
    epoch; ``extra`` anything method-specific (gradient variances, the config overrides...).
    """

    name: str
    train_elbo: float
    val_elbo: float
    test_log_likelihood: Optional[float]
    exact_log_likelihood: Optional[float]
    test_elbo: float
    seconds: float
    examples_per_second: float
    iterations: int
    curve: List[Dict[str, Any]] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


Method = Callable[[Config, Dataset, Budget], MethodResult]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    fn: Method
    summary: str


class MethodRegistry(Named[MethodEntry]):
    """Named comparison methods: ``register`` a function ``(cfg, data, budget) -> MethodResult``."""

    def __init__(self):
        super().__init__("method")

    def register(self, name: str, summary: Optional[str] = None,
                 check: Optional[Callable[[Config], Any]] = None) -> Callable[[Method], Method]:
        """``check(cfg)``, if given, raises a one-line ConfigError for a config the method cannot run;
        ``compare`` calls every method's check before anything is trained or written."""

        def decorator(fn: Method) -> Method:
            if check is not None:
                fn.check = check
            self._add(name, MethodEntry(name, fn, summary or (inspect.getdoc(fn) or "").split("\n")[0]))
            return fn

        return decorator

    def get(self, name: str) -> MethodEntry:
        return self.lookup(name, "--methods")


METHODS = MethodRegistry()


def configure(cfg: Config, overrides: List[str]) -> Config:
    """``cfg`` with ``key=value`` overrides applied and revalidated.

    The base's ``inference.kl: analytic`` is dropped when the overrides switch to an objective
    without a closed-form KL (IWAE, Renyi, score function) and do not set ``inference.kl``
    themselves, so ``--method-set x:inference.objective=iwae`` means what it says.
    """
    raw = apply_overrides(cfg.to_dict(), overrides)
    inference = raw.get("inference", {})
    sets_kl = any(o.split("=", 1)[0].strip() == "inference.kl" for o in overrides)
    if not sets_kl and inference.get("kl") == "analytic" and (
            inference.get("objective", "elbo") != "elbo" or inference.get("estimator", "reparam") != "reparam"):
        inference.pop("kl")
    return validate(raw)
