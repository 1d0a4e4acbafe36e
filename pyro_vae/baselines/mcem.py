r"""Monte Carlo EM with an HMC E-step: maximum likelihood for any differentiable decoder, with no encoder.

EM maximizes :math:`\log p_\theta(x) = \sum_n \log \int p(z)\, p_\theta(x_n|z)\, dz` by alternating an E-step
(the posterior :math:`p_\theta(z|x_n)`) and an M-step on the expected complete-data log-likelihood

.. math:: Q(\theta' | \theta) = \sum_n \mathbb{E}_{p_\theta(z|x_n)}[\log p(z) + \log p_{\theta'}(x_n|z)].

Monte Carlo EM (Wei & Tanner 1990) replaces the expectation with posterior samples. Here they are drawn by
MCMC and the M-step is one stochastic-gradient step per minibatch, which makes this the stochastic-
approximation variant (an SAEM with an MCMC kernel in the sense of Delyon, Lavielle & Moulines 1999 and
Kuhn & Lavielle 2004, with the Robbins-Monro average taken on theta's gradient, not on sufficient
statistics, as in Younes 1999's stochastic-gradient maximum likelihood with persistent chains). It is not
Wei & Tanner's MCEM, which draws many fresh samples and maximizes Q fully each iteration. Per minibatch b:

* **E-step**: every training point n keeps S chains :math:`z_{n,1..S}` (a buffer, as variational EM's
  ``LocalGuide`` keeps q_n), started at the encoder's mean of q(z|x_n) at initialization (the untrained
  encoder: just a deterministic start) or at draws from p(z). The batch's chains take ``e_steps`` HMC
  transitions (:func:`pyro_vae.evaluation.ais.hmc_transition`: identity mass, ``leapfrog_steps`` leapfrog
  steps, Metropolis correction) that leave :math:`p_\theta(z|x_n) \propto p(z) p_\theta(x_n|z)` invariant,
  warm-started from the stored states, theta frozen. Each point's step size is stored too and adapted
  toward acceptance ``target_accept`` = 0.65 by :math:`\epsilon \leftarrow \epsilon\, e^{\kappa(\bar a - a^*)}`.
* **M-step**: one optimizer step on theta (prior, decoder, likelihood parameters; never the encoder) on

  .. math:: \ell(x_b) = -\sum_{n \in b} \frac{1}{S} \sum_{s=1}^S
            \big[\log p(z_{n,s}) + \log p_\theta(x_n | z_{n,s})\big],

  the z detached. Since
  :math:`\nabla_\theta \log p_\theta(x) = \mathbb{E}_{p_\theta(z|x)}[\nabla_\theta \log p_\theta(x, z)]`
  (Fisher's identity), with mixed chains its gradient is a noisy but asymptotically unbiased estimate of minus
  the log-likelihood's gradient: the fixed points are those of maximum likelihood, not of an ELBO.

The loss's value (``train_elbo`` in the history) is minus the Monte Carlo complete-data log-likelihood
:math:`\log p(x, z)`, not a bound on log p(x). The HMC step-size adaptation uses the chain's own past, so a
transition with ``adapt`` is not strictly an MH kernel fixed in advance; the tests measure that the exact
posterior of a linear-Gaussian model stays invariant under it within Monte Carlo error.

References: G. Wei, M. Tanner, A Monte Carlo implementation of the EM algorithm (JASA 1990); B. Delyon,
M. Lavielle, E. Moulines, Convergence of a stochastic approximation version of the EM algorithm (Ann. Stat.
1999); E. Kuhn, M. Lavielle, Coupling a stochastic approximation version of EM with an MCMC procedure (ESAIM
2004); L. Younes, On the convergence of Markovian stochastic algorithms with rapidly decreasing ergodicity
rates (Stochastics 1999); R. Neal, MCMC using Hamiltonian dynamics (2011).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from pyro.distributions import Normal
from torch import nn

from pyro_vae.baselines.fitting import (
    CURVE_POINTS,
    IWAE_SAMPLES,
    check_budget,
    curve_log_likelihood,
    fit_history,
    generative_parameters,
)
from pyro_vae.baselines.history import History
from pyro_vae.build import build_seeded
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import hmc_transition
from pyro_vae.evaluation.decode import log_likelihood
from pyro_vae.evaluation.iwae import proposal_iwae
from pyro_vae.evaluation.linear_gaussian import is_linear_gaussian
from pyro_vae.inference.engine import adam
from pyro_vae.model import VAE, own_rng
from pyro_vae.training.stopping import BudgetLimit, EpochLimit
from pyro_vae.training.trainer import Trainer

INITIALS = ("encoder", "prior")
INITIAL_STEP_SIZE = 0.1  # every point's first HMC step size; adapted from there
TARGET_ACCEPT = 0.65  # the acceptance the step size is adapted toward (Neal 2011: 0.65 is near optimal)
ADAPT_RATE = 0.5  # kappa of the adaptation, as ais's default


class Chains(nn.Module):
    r"""The E-step's persistent state: buffers ``z`` ``(S, num_points, latent_dim)`` (S chains per training point)
    and ``step_size`` ``(num_points,)`` (each point's adapted HMC step size, shared by its chains)."""

    def __init__(self, z: torch.Tensor, step_size: float = INITIAL_STEP_SIZE):
        super().__init__()
        self.register_buffer("z", z.detach().clone())
        self.register_buffer("step_size", z.new_full((z.shape[1],), float(step_size)))
        self.register_buffer("accept", z.new_full((z.shape[1],), math.nan))  # each point's last E-step acceptance

    @classmethod
    @torch.no_grad()
    def start(cls, vae: VAE, x: torch.Tensor, num_samples: int = 1, initial: str = "encoder",
              step_size: float = INITIAL_STEP_SIZE) -> "Chains":
        """S = ``num_samples`` chains per row of ``x``, all at the mean of the encoder's q(z|x_n) (``"encoder"``)
        or at independent draws from p(z) (``"prior"``)."""
        if initial not in INITIALS:
            raise ConfigError(f"mcem initial {initial!r}: must be one of {', '.join(INITIALS)}")
        if initial == "encoder":
            loc = vae.latent_summary(x)[0]
            z = loc.expand(num_samples, *loc.shape)
        else:
            z = vae.prior().sample((num_samples, len(x)))
        return cls(z, step_size)

    def e_step(self, vae: VAE, x: torch.Tensor, rows: torch.Tensor, steps: int, leapfrog_steps: int,
               target_accept: float = TARGET_ACCEPT, adapt_rate: float = ADAPT_RATE, adapt: bool = True) -> None:
        """``steps`` HMC transitions on p(z|x_b) for rows ``rows`` (``x``: their data), from and into the buffers."""
        if steps == 0:
            return
        z, step, accept = hmc_transition(vae, x, self.z[:, rows], self.step_size[rows], steps, leapfrog_steps,
                                         target_accept, adapt_rate, adapt)
        self.z[:, rows], self.step_size[rows], self.accept[rows] = z, step, accept


def complete_data_log_likelihood(vae: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``log p(z) + log p(x|z)`` per chain and point, ``(S, N)``, for ``z`` ``(S, N, D)``; differentiable in theta."""
    return vae.prior().log_prob(z) + log_likelihood(vae.decoder, vae.likelihood, z, x)


def mcem_step_loss(vae: VAE, chains: Chains, e_steps: int, leapfrog_steps: int,
                   target_accept: float = TARGET_ACCEPT, adapt_rate: float = ADAPT_RATE):
    r"""MCEM's minibatch step as a Trainer loss ``loss(x_b, beta, rows)`` (``indexed_loss``).

    Runs the E-step (``e_steps`` HMC transitions of rows ``rows``' chains on :math:`p_\theta(z|x_b)`, theta
    frozen: :meth:`Chains.e_step`), then returns the M-step's objective summed over the batch,
    :math:`-\sum_{n \in b} \frac1S \sum_s \log p_\theta(x_n, z_{n,s})` with the z detached; the Trainer divides by
    B and steps theta. beta is not applied: there is no KL term to scale.
    """

    def loss(xb: torch.Tensor, kl_weight: float, rows: torch.Tensor) -> torch.Tensor:
        chains.e_step(vae, xb, rows, e_steps, leapfrog_steps, target_accept, adapt_rate)
        z = chains.z[:, rows].detach()
        return -complete_data_log_likelihood(vae, xb, z).mean(0).sum()

    return loss


@dataclass
class MCEMFit:
    """A trained VAE (its encoder untouched), the E-step's chains and the per-epoch history.

    History rows carry ``log_likelihood`` (:func:`validation_score`: exact on up to ``CURVE_POINTS`` validation
    points for a linear-Gaussian model, training points when there is no validation split; else a chain-centred
    IWAE bound on up to ``CURVE_POINTS`` training points), ``elbo`` (the
    epoch's mean Monte Carlo complete-data log-likelihood, the M-step's objective: not a bound), ``accept`` (the mean
    HMC acceptance of the epoch's last E-steps) and ``gradient_evaluations`` (z- or theta-gradients of log p(x, z):
    per minibatch, ``e_steps * leapfrog_steps + 1`` in the E-step, with its starting point's, and the M-step's one).
    """

    vae: VAE
    chains: Chains
    history: History
    epochs: int
    gradient_evaluations: int
    exact: bool
    rule: Optional[EpochLimit] = None
    kind: str = "mcem"
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def log_likelihood(self) -> float:
        return self.history.log_likelihood[-1]


SCORE_WIDTH = 2.0  # the score's proposal: N(z, (SCORE_WIDTH * step_size)^2 I) at each point's chain state z


@torch.no_grad()
def validation_score(vae: VAE, chains: Chains, x: torch.Tensor, x_val: torch.Tensor, exact: bool) -> float:
    r"""MCEM's per-epoch score: the exact mean log p(x) of ``x_val`` for a linear-Gaussian model; else an IWAE bound
    (``IWAE_SAMPLES`` draws, on a stream seeded 0) on the first ``CURVE_POINTS`` training rows ``x``, with each
    point's proposal the Normal :math:`N(z_n, (c\,\epsilon_n)^2 I)` at its first chain's state :math:`z_n` and
    adapted HMC step size :math:`\epsilon_n` (c = ``SCORE_WIDTH``).

    Any proposal chosen before the draws gives a stochastic lower bound on log p(x), and one centred on the
    E-step's own near-posterior state is a tight one. MCEM trains no encoder, and the two proposals that need
    none were measured too loose to follow training on the digits (likelihood scale 0.1): IWAE from the prior went
    flat some 30 nats below log p(x), and short AIS from the prior (20 steps) stopped the plateau rule even
    earlier, while this score rose from -31 to +1 nats between epochs 30 and 300."""
    if exact:
        return curve_log_likelihood(vae, x_val, exact)
    n = min(len(x), CURVE_POINTS)
    q = Normal(chains.z[0, :n], SCORE_WIDTH * chains.step_size[:n, None]).to_event(1)
    with own_rng(0, vae.device):
        return float(proposal_iwae(vae, q, x[:n], IWAE_SAMPLES).mean())


def fit(cfg: Config, data: Dataset, *, e_steps: int = 5, num_samples: int = 1, leapfrog_steps: int = 5,
        epochs: Optional[int] = None, seconds: Optional[float] = None, stopping: Optional[EpochLimit] = None,
        initial: str = "encoder", progress: bool = False) -> MCEMFit:
    """Train ``cfg``'s VAE's generative part on ``data.train`` by stochastic-approximation MCEM.

    Built as ``train`` builds it (:func:`~pyro_vae.build.build_seeded`), trained on the project's
    :class:`~pyro_vae.training.trainer.Trainer` (seeded minibatches of ``train.batch_size``, the non-finite guard)
    with :func:`mcem_step_loss` and an Adam on theta alone at ``optim.lr``; the budget is ``epochs`` epochs or
    ``seconds`` of training time unless a rule ``stopping`` is given. ``num_samples``: S chains per point;
    ``initial``: where the chains start (:meth:`Chains.start`). The validation score is
    :func:`validation_score`, off the training clock.
    """
    if stopping is None:
        check_budget(epochs, seconds)
    for name, value in (("e_steps", e_steps), ("num_samples", num_samples), ("leapfrog_steps", leapfrog_steps)):
        if value < 1:
            raise ConfigError(f"mcem {name}: {value}, must be at least 1")
    if data.binarize == "dynamic":
        raise ConfigError("data.binarize: MCEM keeps chains per training point; use static, not dynamic")
    vae = build_seeded(cfg, data, torch.device("cpu"))
    x = data.train
    x_val = data.val if len(data.val) else x
    exact = is_linear_gaussian(cfg.model)
    chains = Chains.start(vae, x, num_samples, initial)

    rule = stopping if stopping is not None else BudgetLimit(cfg.optim.lr, max_epochs=epochs, seconds=seconds)
    theta = adam(generative_parameters(vae), lr=rule.lr)
    trainer = Trainer(vae, mcem_step_loss(vae, chains, e_steps, leapfrog_steps), theta, data, rule, seed=cfg.seed,
                      batch_size=cfg.train.batch_size, clip_norm=cfg.optim.clip_norm,
                      on_nonfinite=cfg.train.on_nonfinite, validate_args=cfg.train.validate_args, indexed_loss=True,
                      validation=lambda: validation_score(vae, chains, x, x_val, exact), progress=progress,
                      quiet=not progress, engine="mcem")
    per_step = e_steps * leapfrog_steps + 2
    history = fit_history(trainer, per_step, "gradient_evaluations", lambda: {"accept": float(chains.accept.nanmean())})
    vae.eval()
    return MCEMFit(vae, chains, history, trainer.epoch, trainer.step * per_step, exact, rule)
