"""Comparison methods: the budget every method of a comparison shares, the row each returns, and their registry."""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.distributions import Distribution

from pyro_vae.config import Config, TrainConfig, apply_overrides, validate
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import ais_points
from pyro_vae.evaluation.evaluate import evaluate_points, mc_se
from pyro_vae.evaluation.yardstick import Yardstick, fixed_rows
from pyro_vae.model import own_rng
from pyro_vae.registry import Named
from pyro_vae.training.stopping import BudgetLimit, EpochLimit, Plateau

STOPS = ("converged", "fixed")
FINALS = ("iwae", "ais")  # the estimator of the final test log p(x) where no closed form exists
DEFAULT_SECONDS_CAP = 300.0  # per method and seed, when compare is not told otherwise
MAX_EM_ITERATIONS = 10_000  # the iteration cap of EM-type methods when the budget sets no epochs


@dataclass(frozen=True)
class Budget:
    """What every method of one comparison may spend, and when it stops.

    ``stop = "converged"`` (the default): each method trains until its own convergence test holds, or
    until a cap. SVI methods use ``train``'s plateau rule (:class:`~pyro_vae.training.stopping.Plateau`
    with ``train.patience``, ``train.min_delta``, ``train.lr_factor`` and ``train.min_lr``) on the
    yardstick: the step size is cut when the validation log p(x) stops improving, training stops at a
    plateau at ``train.min_lr``, and the best validated parameters are kept. EM-type methods iterate until
    their log-likelihood changes by less than their tolerance. The caps: ``epochs`` passes over the
    training data (default ``train.epochs`` for SVI, :data:`MAX_EM_ITERATIONS` for EM) or ``seconds`` of
    training time (checked at epoch ends), whichever comes first.

    ``stop = "fixed"``: exactly ``epochs`` epochs or ``seconds`` of training at the constant step size
    ``optim.lr``, ending on the last parameters (equal budgets, not convergence); at least one must be set.

    ``eval_samples`` is K of the test IWAE bound, ``grad_samples`` the number of repeated gradient
    evaluations behind the gradient-variance estimate, ``yardstick_samples`` and ``yardstick_points`` the
    K and the number of validation points of the yardstick (:class:`~pyro_vae.evaluation.yardstick.Yardstick`).

    ``test_points`` (default: all) scores every method's test numbers on that many fixed rows of the test
    split (:meth:`test_split`), for a test split too large for the final estimator on this machine.

    ``final`` is the estimator of the final test log p(x) for a model without a closed form: ``iwae``, the
    IWAE bound with ``eval_samples`` draws from the method's own q (a ruler that depends on q), or ``ais``,
    annealed importance sampling with ``ais_steps`` temperatures, ``ais_chains`` chains per point and
    ``ais_leapfrog`` leapfrog steps per HMC move (:meth:`final_estimate`), the same reference for every method.
    """

    stop: str = "converged"
    epochs: Optional[int] = None
    seconds: Optional[float] = None
    eval_samples: int = 1000
    grad_samples: int = 50
    yardstick_samples: int = 100
    yardstick_points: int = 500
    final: str = "iwae"
    ais_steps: int = 100
    ais_chains: int = 16
    ais_leapfrog: int = 10
    test_points: Optional[int] = None

    def __post_init__(self):
        if self.stop not in STOPS:
            raise ConfigError(f"budget: stop '{self.stop}' is not one of {', '.join(STOPS)}")
        if self.final not in FINALS:
            raise ConfigError(f"budget: final '{self.final}' is not one of {', '.join(FINALS)}")
        for key in ("ais_steps", "ais_chains", "ais_leapfrog"):
            if getattr(self, key) < 1:
                raise ConfigError(f"budget: {key} {getattr(self, key)} must be at least 1")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"budget: test_points {self.test_points} must be at least 1")
        if self.stop == "fixed" and self.epochs is None and self.seconds is None:
            raise ConfigError("budget: a fixed budget needs --epochs or --seconds")

    def exhausted(self, epochs: int, seconds: float) -> bool:
        """Whether ``epochs`` epochs and ``seconds`` of training have reached a cap."""
        return ((self.epochs is not None and epochs >= self.epochs)
                or (self.seconds is not None and seconds >= self.seconds))

    def rule(self, train: TrainConfig, lr: float) -> EpochLimit:
        """The Trainer's stopping rule for an SVI method whose ``train`` section is ``train``, first step size ``lr``.

        ``converged``: :class:`Plateau` with ``train``'s patience, minimum improvement, cut factor and floor,
        capped at ``epochs`` (default ``train.epochs``) and ``seconds``, restoring the best epoch.
        ``fixed``: :class:`BudgetLimit` at the constant ``lr``, last parameters."""
        if self.stop == "fixed":
            rule = BudgetLimit(lr, max_epochs=self.epochs, seconds=self.seconds, patience=train.patience,
                               min_delta=train.min_delta)
        else:
            rule = Plateau(self.epochs or train.epochs, lr, patience=train.patience, min_delta=train.min_delta,
                           factor=train.lr_factor, min_lr=train.min_lr, restore_best=True, seconds=self.seconds)
        rule.score = "validation log p(x)"
        return rule

    def yardstick(self, data: Dataset) -> Yardstick:
        """The yardstick of every method trained on ``data``: ``yardstick_points`` fixed rows of the validation
        split (the training split when there is none), ``yardstick_samples`` importance samples."""
        val = data.val if len(data.val) else data.train
        return Yardstick(val, self.yardstick_samples, self.yardstick_points)

    def test_split(self, data: Dataset) -> torch.Tensor:
        """The rows every method's test numbers are scored on: the test split (the validation split when there is
        none, else the training split), or ``test_points`` of its rows (:func:`fixed_rows`: drawn once, in their
        order in the split), the same rows for every method and seed."""
        x = data.test if len(data.test) else (data.val if len(data.val) else data.train)
        return x if self.test_points is None else fixed_rows(x, self.test_points)

    def final_estimate(self, vae, x: torch.Tensor,
                       proposal: Optional[Callable[[torch.Tensor], Distribution]] = None) -> Optional[Dict[str, Any]]:
        """The final test log p(x) of ``vae`` on ``x`` ``(N, x_dim)`` when ``final = "ais"``, else None (the
        method's IWAE-``eval_samples`` stands).

        AIS (:func:`~pyro_vae.evaluation.ais.ais_points`) anneals from q(z|x), the encoder's or ``proposal(rows)``
        for a method without one, to p(z|x) along the geometric path: its expectation is a lower bound on log p(x)
        that tends to it as the steps grow, for any start, so it does not flatter the method with the best q the
        way IWAE-K does. Returns ``{"mean", "se", "mc_se", "estimator", "accept"}`` (nats per point; ``se`` over the
        points, ``mc_se`` the Monte Carlo error given them), on its own RNG stream seeded 0."""
        if self.final != "ais":
            return None
        with own_rng(0, vae.device):
            result = ais_points(vae, x.to(vae.device), proposal=proposal, num_steps=self.ais_steps,
                                num_chains=self.ais_chains, leapfrog_steps=self.ais_leapfrog)
        n = len(result.log_px)
        se = float(result.log_px.std() / math.sqrt(n)) if n > 1 else math.nan
        return {"mean": float(result.log_px.mean()), "se": se, "mc_se": mc_se(result.variance),
                "accept": float(result.accept.mean()), "estimator": self.final_estimator()}

    def final_estimator(self) -> str:
        """The name of the final estimator where no closed form exists: ``IWAE-1000`` or ``AIS (T=100, C=16, L=10)``."""
        if self.final == "ais":
            return f"AIS (T={self.ais_steps}, C={self.ais_chains}, L={self.ais_leapfrog})"
        return f"IWAE-{self.eval_samples}"

    def max_iterations(self) -> int:
        """The iteration cap of an EM-type method."""
        return self.epochs if self.epochs is not None else MAX_EM_ITERATIONS

    def describe(self, train_epochs: Optional[int] = None) -> str:
        """The budget in words, for the report; ``train_epochs`` (the config's ``train.epochs``) names the SVI cap."""
        caps = " or ".join(s for s in (f"{self.epochs} epochs" if self.epochs else "",
                                        f"{self.seconds:g} s" if self.seconds else "") if s)
        if self.stop == "fixed":
            return f"fixed: {caps} at a constant step size, last parameters"
        svi_cap = f"{train_epochs} epochs (train.epochs)" if train_epochs else "train.epochs"
        epochs = f"{self.epochs} epochs" if self.epochs else f"SVI {svi_cap}, EM {MAX_EM_ITERATIONS} iterations"
        caps = " or ".join([epochs] + ([f"{self.seconds:g} s of training"] if self.seconds else []))
        return ("until converged (SVI: plateau of the validation log p(x) at the floor step size, best epoch kept; "
                f"EM: log-likelihood change below its tolerance), capped at {caps}, per method and seed")


@dataclass
class MethodResult:
    """One row of a comparison: one method trained with one seed; bounds are nats per data point (higher is better).

    ``test_log_likelihood`` is the exact log p(x) when the model has one, else the IWAE estimate
    with ``Budget.eval_samples`` samples (``estimator`` says which); ``exact_log_likelihood`` is None
    when no closed form exists. ``val_log_px`` is the yardstick (the same estimator of log p(x) for
    every method, on a fixed validation subset) at the final parameters. ``curve`` holds one
    ``{"epoch", "wall_time", "val_elbo", "val_log_px"}`` per epoch (``val_log_px`` None where the
    method cannot be scored on the yardstick while it trains). ``converged`` is the method's own
    convergence test; ``stop_reason`` is ``plateau`` or ``tol`` (converged), ``max_epochs`` or
    ``seconds`` (a cap), with ``stop_detail`` in words. ``extra`` holds anything method-specific
    (gradient variances, the config overrides...).
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
    seed: int = 0
    converged: bool = False
    stop_reason: str = ""
    stop_detail: str = ""
    val_log_px: Optional[float] = None
    estimator: str = ""
    epochs: int = 0

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


def final_test_log_px(budget: Budget, vae, x: torch.Tensor, exact: Optional[float], iwae: Dict[str, float],
                      proposal: Optional[Callable[[torch.Tensor], Distribution]] = None,
                      iwae_label: Optional[str] = None) -> Dict[str, Any]:
    """A method's final test log p(x) on ``x`` and the estimator behind it, as MethodResult fields.

    ``exact`` (a closed form) wins; else AIS when ``budget.final = "ais"`` (:meth:`Budget.final_estimate`, started
    at ``proposal`` for a method without an encoder), else the method's ``iwae`` ``{"mean", "se"}`` with
    ``budget.eval_samples`` draws (``iwae_label`` names it, e.g. when q came from an E-step). Returns
    ``{"test_log_likelihood", "estimator", "extra"}``; ``extra`` has ``test_log_likelihood_se`` and the AIS
    numbers (``test_ais``, ``test_ais_se``, ``test_ais_mc_se``, ``ais_accept``) when AIS ran."""
    if exact is not None:
        return {"test_log_likelihood": exact, "estimator": "exact", "extra": {"test_log_likelihood_se": 0.0}}
    ais = budget.final_estimate(vae, x, proposal)
    if ais is None:
        return {"test_log_likelihood": iwae["mean"], "estimator": iwae_label or budget.final_estimator(),
                "extra": {"test_log_likelihood_se": iwae.get("se")}}
    return {"test_log_likelihood": ais["mean"], "estimator": ais["estimator"],
            "extra": {"test_log_likelihood_se": ais["se"], "test_ais": ais["mean"], "test_ais_se": ais["se"],
                      "test_ais_mc_se": ais["mc_se"], "ais_accept": ais["accept"]}}


def test_scores(budget: Budget, vae, x: torch.Tensor) -> Dict[str, Any]:
    """The test numbers of a method with an encoder on ``x``: :func:`~pyro_vae.evaluation.evaluate.evaluate_points`
    with ``budget.eval_samples`` importance samples from q(z|x), then :func:`final_test_log_px`. Returns
    ``{"test_elbo", "exact", "final", "extra"}``: ``exact`` the closed-form test log p(x) or None, ``final`` the
    MethodResult fields of the test log p(x), ``extra`` the test IWAE and ELBO errors and ``final``'s extras."""
    ev = evaluate_points(vae, x, samples=budget.eval_samples)
    exact = ev["log_likelihood"]["mean"] if ev["log_likelihood"] is not None else None
    final = final_test_log_px(budget, vae, x, exact, ev["iwae"])
    extra = {"test_iwae": ev["iwae"]["mean"], "test_iwae_se": ev["iwae"]["se"], "test_iwae_mc_se": ev["iwae"]["mc_se"],
             "test_elbo_se": ev["elbo"]["se"], **final["extra"]}
    return {"test_elbo": ev["elbo"]["mean"], "exact": exact, "final": final, "extra": extra}


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
