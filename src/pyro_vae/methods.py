"""Comparison methods: named trainers mapping (config, data, budget) to one comparable result row.

A method is any callable ``(cfg: Config, data: Dataset, budget: Budget) -> MethodResult``;
register one with ``@METHODS.register("name")``. The built-in methods are SVI runs of the
same VAE that differ only by a few config overrides (``BUILTIN_SETS``), so a comparison changes
one thing at a time: the objective, the KL estimator, the number of particles, the gradient
estimator.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from .config import Config, InferenceConfig, apply_overrides, validate
from .data import Dataset, binarize_batch
from .errors import ConfigError
from .registry import Named


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
        return (self.epochs is not None and epochs >= self.epochs) or (self.seconds is not None and seconds >= self.seconds)


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

# Modules that register methods into METHODS when imported (e.g. the EM baselines); ``pyro-vae
# compare`` imports them first. Add one line here per module.
METHOD_MODULES: List[str] = ["pyro_vae.baselines.methods"]


def load_method_modules() -> None:
    for name in METHOD_MODULES:
        importlib.import_module(name)

# name -> (config overrides, one-line summary): each differs from the base config in one respect
BUILTIN_SETS: Dict[str, tuple] = {
    "analytic_kl": (["inference.objective=elbo", "inference.kl=analytic", "inference.estimator=reparam",
                     "inference.num_particles=1"], "ELBO, closed-form KL(q || p(z)), reparameterized, 1 particle"),
    "monte_carlo_kl": (["inference.objective=elbo", "inference.kl=monte_carlo", "inference.estimator=reparam",
                        "inference.num_particles=1"], "ELBO, Monte Carlo KL (log q - log p at z), reparameterized"),
    "iwae_k5": (["inference.objective=iwae", "inference.kl=monte_carlo", "inference.estimator=reparam",
                 "inference.num_particles=5"], "IWAE bound with K = 5 importance samples (Burda et al.)"),
    "iwae_k50": (["inference.objective=iwae", "inference.kl=monte_carlo", "inference.estimator=reparam",
                  "inference.num_particles=50"], "IWAE bound with K = 50 importance samples"),
    "score_function": (["inference.objective=elbo", "inference.kl=monte_carlo", "inference.estimator=score_function",
                        "inference.num_particles=1"], "ELBO with the score-function (REINFORCE) gradient, TraceGraph_ELBO"),
}


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


def svi_method(overrides: List[str]) -> Method:
    """A method that trains the VAE of ``cfg`` with ``overrides`` applied, under the budget."""

    def method(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
        return train_svi(configure(cfg, overrides), data, budget, extra={"overrides": list(overrides)})

    method.overrides = list(overrides)  # lets a comparison validate every method before training any
    return method


def train_svi(cfg: Config, data: Dataset, budget: Budget, name: str = "", extra: Optional[Dict[str, Any]] = None,
              progress: bool = False) -> MethodResult:
    """Train with SVI until the budget is spent; evaluate the final parameters on the test split."""
    from .build import build_vae
    from .evaluate import evaluate_points, gradient_variance
    from .objectives import build_elbo
    from .train import elbo_per_point, seed_everything

    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim, data.image_shape)
    elbo = build_elbo(cfg.inference)
    standard = build_elbo(InferenceConfig())  # val/test numbers are the ELBO whatever the training objective
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.optim.lr)
    order = torch.Generator().manual_seed(cfg.seed + 1)
    binarizer = torch.Generator().manual_seed(cfg.seed + 2)
    inf, batch_size = cfg.inference, cfg.train.batch_size
    warmup_steps = inf.kl_warmup_epochs * math.ceil(len(data.train) / batch_size)
    curve, train_elbo, val_elbo, epochs, steps, seconds = [], math.nan, math.nan, 0, 0, 0.0
    val = data.val if len(data.val) else data.train
    while not budget.exhausted(epochs, seconds):
        start, total = time.perf_counter(), 0.0
        x = binarize_batch(data.train, binarizer) if data.binarize == "dynamic" else data.train
        vae.train()
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            vae.kl_weight = inf.beta * (min(1.0, (steps + 1) / warmup_steps) if warmup_steps else 1.0)
            loss = elbo.differentiable_loss(vae.model, vae.guide, x[idx]) / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.optim.clip_norm)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            steps += 1
        vae.kl_weight = 1.0
        seconds += time.perf_counter() - start
        epochs += 1
        train_elbo = -total / len(x)
        val_elbo = elbo_per_point(vae, standard, val)
        curve.append({"epoch": epochs, "wall_time": seconds, "val_elbo": val_elbo})
        if progress:
            print(f"  epoch {epochs:>4}  train_elbo {train_elbo:10.3f}  val_elbo {val_elbo:10.3f}",
                  file=sys.stderr, flush=True)
    vae.eval()
    test = data.test if len(data.test) else val
    ev = evaluate_points(vae, test, samples=budget.eval_samples)
    exact = ev["log_likelihood"]["mean"] if ev["log_likelihood"] is not None else None
    if curve and exact is not None:
        curve[-1]["log_likelihood"] = exact
    batch = data.train[: cfg.train.batch_size]
    variance = gradient_variance(vae, elbo, batch, budget.grad_samples)  # of the method's own objective
    return MethodResult(
        name=name, train_elbo=train_elbo, val_elbo=val_elbo,
        test_log_likelihood=exact if exact is not None else ev["iwae"]["mean"],
        exact_log_likelihood=exact, test_elbo=ev["elbo"]["mean"], seconds=seconds,
        examples_per_second=epochs * len(data.train) / max(seconds, 1e-9),
        iterations=steps, curve=curve,
        extra={**(extra or {}), "epochs": epochs, "test_iwae": ev["iwae"]["mean"],
               "test_iwae_se": ev["iwae"]["se"], "test_elbo_se": ev["elbo"]["se"],
               "grad_variance_encoder": variance["encoder"], "grad_variance_decoder": variance["decoder"],
               "inference": cfg.inference.model_dump()},
    )


for _name, (_overrides, _summary) in BUILTIN_SETS.items():
    METHODS.register(_name, _summary)(svi_method(_overrides))
