r"""A reference posterior p(z|x) from MCMC, and how far the guide's q(z|x) is from it.

For a VAE without a closed-form posterior, q(z|x) is judged against samples of

.. math:: p(z | x) \propto p(z)\, p(x | z; \theta), \qquad U(z) = -[\log p(z) + \log p(x | z; \theta)],

with the generative parameters theta frozen (no gradient reaches them):

- :func:`hmc_posterior` draws from p(z|x_n) for a few points with Pyro's NUTS on the potential U;
- :func:`posterior_discrepancy` compares q's first two moments with the samples', and estimates the
  KL divergence from q to the Gaussian moment-matched to the samples;
- :func:`psis_khat` is the Pareto-smoothed importance-sampling diagnostic k-hat of q(z|x) as a
  proposal for p(z|x), per point (Yao et al. 2018): below 0.5 good, 0.5 to 0.7 usable, above 0.7 unreliable.

For the linear-Gaussian model (:mod:`pyro_vae.evaluation.linear_gaussian`) p(z|x) is known in closed
form, which is what ``tests/evaluation/test_reference_posterior.py`` holds all three to.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import fit_generalized_pareto
from torch.distributions import Distribution, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.decode import log_likelihood
from pyro_vae.evaluation.iwae import fused_log_weights
from pyro_vae.evaluation.linear_gaussian import as_gaussian
from pyro_vae.model import VAE, frozen, own_rng


@dataclass
class PosteriorSamples:
    """Draws of p(z|x_n) and their MCMC diagnostics.

    ``samples``: ``(S, N, D)``; ``n_eff`` and ``r_hat``: ``(N, D)`` (Pyro's effective sample size and
    split-chain R-hat of each coordinate); ``divergences``: divergent transitions after warmup, per
    chain run (one run for the joint chain, N for per-point chains); ``step_size``: NUTS's adapted
    step size(s), same layout; ``accept_rate``: mean acceptance probability, same layout.
    """

    samples: torch.Tensor
    n_eff: torch.Tensor
    r_hat: torch.Tensor
    divergences: List[int] = field(default_factory=list)
    step_size: List[float] = field(default_factory=list)
    accept_rate: List[float] = field(default_factory=list)
    joint: bool = True
    seconds: float = 0.0

    @property
    def mean(self) -> torch.Tensor:
        """Sample mean, ``(N, D)``."""
        return self.samples.mean(0)

    @property
    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance, ``(N, D, D)``."""
        return sample_covariance(self.samples)

    def summary(self) -> Dict[str, float]:
        """Scalars for a report: worst R-hat, least n_eff, divergences, step sizes, seconds."""
        return {"r_hat_max": float(self.r_hat.max()), "n_eff_min": float(self.n_eff.min()),
                "divergences": float(sum(self.divergences)), "step_size_min": min(self.step_size),
                "step_size_max": max(self.step_size), "seconds": self.seconds}


def sample_covariance(samples: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance over the first dimension: ``(S, N, D) -> (N, D, D)``."""
    centred = samples - samples.mean(0)
    return torch.einsum("sni,snj->nij", centred, centred) / (samples.shape[0] - 1)


def log_joint(vae: VAE, z: torch.Tensor, x: torch.Tensor, prior: Optional[Distribution] = None) -> torch.Tensor:
    """``log p(z_n) + log p(x_n | z_n)`` for ``z`` ``(..., N, D)`` and ``x`` ``(N, x_dim)``: shape ``(..., N)``.

    ``log p(z)`` is ``vae.prior().log_prob`` (batch ``()``, event ``(D,)``); a prior whose log density
    does not come out one number per z (a batched prior) is refused rather than summed wrongly.
    """
    prior = vae.prior() if prior is None else prior
    log_prior = prior.log_prob(z)
    if log_prior.shape != z.shape[:-1]:
        raise ConfigError(f"reference posterior: the prior's log_prob of z {tuple(z.shape)} has shape "
                          f"{tuple(log_prior.shape)}, not {tuple(z.shape[:-1])}: a prior with batch shape "
                          f"{tuple(prior.batch_shape)} is not one p(z)")
    return log_prior + log_likelihood(vae.decoder, vae.likelihood, z, x)


def _run_nuts(vae: VAE, x: torch.Tensor, z0: torch.Tensor, num_samples: int, warmup_steps: int,
              kernel_options: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float, float]:
    """One NUTS chain over z ``(n, D)`` with potential ``-sum_n log p(z_n, x_n)``."""
    prior = vae.prior()

    def potential(params: Dict[str, torch.Tensor]) -> torch.Tensor:
        return -log_joint(vae, params["z"], x, prior).sum()

    kernel = NUTS(potential_fn=potential, **kernel_options)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, initial_params={"z": z0},
                disable_progbar=True)
    mcmc.run()
    diagnostics = mcmc.diagnostics()
    divergences = sum(len(v) for v in diagnostics.get("divergences", {}).values())
    accept = diagnostics.get("acceptance rate", {}).get("chain 0", float("nan"))
    z = mcmc.get_samples()["z"].detach()  # (S, n, D)
    return (z, diagnostics["z"]["n_eff"].reshape(z.shape[1:]), diagnostics["z"]["r_hat"].reshape(z.shape[1:]),
            divergences, float(kernel.step_size), float(accept))


def hmc_posterior(vae: VAE, x: torch.Tensor, num_samples: int = 1000, warmup_steps: int = 500, seed: int = 0,
                  joint: bool = True, init: Optional[torch.Tensor] = None, target_accept_prob: float = 0.8,
                  full_mass: bool = False, max_tree_depth: int = 10) -> PosteriorSamples:
    r"""Samples of p(z|x_n), proportional to p(z) p(x_n|z; theta), for each row of ``x`` ``(N, x_dim)``, by Pyro's NUTS.

    The potential is :math:`U(z) = -\sum_n [\log p(z_n) + \log p(x_n | z_n)]` with ``log p(z)`` from
    ``vae.prior()`` and ``log p(x|z)`` from the likelihood component
    (:func:`pyro_vae.evaluation.decode.log_likelihood`); the VAE's parameters are frozen for the run
    (:func:`frozen`), so gradients reach z only.

    ``joint=True`` (default) runs all N points as one chain over z of shape ``(N, D)``: the points are
    independent given theta, so the sum of their potentials has the product of the N posteriors as
    its target, and one chain costs one decoder pass of N rows per leapfrog step instead of N chains.
    The trade-off: NUTS then adapts one step size and one tree depth for all points together, set by
    the hardest (narrowest) posterior, so the easy points mix more slowly than alone. The diagonal
    mass matrix (adapted in warmup, default) rescales each coordinate and absorbs most of the
    difference in scale between points; ``full_mass=True`` adapts a dense ``(ND, ND)`` one, for
    correlated posteriors when N D is small. ``joint=False`` runs one chain per point, each adapted
    on its own, at N times the cost (measured on one CPU thread, 1000 + 300 steps, D = 2: 20 points
    jointly 8.5 s, 5 points one by one 21.6 s). Each chain starts at ``init`` ``(N, D)``, default
    :meth:`VAE.latent_summary` of q(z|x) (the encoder's mean).

    ``seed`` seeds torch's RNG for the run on a stream of its own (:func:`pyro_vae.model.own_rng`):
    repeatable, and the global stream is left as it was. Diagnostics come from ``mcmc.diagnostics()``
    (one chain: split-chain R-hat); check ``r_hat`` near 1 and ``n_eff`` before trusting the samples.
    """
    if x.dim() != 2 or x.shape[-1] != vae.x_dim:
        raise ConfigError(f"hmc_posterior: x must be (N, {vae.x_dim}), got {tuple(x.shape)}")
    if num_samples < 4 or warmup_steps < 0:
        raise ConfigError(f"hmc_posterior: num_samples must be >= 4 and warmup_steps >= 0, got "
                          f"{num_samples} and {warmup_steps}")
    x = x.to(vae.device)
    options = {"target_accept_prob": target_accept_prob, "full_mass": full_mass, "max_tree_depth": max_tree_depth}
    start = time.perf_counter()
    with own_rng(seed, vae.device), frozen(vae.parameters()):
        z0 = (vae.latent_summary(x)[0] if init is None else init.to(x)).detach().clone()
        groups = [slice(None)] if joint else [slice(n, n + 1) for n in range(x.shape[0])]
        runs = [_run_nuts(vae, x[g], z0[g], num_samples, warmup_steps, options) for g in groups]
    return PosteriorSamples(
        samples=torch.cat([r[0] for r in runs], dim=1), n_eff=torch.cat([r[1] for r in runs]),
        r_hat=torch.cat([r[2] for r in runs]), divergences=[r[3] for r in runs], step_size=[r[4] for r in runs],
        accept_rate=[r[5] for r in runs], joint=joint, seconds=time.perf_counter() - start)


# -- q against the samples ------------------------------------------------------------------------------
def q_moments(q: Distribution, num_samples: int = 4096, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Mean ``(N, D)`` and covariance ``(N, D, D)`` of q (batch ``(N,)``, event ``(D,)``), and how they were had.

    Closed form where q has them: ``covariance_matrix`` (a full- or low-rank Gaussian guide), else
    ``diag(q.variance)`` for a factorized q (mean-field Normal, Student-t with df > 2). Otherwise (a
    flow, a Student-t with df <= 2) the moments of ``num_samples`` draws on a stream seeded ``seed``.
    """
    try:
        mean = q.mean
        cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)
        if torch.isfinite(mean).all() and torch.isfinite(cov).all():
            return mean.detach(), cov.detach(), "closed form"
    except NotImplementedError:
        pass
    with own_rng(seed, q.sample().device), torch.no_grad():
        z = q.sample((num_samples,))
    return z.mean(0), sample_covariance(z), f"{num_samples} draws"


def kl_to_gaussian(q: Distribution, loc: torch.Tensor, cov: torch.Tensor, num_samples: int = 4096,
                   seed: int = 0) -> Tuple[torch.Tensor, str]:
    """KL(q || N(loc, cov)) per point, ``(N,)``: closed form for a Gaussian q (:func:`as_gaussian`, or a
    low-rank one), else the Monte Carlo mean of ``log q(z) - log N(z; loc, cov)`` over ``num_samples`` draws."""
    target = dist.MultivariateNormal(loc, covariance_matrix=cov)
    gaussian = as_gaussian(q)
    if gaussian is None and isinstance(q, dist.LowRankMultivariateNormal):
        gaussian = dist.MultivariateNormal(q.loc, covariance_matrix=q.covariance_matrix)
    with torch.no_grad():
        if gaussian is not None:
            return kl_divergence(gaussian, target), "closed form"
        with own_rng(seed, loc.device):
            z = q.sample((num_samples,))
        return (q.log_prob(z) - target.log_prob(z)).mean(0), f"Monte Carlo, {num_samples} draws"


def posterior_discrepancy(q: Distribution, samples: Union[PosteriorSamples, torch.Tensor],
                          num_q_samples: int = 4096, seed: int = 0) -> Dict[str, Union[torch.Tensor, float, str]]:
    r"""How far q(z|x_n) (batch ``(N,)``, event ``(D,)``) is from the reference samples ``(S, N, D)``, per point.

    With :math:`\hat m_n, \hat\Sigma_n` the samples' mean and (unbiased) covariance, and
    :math:`m_n, \Sigma_n` q's (:func:`q_moments`):

    - ``mean_error``: :math:`\|m_n - \hat m_n\|_2`, ``(N,)``; ``mean_mc_se`` ``(N,)``, its Monte Carlo
      floor :math:`\sqrt{\sum_d \hat\Sigma_{n,dd} / n_\mathrm{eff,nd}}` (n_eff from the MCMC diagnostics,
      or S for a bare tensor of independent draws): an error near it is noise;
    - ``cov_error``: :math:`\|\Sigma_n - \hat\Sigma_n\|_F`, ``(N,)``, and ``cov_rel_error``, that over
      :math:`\|\hat\Sigma_n\|_F`;
    - ``sd_ratio``: :math:`\sqrt{\Sigma_{n,dd} / \hat\Sigma_{n,dd}}`, ``(N, D)``: below 1, q is too narrow;
    - ``kl_gauss``: :math:`\mathrm{KL}(q_n \,\|\, N(\hat m_n, \hat\Sigma_n))`, ``(N,)``, the KL divergence to
      the Gaussian moment-matched to the samples, **not** to p(z|x) itself. It equals KL(q || p(z|x)) up to
      Monte Carlo error when the posterior is Gaussian (the linear-Gaussian model, pPCA); otherwise it
      misses what the posterior has beyond two moments (skew, several modes). Its Monte Carlo bias is
      about :math:`(D + D(D+1)/2) / (2 n_\mathrm{eff})` nats even for q = p.

    ``*_avg`` keys hold the means over points (floats); ``moments`` and ``kl_method`` say how q's
    moments and the KL were computed.
    """
    if isinstance(samples, PosteriorSamples):
        n_eff = samples.n_eff.clamp_min(1.0)
        samples = samples.samples
    else:
        n_eff = torch.full(samples.shape[1:], float(samples.shape[0]))
    if samples.dim() != 3:
        raise ConfigError(f"posterior_discrepancy: samples must be (S, N, D), got {tuple(samples.shape)}")
    if tuple(q.batch_shape) + tuple(q.event_shape) != tuple(samples.shape[1:]):
        raise ConfigError(f"posterior_discrepancy: q has batch {tuple(q.batch_shape)} and event "
                          f"{tuple(q.event_shape)}; samples are (S, N, D) = {tuple(samples.shape)}")
    samples = samples.detach()
    m_hat, cov_hat = samples.mean(0), sample_covariance(samples)
    m_q, cov_q, moments = q_moments(q, num_q_samples, seed)
    m_q, cov_q = m_q.to(m_hat), cov_q.to(cov_hat)
    var_hat = torch.diagonal(cov_hat, dim1=-2, dim2=-1)
    var_q = torch.diagonal(cov_q, dim1=-2, dim2=-1)
    kl, kl_method = kl_to_gaussian(q, m_hat.to(m_q.dtype), cov_hat.to(m_q.dtype), num_q_samples, seed)
    out: Dict[str, Union[torch.Tensor, float, str]] = {
        "mean_error": (m_q - m_hat).norm(dim=-1),
        "mean_mc_se": (var_hat / n_eff.to(var_hat)).sum(-1).sqrt(),
        "cov_error": torch.linalg.matrix_norm(cov_q - cov_hat),
        "cov_rel_error": torch.linalg.matrix_norm(cov_q - cov_hat) / torch.linalg.matrix_norm(cov_hat),
        "sd_ratio": (var_q / var_hat).sqrt(),
        "kl_gauss": kl.to(m_hat),
    }
    for key in list(out):
        out[key + "_avg"] = float(out[key].mean())
    out["moments"], out["kl_method"] = moments, kl_method
    return out


# -- PSIS k-hat -----------------------------------------------------------------------------------------
ROUNDING_ULPS = 64  # log weights this close are equal but for rounding (q = p measured 4 to 8 ulps in float32)


def khat_from_log_weights(log_weights: torch.Tensor) -> float:
    r"""Pareto k-hat of one set of importance log weights ``(S,)``, exactly as
    :func:`pyro.infer.importance.psis_diagnostic` computes it from its own (summed) log weights:

    the largest :math:`M = \lceil \min(0.2 S, 3 \sqrt S) \rceil` weights above the cutoff (the next
    largest, floored at 1e-15 of the maximum), shifted by the cutoff, fitted by
    :func:`pyro.ops.stats.fit_generalized_pareto` (Zhang & Stephens 2009 with the PSIS prior).
    Fewer than 10 weights strictly above the cutoff (too few draws) gives inf, as Pyro does. Log
    weights that differ only by rounding (within ``ROUNDING_ULPS`` units in the last place of their
    largest magnitude: q is the posterior itself, and every weight is p(x)) give -inf, the bounded
    weights of the best case; Pyro would fit the rounding noise, or find too few distinct tail values.
    """
    eps = torch.finfo(log_weights.dtype).eps if log_weights.is_floating_point() else 0.0
    lw = log_weights.detach().double().flatten()
    spread, magnitude = float(lw.max() - lw.min()), float(lw.abs().max())
    if spread <= ROUNDING_ULPS * eps * max(1.0, magnitude):
        return float("-inf")
    lw = torch.sort(lw - lw.max())[0]
    num = lw.shape[0]
    cutoff_index = -int(math.ceil(min(0.2 * num, 3.0 * math.sqrt(num)))) - 1
    lw_cutoff = max(math.log(1.0e-15), float(lw[cutoff_index]))
    tail = lw[lw > lw_cutoff]
    if tail.shape[0] < 10:
        return float("inf")
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(lw_cutoff))
    return float(k)


@torch.no_grad()
def psis_khat(vae: VAE, x: torch.Tensor, num_samples: int = 1000, q: Optional[Distribution] = None,
              seed: int = 0) -> torch.Tensor:
    r"""PSIS k-hat of q(z|x_n) as a proposal for p(z|x_n), per point: ``(N,)`` (Yao et al. 2018).

    The log weights are :math:`\log w_{sn} = \log p(x_n | z_s) + \log p(z_s) - \log q(z_s | x_n)`,
    :math:`z_s \sim q(z|x_n)`, ``num_samples`` per point
    (:func:`pyro_vae.evaluation.iwae.fused_log_weights`), drawn on a stream seeded ``seed``; ``q``
    defaults to ``vae.encoder(x)``. Each point's k-hat comes from :func:`khat_from_log_weights`, the
    computation of Pyro's ``psis_diagnostic``: that function sums the log weights over the whole
    model (all N points into one number), so it is applied here to each point's weights instead.
    Read: k-hat < 0.5 good; 0.5 to 0.7 usable; > 0.7 the importance weights' variance is effectively
    infinite and q misses posterior mass. A few hundred draws or more per point are needed for a
    stable estimate (Pyro's default is 1000).
    """
    x = x.to(vae.device)
    q = vae.encoder(x) if q is None else q
    with own_rng(seed, vae.device):
        lw = fused_log_weights(vae, x, num_samples, q)  # (S, N)
    return torch.tensor([khat_from_log_weights(lw[:, n]) for n in range(lw.shape[1])])
