r"""Gold-standard references for ``pyro-vae evaluate``: AIS, BDMC and an MCMC posterior, as evaluation.json sections.

Each function runs one algorithm and returns plain JSON-able dicts (nats per data point):

- :func:`ais_section`: annealed importance sampling (:func:`pyro_vae.evaluation.ais.ais`) from q(z|x) or
  the prior, per test point,

  .. math:: \log \hat p(x_n) = \log \frac1C \sum_{c=1}^C w_{c,n}, \qquad E[w_{c,n}] = p(x_n),

  a stochastic lower bound that tightens toward log p(x) with the number of temperatures T. Its
  ``mc_se`` is the delta-method error :math:`\frac1N \sqrt{\sum_n \mathrm{Var}_n}` with
  :math:`\mathrm{Var}_n \approx (C \sum_c \tilde w_{c,n}^2 - 1) / (C - 1)` (``AISResult.variance``);
- :func:`bdmc_section`: bidirectional Monte Carlo on points simulated from the model,
  :math:`z^* \sim p(z)`, :math:`x \sim p(x|z^*)`: forward AIS gives ``lower`` and reverse AIS from the
  exact posterior sample :math:`z^*` gives ``upper``, with
  :math:`E[\mathrm{lower}] \le \log p(x) \le E[\mathrm{upper}]`, so ``gap = upper - lower`` bounds (in
  expectation) the error of forward AIS with these settings on such data;
- :func:`posterior_section`: NUTS samples of :math:`p(z|x) \propto p(z)\, p(x|z)` for a few points
  (:func:`pyro_vae.evaluation.reference_posterior.hmc_posterior`), q(z|x) against them (mean and
  covariance errors, :math:`\mathrm{KL}(q \,\|\, N(\hat m, \hat\Sigma))`), and PSIS k-hat of q as a
  proposal (Yao et al. 2018: below 0.5 good, 0.5 to 0.7 ok, above 0.7 unreliable). For a linear-Gaussian
  model p(z|x) is known in closed form, so the section also holds the exact
  :math:`\mathrm{KL}(q \,\|\, p(z|x))` and how far the HMC moments are from the exact ones: a check that the
  reference is right.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.distributions import Distribution, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import INITIALS, AISResult, ais_points, bdmc
from pyro_vae.evaluation.evaluate import stat
from pyro_vae.evaluation.linear_gaussian import as_gaussian, linear_gaussian, marginal, posterior_distribution
from pyro_vae.evaluation.reference_posterior import (
    PosteriorSamples,
    hmc_posterior,
    kl_to_gaussian,
    posterior_discrepancy,
    psis_khat,
    sample_covariance,
)
from pyro_vae.model import VAE

PSIS_SAMPLES = 1000  # draws of q per point behind each k-hat (Pyro's default; a few hundred are needed)
KHAT_GOOD, KHAT_OK = 0.5, 0.7  # Yao et al. (2018)
POSTERIOR_METHODS = ("hmc",)
DISCREPANCY_KEYS = ("mean_error", "mean_mc_se", "cov_rel_error", "kl_gauss")  # of posterior_discrepancy, per point


# -- settings, checked before anything runs -------------------------------------------------------
@dataclass(frozen=True)
class AISSettings:
    """AIS on every point of the split: T temperatures, C chains per point, L leapfrog steps per HMC move."""

    steps: int = 100
    chains: int = 16
    leapfrog_steps: int = 10
    initial: str = "encoder"

    def check(self) -> None:
        _at_least(("ais steps", self.steps, 1), ("ais chains", self.chains, 1),
                  ("ais leapfrog_steps", self.leapfrog_steps, 1))
        if self.initial not in INITIALS:
            raise ConfigError(f"ais initial {self.initial!r}: must be one of {', '.join(INITIALS)}")


@dataclass(frozen=True)
class BDMCSettings:
    """BDMC on ``points`` points simulated from the model, one forward and one reverse run per T in ``steps``."""

    points: int = 32
    steps: Tuple[int, ...] = (10, 100)
    chains: int = 4
    leapfrog_steps: int = 10

    def check(self) -> None:
        _at_least(("bdmc points", self.points, 1), ("bdmc chains", self.chains, 1),
                  ("bdmc leapfrog_steps", self.leapfrog_steps, 1))
        if not self.steps or any(int(t) != t or t < 1 for t in self.steps):
            raise ConfigError(f"bdmc steps {list(self.steps)}: must be one or more integers >= 1")


@dataclass(frozen=True)
class PosteriorSettings:
    """A reference posterior for the first ``points`` points of the split (all of them if fewer)."""

    method: str = "hmc"
    points: int = 5
    samples: int = 500
    warmup: int = 300

    def check(self) -> None:
        if self.method not in POSTERIOR_METHODS:
            raise ConfigError(f"posterior method {self.method!r}: must be one of {', '.join(POSTERIOR_METHODS)}")
        _at_least(("posterior points", self.points, 1), ("posterior samples", self.samples, 4),
                  ("posterior warmup", self.warmup, 0))


def _at_least(*checks: Tuple[str, int, int]) -> None:
    for name, value, least in checks:
        if value < least:
            raise ConfigError(f"{name} {value}: must be >= {least}")


def _floats(t: torch.Tensor) -> List[float]:
    return [float(v) for v in t.detach().double().flatten()]


# -- the sections ---------------------------------------------------------------------------------
def ais_section(vae: VAE, x: torch.Tensor, num_steps: int = 100, num_chains: int = 16, leapfrog_steps: int = 10,
                batch_size: int = 256, initial: str = "encoder", bar=None) -> Tuple[Dict[str, Any], AISResult]:
    """AIS log p(x) of every row of ``x``, ``batch_size`` points at a time (:func:`ais_points`).

    Returns the section ``{"mean", "se", "mc_se", "per_point", "steps", "chains", "leapfrog_steps",
    "initial", "accept", "ess", "seconds"}`` (``accept``: mean HMC acceptance; ``ess``: mean effective
    sample size of the C weights, in [1, C]) and the :class:`AISResult`, whose ``log_px`` and ``variance``
    per point :func:`pyro_vae.evaluation.evaluate.evaluate_points` pairs with the other estimates.
    Draws come from torch's global RNG; ``bar`` advances by N points per temperature.
    """
    vae.eval()
    start = time.perf_counter()
    result = ais_points(vae, x.to(vae.device), batch_size, bar=bar, num_steps=num_steps, num_chains=num_chains,
                        leapfrog_steps=leapfrog_steps, initial=initial)
    accept = result.accept[~result.accept.isnan()]
    section = {**stat(result.log_px, result.variance), "per_point": _floats(result.log_px), "steps": num_steps,
               "chains": num_chains, "leapfrog_steps": leapfrog_steps, "initial": initial,
               "accept": float(accept.mean()) if accept.numel() else math.nan, "ess": float(result.ess.mean()),
               "seconds": time.perf_counter() - start}
    return section, result


def bdmc_section(vae: VAE, num_points: int, steps_list: Sequence[int], num_chains: int = 4,
                 leapfrog_steps: int = 10, seed: int = 0) -> Dict[str, Any]:
    """BDMC (:func:`pyro_vae.evaluation.ais.bdmc`, forward from the prior) on ``num_points`` points simulated from
    ``vae``, one row per T in ``steps_list`` (sorted, each once): ``{"steps", "lower", "upper", "gap", "gap_se",
    "accept", "seconds"}``, means over the points, ``gap_se`` the standard error of the per-point gap.

    Every row simulates the same points (the same ``seed``), so the rows differ only in T. For a linear-Gaussian
    model ``log_likelihood`` is the exact mean log p(x) of those points and each row also has
    ``lower_minus_exact`` and ``upper_minus_exact`` (``{"mean", "se"}`` of the per-point differences): the
    sandwich checked against the truth. Runs on a stream of its own; the global RNG is left as it was.
    """
    vae.eval()
    exact = linear_gaussian(vae, torch.float64)
    rows, log_p = [], None
    for steps in sorted(set(int(t) for t in steps_list)):
        start = time.perf_counter()
        result = bdmc(vae, num_points, num_steps=steps, num_chains=num_chains, leapfrog_steps=leapfrog_steps,
                      seed=seed)
        gap = stat(result.gap)
        accept = result.forward.accept[~result.forward.accept.isnan()]
        row = {"steps": steps, "lower": float(result.lower.mean()), "upper": float(result.upper.mean()),
               "gap": gap["mean"], "gap_se": gap["se"],
               "accept": float(accept.mean()) if accept.numel() else math.nan}
        if exact is not None:
            log_p = marginal(*exact).log_prob(result.x.double())
            row["lower_minus_exact"] = stat(result.lower - log_p)
            row["upper_minus_exact"] = stat(result.upper - log_p)
        rows.append({**row, "seconds": time.perf_counter() - start})
    return {"num_points": num_points, "chains": num_chains, "leapfrog_steps": leapfrog_steps, "initial": "prior",
            "seed": seed, "data": "simulated from the model: z ~ p(z), x ~ p(x|z)",
            "log_likelihood": None if log_p is None else float(log_p.mean()), "rows": rows,
            "seconds": sum(row["seconds"] for row in rows)}


def khat_reading(k: float) -> str:
    """Yao et al.'s reading of a PSIS k-hat: ``good`` (< 0.5), ``ok`` (0.5 to 0.7), ``unreliable`` (> 0.7)."""
    return "good" if k < KHAT_GOOD else "ok" if k <= KHAT_OK else "unreliable"


def posterior_section(vae: VAE, x: torch.Tensor, num_points: int = 5, num_samples: int = 500,
                      warmup_steps: int = 300, seed: int = 0) -> Dict[str, Any]:
    """q(z|x) against NUTS samples of p(z|x) on the first ``num_points`` rows of ``x`` (all if fewer).

    Per point (``per_point``) and averaged over the points: ``mean_error`` :math:`\\|m_q - \\hat m\\|` with its
    Monte Carlo floor ``mean_mc_se``, ``cov_rel_error`` :math:`\\|\\Sigma_q - \\hat\\Sigma\\|_F / \\|\\hat\\Sigma\\|_F`,
    ``kl_gauss`` KL(q || N(m_hat, Sigma_hat)) (:func:`posterior_discrepancy`) and ``khat``, PSIS k-hat of
    q with ``PSIS_SAMPLES`` draws per point (:func:`psis_khat`; ``khat_counts`` reads it by
    :func:`khat_reading`). ``nuts``: the sampler's diagnostics (``r_hat_max`` near 1 and a large
    ``n_eff_min`` before the numbers are trusted). ``exact`` (linear-Gaussian models, else None): the closed-form
    KL(q || p(z|x)) (``kl``), and the HMC sample moments against the exact ones (``hmc_mean_error`` with
    floor ``hmc_mean_mc_se``, ``hmc_cov_rel_error``). A point whose samples have no positive-definite
    covariance (the chain hardly moved: too few samples or warmup) gets NaN in the sample-based numbers and
    is counted in ``stuck_points``; the averages are over the others. NUTS and the q draws run on streams
    seeded ``seed``.
    """
    vae.eval()
    start = time.perf_counter()
    xs = x[:num_points].to(vae.device)
    samples = hmc_posterior(vae, xs, num_samples=num_samples, warmup_steps=warmup_steps, seed=seed)
    moving = torch.linalg.cholesky_ex(sample_covariance(samples.samples).double()).info == 0
    with torch.no_grad():
        found, moments, kl_method = _discrepancy(lambda rows: vae.encoder(xs[rows]), samples, moving, seed)
    khat = psis_khat(vae, xs, PSIS_SAMPLES, seed=seed)
    readings = [khat_reading(float(k)) for k in khat]
    section: Dict[str, Any] = {
        "method": "hmc", "points": int(xs.shape[0]), "samples": num_samples, "warmup": warmup_steps, "seed": seed,
        **{k: _nanmean(v) for k, v in found.items()},
        "khat": float(khat.mean()), "khat_max": float(khat.max()), "psis_samples": PSIS_SAMPLES,
        "khat_counts": {r: readings.count(r) for r in ("good", "ok", "unreliable")},
        "moments": moments, "kl_method": kl_method, "stuck_points": int((~moving).sum()),
        "per_point": {**{k: _floats(v) for k, v in found.items()}, "khat": _floats(khat), "khat_reading": readings},
        "nuts": samples.summary(),
        "exact": _exact_posterior_check(vae, xs, samples, moving, seed),
    }
    section["seconds"] = time.perf_counter() - start
    return section


def _nanmean(t: torch.Tensor) -> float:
    kept = t[~t.isnan()]
    return float(kept.double().mean()) if kept.numel() else math.nan


def _discrepancy(q_of: Callable[[torch.Tensor], Distribution], samples: PosteriorSamples, moving: torch.Tensor,
                 seed: int) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """:func:`posterior_discrepancy` of ``q_of(rows)`` on the points ``moving`` ``(N,)`` (bool), NaN at the others:
    ``({key: (N,)} for DISCREPANCY_KEYS, how q's moments were had, how the KL was)``."""
    rows = moving.nonzero().flatten()
    out = {k: torch.full(moving.shape, math.nan, dtype=torch.float64) for k in DISCREPANCY_KEYS}
    if rows.numel() == 0:
        return out, "n/a", "n/a"
    kept = replace(samples, samples=samples.samples[:, rows], n_eff=samples.n_eff[rows], r_hat=samples.r_hat[rows])
    found = posterior_discrepancy(q_of(rows), kept, seed=seed)
    for k in DISCREPANCY_KEYS:
        out[k][rows] = found[k].detach().double().cpu()
    return out, found["moments"], found["kl_method"]


def _exact_posterior_check(vae: VAE, x: torch.Tensor, samples: PosteriorSamples, moving: torch.Tensor,
                           seed: int) -> Optional[Dict[str, Any]]:
    """For a linear-Gaussian ``vae``: exact KL(q || p(z|x)) and the HMC moments against p(z|x)'s; else None."""
    exact = linear_gaussian(vae)
    if exact is None:
        return None
    with torch.no_grad():
        q, p = vae.encoder(x), posterior_distribution(*exact, x)
        gaussian = as_gaussian(q)
        if gaussian is not None:
            kl, how = kl_divergence(gaussian, p), "closed form"
        else:
            kl, how = kl_to_gaussian(q, p.mean, p.covariance_matrix, seed=seed)
        check, _, _ = _discrepancy(lambda rows: posterior_distribution(*exact, x[rows]), samples, moving, seed)
    per_point = {"kl": _floats(kl), "hmc_mean_error": _floats(check["mean_error"]),
                 "hmc_mean_mc_se": _floats(check["mean_mc_se"]), "hmc_cov_rel_error": _floats(check["cov_rel_error"])}
    return {"kl": float(kl.double().mean()), "kl_method": how, "hmc_mean_error": _nanmean(check["mean_error"]),
            "hmc_mean_mc_se": _nanmean(check["mean_mc_se"]), "hmc_cov_rel_error": _nanmean(check["cov_rel_error"]),
            "per_point": per_point}
