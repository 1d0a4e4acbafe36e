r"""Gaussian mixtures, the discrete-z case where EM's E-step is exact: EM, enumerated SVI and amortized SVI.

The model (``K`` components, data ``x`` of shape ``(N, D)``)::

    z_n ~ Categorical(pi)                          site "z", under plate "data"
    x_n | z_n ~ N(mu_{z_n}, diag(v_{z_n}))          site "x"; v_k = sigma_k^2 1 (spherical) or a (D,) vector (diag)

Parameters are ``weights`` pi ``(K,)``, ``locs`` mu ``(K, D)`` and ``variances`` ``(K,)`` (spherical)
or ``(K, D)`` (diag). The exact log-likelihood is
:math:`\log p(x_n) = \operatorname{logsumexp}_k [\log\pi_k + \log N(x_n; \mu_k, \mathrm{diag}\, v_k)]`.
"""

from __future__ import annotations

import time
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from torch import nn
from torch.distributions import transform_to

from pyro_vae.baselines.history import Fit, History, check_convergence, out_of_time
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.inference.engine import adam
from pyro_vae.inference.score_function import straight_through
from pyro_vae.training.stopping import BudgetLimit, EpochLimit
from pyro_vae.training.trainer import Trainer

CovarianceType = Literal["spherical", "diag"]
COVARIANCE_TYPES = ("spherical", "diag")
EPS = 10 * torch.finfo(torch.float64).eps  # added to each component's mass, as scikit-learn does
VARIANCE_FLOOR = 1e-6  # kmeans_params' floor on a start's variances: scikit-learn's default reg_covar


def _check(covariance_type: str, num_components: int, x: torch.Tensor) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ConfigError(f"covariance_type: '{covariance_type}' is not one of {', '.join(COVARIANCE_TYPES)}")
    if not 0 < num_components <= len(x):
        raise ConfigError(f"num_components: {num_components} must be between 1 and the number of points ({len(x)})")


def _variances_kd(variances: torch.Tensor, D: int) -> torch.Tensor:
    """``(K, D)`` per-feature variances from ``(K,)`` (spherical) or ``(K, D)`` (diag)."""
    return variances[:, None].expand(-1, D) if variances.dim() == 1 else variances


def component_log_prob(x: torch.Tensor, locs: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """log N(x_n; mu_k, diag v_k) for every point and component, ``(N, K)``."""
    scale = _variances_kd(variances, locs.shape[1]).sqrt()
    return dist.Normal(locs, scale).to_event(1).log_prob(x[:, None, :])


@torch.no_grad()
def log_likelihood(x: torch.Tensor, weights: torch.Tensor, locs: torch.Tensor, variances: torch.Tensor) -> float:
    """Exact mean log p(x_n) (nats per data point)."""
    x = x.double()
    joint = weights.double().log() + component_log_prob(x, locs.double(), variances.double())
    return float(torch.logsumexp(joint, -1).mean())


def initial_params(x: torch.Tensor, num_components: int, covariance_type: CovarianceType = "diag",
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Means at ``num_components`` distinct data points chosen by ``seed``, uniform weights, the data's variance."""
    _check(covariance_type, num_components, x)
    x = x.double()
    g = torch.Generator().manual_seed(seed)
    locs = x[torch.randperm(len(x), generator=g)[:num_components]].clone()
    var = x.var(0, unbiased=False)
    variances = var.mean().expand(num_components) if covariance_type == "spherical" else var.expand(num_components, -1)
    return {"weights": torch.full((num_components,), 1.0 / num_components, dtype=torch.float64),
            "locs": locs, "variances": variances.clone()}


def _m_step(x: torch.Tensor, resp: torch.Tensor, covariance_type: CovarianceType, reg_covar: float):
    r"""Weights ``(K,)``, locs ``(K, D)`` and variances ``(K,)``/``(K, D)`` maximizing the expected complete-data
    log-likelihood under responsibilities ``resp`` ``(N, K)``: :math:`N_k = \sum_n r_{nk} + 10\epsilon`,
    :math:`\pi_k = N_k/N`, :math:`\mu_k = \sum_n r_{nk}x_n/N_k`, :math:`v_k = \sum_n r_{nk}x_n^2/N_k - \mu_k^2`
    (+ ``reg_covar``), averaged over features when spherical."""
    nk = resp.sum(0) + EPS
    locs = resp.T @ x / nk[:, None]
    variances = resp.T @ x.square() / nk[:, None] - locs.square() + reg_covar
    return nk / len(x), locs, variances.mean(1) if covariance_type == "spherical" else variances


def kmeans_params(x: torch.Tensor, num_components: int, covariance_type: CovarianceType = "diag",
                  seed: int = 0) -> dict[str, torch.Tensor]:
    r"""The start scikit-learn's ``GaussianMixture(init_params="kmeans")`` uses: k-means labels, then one M-step.

    Labels :math:`c_n` come from ``sklearn.cluster.KMeans(n_clusters=K, n_init=1, random_state=seed)``:
    k-means++ seeding (Arthur & Vassilvitskii 2007: each next centre is a data point drawn with probability
    proportional to its squared distance to the nearest centre so far) refined by Lloyd's iterations.
    The hard responsibilities :math:`r_{nk} = [c_n = k]` give, in float64, :math:`\pi_k = N_k/N`,
    :math:`\mu_k` the cluster's mean and :math:`v_k` its per-feature variance (``(K, D)``; spherical: its mean
    over features, ``(K,)``); the layout is :func:`initial_params`'.

    A cluster of one point (or of identical points) would have zero variance, where the likelihood is
    undefined; its variances are raised to ``VARIANCE_FLOOR`` = 1e-6 (scikit-learn's default ``reg_covar``).
    Unlike ``reg_covar`` the floor touches only variances below it, so a non-degenerate start is
    exactly scikit-learn's start with ``reg_covar=0``.
    """
    from sklearn.cluster import KMeans  # here, as data.py does: scikit-learn takes a second to import

    _check(covariance_type, num_components, x)
    x = x.double()
    labels = KMeans(n_clusters=num_components, n_init=1, random_state=seed).fit(x.numpy()).labels_
    resp = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), num_components).double()  # (N, K)
    weights, locs, variances = _m_step(x, resp, covariance_type, 0.0)
    return {"weights": weights, "locs": locs, "variances": variances.clamp_min(VARIANCE_FLOOR)}


def em(x: torch.Tensor, num_components: int, covariance_type: CovarianceType = "diag", *, tol: float = 1e-8,
       max_iter: int = 1000, init: dict[str, torch.Tensor] | None = None, seed: int = 0,
       reg_covar: float = 0.0, seconds: float | None = None) -> Fit:
    r"""Exact EM in log space, the loop of scikit-learn's ``GaussianMixture`` (Dempster et al. 1977).

    E-step: responsibilities :math:`r_{nk} = p(z_n = k | x_n)` by Bayes' rule, computed as
    :math:`\log r_{nk} = \log\pi_k + \log N_{nk} - \operatorname{logsumexp}_j(\cdot)` so that far-away
    points do not underflow. M-step: :math:`N_k = \sum_n r_{nk}`, :math:`\pi_k = N_k/N`,
    :math:`\mu_k = \sum_n r_{nk}x_n/N_k`, :math:`v_k = \sum_n r_{nk}(x_n-\mu_k)^2/N_k` (+ ``reg_covar``),
    averaged over features when spherical.

    With ``reg_covar = 0`` each M-step is the exact maximizer, so the log-likelihood (recorded after
    every iteration, iteration 0 being ``init``) never decreases; a positive ``reg_covar`` guards
    against a component collapsing onto one point, at the price of that guarantee.
    """
    _check(covariance_type, num_components, x)
    x = x.double()
    params = initial_params(x, num_components, covariance_type, seed) if init is None else {k: v.double().clone() for k, v in init.items()}
    weights, locs, variances = params["weights"], params["locs"], params["variances"]
    history = History()
    history.record(0, log_likelihood(x, weights, locs, variances))
    converged, it = False, 0
    while it < max_iter and not converged and not out_of_time(history, seconds):
        it += 1
        joint = weights.log() + component_log_prob(x, locs, variances)  # (N, K)
        resp = (joint - torch.logsumexp(joint, -1, keepdim=True)).exp()
        weights, locs, variances = _m_step(x, resp, covariance_type, reg_covar)
        if not bool((variances > 0).all()):
            raise ConfigError(f"gmm em: a component collapsed onto a single point at iteration {it}; "
                              "set reg_covar > 0 or use fewer components")
        history.record(it, log_likelihood(x, weights, locs, variances))
        converged = check_convergence(history, tol, max_iter, "GMM EM")
    return Fit({"weights": weights, "locs": locs, "variances": variances}, history, iterations=it,
               converged=converged, kind=f"gmm_{covariance_type}")


def em_restarts(x: torch.Tensor, num_components: int, covariance_type: CovarianceType = "diag", *, n_init: int = 5,
                seed: int = 0, tol: float = 1e-8, max_iter: int = 1000, reg_covar: float = 0.0,
                seconds: float | None = None) -> Fit:
    r"""EM from ``n_init`` k-means++ starts (:func:`kmeans_params` with ``seed + i``), keeping the restart of
    highest final training log-likelihood (the first on a tie), as ``GaussianMixture(n_init=...)`` does.

    EM only climbs to a local maximum of :math:`\frac1N\sum_n \log p(x_n)`; k-means++ seeding
    (Arthur & Vassilvitskii 2007) spreads the starting means over the clusters, and restarts hedge the rest.

    The returned :class:`Fit` is the best restart's own (``params``, ``history``, ``iterations``,
    ``converged``); ``restarts`` holds one record per restart run,
    ``{"seed", "log_likelihood", "iterations", "converged", "seconds"}``, whose ``seconds`` counts the
    k-means initialization and the EM together (``Fit.total_seconds`` is their sum; the best ``history``
    times its EM alone). ``seconds``, a wall-time budget for all restarts together, is split evenly over
    the restarts still to run: restart ``i`` may use ``(seconds - spent) / (n_init - i)``, so time a
    restart leaves unused passes on to the later ones, and no restart starts once the budget is spent
    (the first always does). A restart whose component collapses (``reg_covar = 0``) raises, as in :func:`em`.
    """
    if n_init < 1:
        raise ConfigError(f"n_init: {n_init} must be at least 1")
    best: Fit | None = None
    records = []
    for i in range(n_init):
        spent = sum(r["seconds"] for r in records)
        if seconds is not None and i > 0 and spent >= seconds:
            break
        start = time.perf_counter()
        init = kmeans_params(x, num_components, covariance_type, seed=seed + i)
        share = None if seconds is None else (seconds - spent) / (n_init - i) - (time.perf_counter() - start)
        fit = em(x, num_components, covariance_type, tol=tol, max_iter=max_iter, init=init, reg_covar=reg_covar,
                 seconds=share)
        records.append({"seed": seed + i, "log_likelihood": fit.log_likelihood, "iterations": fit.iterations,
                        "converged": fit.converged, "seconds": time.perf_counter() - start})
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    best.restarts = records
    return best


def model(x: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """The mixture as a Pyro model with the globals pi, mu, v given as point estimates ``params``
    (``weights`` ``(K,)``, ``locs`` ``(K, D)``, ``variances`` ``(K,)`` or ``(K, D)``)."""
    weights, locs, variances = params["weights"], params["locs"], params["variances"]
    scale = _variances_kd(variances, locs.shape[1]).sqrt()  # (K, D)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights))  # (N,), or (K, 1) when enumerated
        pyro.sample("x", dist.Normal(locs[z], scale[z]).to_event(1), obs=x)


def _empty_guide(x: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """z is summed out by enumeration in the model and the globals are point estimates: nothing to sample."""


class CategoricalEncoder(nn.Module):
    """Amortized q(z|x) = Categorical(softmax(f(x))) with an MLP f, and an MLP baseline b(x) for the score function."""

    def __init__(self, x_dim: int, num_components: int, hidden: int = 32):
        super().__init__()
        self.logits = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, num_components))
        self.baseline = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1), nn.Flatten(0))  # (N,)

    def guide(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        pyro.module("encoder", self)
        with pyro.plate("data", len(x)):
            # a per-point learned baseline b(x_n) reduces the REINFORCE variance; the plate lets
            # TraceGraph_ELBO keep only x_n's own cost in z_n's gradient (Rao-Blackwellization)
            pyro.sample("z", dist.Categorical(logits=self.logits(x)),
                        infer={"baseline": {"nn_baseline": self.baseline, "nn_baseline_input": x}})


CONSTRAINTS = {"weights": constraints.simplex, "locs": constraints.real, "variances": constraints.positive}


class Mixture(nn.Module):
    """The globals being fitted, stored unconstrained as ``pyro.param`` stores them (``transform_to(c).inv``
    of the value: stick-breaking for the simplex of ``weights``, log for ``variances``), so Adam steps the
    same numbers; ``params()`` gives the constrained values. ``encoder`` (an amortized guide) is trained too.

    ``model(x)`` and ``guide(x)`` are the Pyro pair for :class:`~pyro_vae.training.trainer.Trainer`'s
    non-finite diagnosis."""

    def __init__(self, init: dict[str, torch.Tensor], encoder: CategoricalEncoder | None = None):
        super().__init__()
        self.raw = nn.ParameterDict({k: nn.Parameter(transform_to(c).inv(init[k].clone())) for k, c in CONSTRAINTS.items()})
        self.encoder = encoder

    def params(self) -> dict[str, torch.Tensor]:
        return {k: transform_to(c)(self.raw[k]) for k, c in CONSTRAINTS.items()}

    def model(self, x: torch.Tensor) -> None:
        model(x, self.params())

    def guide(self, x: torch.Tensor) -> None:
        (self.encoder.guide if self.encoder is not None else _empty_guide)(x, self.params())


def _svi_fit(x: torch.Tensor, fitted: Mixture, loss_fn, steps: int, lr: float, eval_every: int, kind: str,
             progress: bool, seconds: float | None = None, seed: int = 0, stopping: EpochLimit | None = None) -> Fit:
    """Full-batch Adam on ``loss_fn(x) = -ELBO`` (summed over the points) on the project's Trainer, one step an
    epoch, for ``steps`` steps or ``seconds`` of stepping, or under the rule ``stopping`` (which then holds the
    step size and the caps, and whose verdict is ``Fit.converged``); the exact log-likelihood (the Trainer's
    validation score, off the clock) is kept every ``eval_every`` steps and at the end, with the step-0 value
    at ``init``."""
    data = Dataset(name=kind, train=x, val=x[:0], test=x[:0])
    rule = stopping if stopping is not None else BudgetLimit(lr, max_epochs=steps, seconds=seconds)

    def exact() -> float:
        with torch.no_grad():
            return log_likelihood(x, **fitted.params())

    trainer = Trainer(fitted, lambda xb, beta: loss_fn(xb), adam(fitted.parameters(), rule.lr), data,
                      rule, seed=seed, batch_size=len(x),
                      validation=exact, progress=progress, quiet=not progress)
    # the loss is a differentiable one (Pyro's enumerated ELBO refuses to run under no_grad): read its value
    history = History(rows=[{"iteration": 0, "log_likelihood": exact(), "seconds": 0.0,
                             "elbo": -float(loss_fn(x).detach()) / len(x)}])
    rows = trainer.fit()
    history.rows += [{"iteration": r["epoch"], "log_likelihood": r["val_elbo"], "seconds": r["wall_time"],
                      "elbo": r["train_elbo"]} for r in rows if r["epoch"] % eval_every == 0 or r is rows[-1]]
    params = {k: v.detach() for k, v in fitted.params().items()}
    modules = {"encoder": fitted.encoder} if fitted.encoder is not None else {}
    converged = stopping is None or (rule.converged and not rule.capped)
    return Fit(params, history, iterations=trainer.epoch, converged=converged, kind=kind, modules=modules)


def svi_enumerated(x: torch.Tensor, init: dict[str, torch.Tensor], *, steps: int = 500, lr: float = 0.05,
                   eval_every: int = 10, progress: bool = False, seconds: float | None = None,
                   stopping: EpochLimit | None = None) -> Fit:
    r"""SVI with z summed out exactly (``TraceEnum_ELBO`` + ``config_enumerate``): the loss is exactly
    :math:`-\sum_n \log p(x_n)`, so this is gradient ascent on the log-likelihood of the point-estimate globals."""
    x = x.double()
    pyro.clear_param_store()
    fitted, loss, enumerated = Mixture(init), TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(model, "parallel")
    return _svi_fit(x, fitted, lambda xb: loss.differentiable_loss(enumerated, _empty_guide, xb, fitted.params()),
                    steps, lr, eval_every, "gmm_enumerated_svi", progress, seconds, stopping=stopping)


def svi_amortized(x: torch.Tensor, init: dict[str, torch.Tensor], *, steps: int = 500, lr: float = 0.05,
                  eval_every: int = 10, hidden: int = 32, num_particles: int = 1, seed: int = 0,
                  progress: bool = False, seconds: float | None = None, stopping: EpochLimit | None = None) -> Fit:
    r"""SVI with an amortized categorical guide q(z|x) and score-function gradients (``TraceGraph_ELBO``).

    z cannot be reparameterized, so :math:`\nabla_\phi \mathbb{E}_q[f] = \mathbb{E}_q[f\,\nabla_\phi\log q]`
    (REINFORCE) with a learned baseline; the objective is the ELBO, below the log-likelihood by
    :math:`\mathrm{KL}(q(z|x)\,\|\,p(z|x))`. The reported log-likelihood is exact for the learned globals.
    """
    x = x.double()
    pyro.clear_param_store()
    torch.manual_seed(seed)
    fitted = Mixture(init, CategoricalEncoder(x.shape[1], len(init["weights"]), hidden).double())
    loss = TraceGraph_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)

    def loss_fn(xb: torch.Tensor) -> torch.Tensor:
        # -ELBO as the value, the score-function surrogate (with the baseline's loss) as the gradient
        elbo, surrogate = loss._loss_and_surrogate_loss(model, fitted.encoder.guide, (xb, fitted.params()), {})
        return straight_through(-elbo, surrogate)

    return _svi_fit(x, fitted, loss_fn, steps, lr, eval_every, "gmm_amortized_svi", progress, seconds, seed, stopping)
