"""Honest evaluation of a trained VAE: ELBOs, IWAE log-likelihood, exact log p(x) when it exists, and the gaps.

Every number is per data point (nats) and carries two different errors:

- ``se``: the standard error over the test points, ``sd_n(v_n) / sqrt(N)`` of the per-point values
  ``v_n``: how much the mean would move on another test set of the same size (test-set sampling; the
  per-point Monte Carlo noise is in it too);
- ``mc_se``: the Monte Carlo standard error of the estimate *given these points*, how much it would
  move with other draws of z (another ``--seed``): ``sqrt(sum_n Var_n) / N`` with ``Var_n`` the
  variance of point n's estimate (:func:`mc_se`); 0 for closed forms.

Two estimates on the same points are compared by their per-point difference (``paired``), whose
``se`` is far smaller than the unpaired ``sqrt(se_a^2 + se_b^2)`` when the two move together across
points, as log p(x), the IWAE and the ELBO do. The central identity, exact for the linear-Gaussian
model (probabilistic PCA):

.. math:: \\log p(x) = \\mathrm{ELBO}(x) + \\mathrm{KL}(q(z|x) \\,\\|\\, p(z|x)).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from tqdm.auto import tqdm

from pyro_vae.evaluation.bounds import elbo_terms, unit_kl_weight
from pyro_vae.evaluation.gaps import refine_guide
from pyro_vae.evaluation.iwae import iwae
from pyro_vae.evaluation.linear_gaussian import as_gaussian, linear_gaussian, marginal, posterior_distribution
from pyro_vae.inference.kl import ANALYTIC, MONTE_CARLO, analytic_kl
from pyro_vae.model import VAE

ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al. (2016): unit d is active if Cov_x(E_q[z_d]) > 0.01
ELBO_PARTICLES = 16  # z draws per point behind each ELBO estimate
ERROR_BARS = {  # what the two errors of every estimate mean, written into evaluation.json
    "se": "standard error of the mean over the test points (test-set sampling; includes per-point Monte Carlo noise)",
    "mc_se": "Monte Carlo standard error of the estimate given these test points (other z draws); 0: closed form",
    "paired": "per-point differences on the same points: mean, se over the points, mc_se",
}


# -- diagnostics of the latent space ----------------------------------------------------------------
def kl_per_dimension(q: dist.Distribution, p: dist.Distribution, num_samples: int = 256) -> Optional[torch.Tensor]:
    r"""KL(q(z_d|x) || p(z_d)) for each latent dimension ``d``, shape ``(batch, latent_dim)``.

    For q and p products over dimensions, :math:`\mathrm{KL}(q \,\|\, p) = \sum_d \mathrm{KL}(q_d \,\|\, p_d)`;
    each term in closed form where one is registered (:func:`pyro_vae.inference.kl.analytic_kl`), else
    :math:`\frac1S \sum_s [\log q_d(z_s) - \log p_d(z_s)]`, ``z_s ~ q_d``, with ``S = num_samples``.
    None when q or p is not such a product (then a per-dimension KL is not defined).
    """
    if not (isinstance(q, dist.Independent) and isinstance(p, dist.Independent)
            and q.reinterpreted_batch_ndims == 1 and p.reinterpreted_batch_ndims == 1):
        return None
    closed = analytic_kl(q, p, reduce="none")
    if closed is not None:
        return closed
    q_base, p_base = q.base_dist, p.base_dist
    z = q_base.rsample((num_samples,)) if q_base.has_rsample else q_base.sample((num_samples,))
    return (q_base.log_prob(z) - p_base.log_prob(z)).mean(0)


def stat(values: torch.Tensor, variance: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Mean over data points and its standard error over the points (``se``: test-set sampling).

    With ``variance`` ``(n,)``, the Monte Carlo variance of each point's estimate, also ``mc_se``
    (:func:`mc_se`): the Monte Carlo error of the mean given these points.
    """
    values = values.double()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    out = {"mean": float(values.mean()), "se": se}
    if variance is not None:
        out["mc_se"] = mc_se(variance)
    return out


def mc_se(variance: torch.Tensor) -> float:
    r"""Monte Carlo standard error of the mean of N independent per-point estimates with variances ``Var_n``:

    .. math:: \mathrm{mc\_se} = \frac{1}{N} \sqrt{\textstyle\sum_n \mathrm{Var}_n}.

    NaN where a ``Var_n`` is (not estimable, e.g. IWAE with K = 1); 0 for closed forms.
    """
    variance = variance.double()
    return float(variance.sum().clamp_min(0).sqrt() / variance.numel())


# -- per-point estimates with their Monte Carlo variance --------------------------------------------
def elbo_draws(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
               kl: str = ANALYTIC) -> Tuple[torch.Tensor, str]:
    """The ``num_particles`` single-particle ELBO values per point, ``(num_particles, batch)``, and the KL used.

    :func:`pyro_vae.evaluation.bounds.elbo_terms` with one particle on ``num_particles`` stacked copies
    of ``x``: the same estimator (its mean over dim 0 is ``elbo_terms(..., num_particles, kl)`` in
    distribution), with each particle's value kept for the variance. The encoder runs once per copy,
    so ``model`` and ``guide`` must treat rows independently (the VAE's own do; a per-point refined
    guide does not).
    """
    stacked = x.repeat(num_particles, *([1] * (x.dim() - 1)))
    values, used = elbo_terms(model, guide, stacked, 1, kl)
    return values.view(num_particles, x.shape[0]), used


def elbo_with_variance(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
                       kl: str = ANALYTIC) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Per-point ELBO (mean of :func:`elbo_draws`), its Monte Carlo variance ``s_n^2 / S`` (the unbiased
    sample variance of the S particle values over S), and the KL estimator used."""
    draws, used = elbo_draws(model, guide, x, num_particles, kl)
    variance = draws.var(0, unbiased=True) / num_particles if num_particles > 1 else torch.full_like(draws[0], math.nan)
    return draws.mean(0), variance, used


def iwae_with_variance(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, width: int,
                       bar=None) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Per-point IWAE bound ``log (1/K) sum_k w_k`` and its delta-method Monte Carlo variance, both ``(batch,)``.

    The bound is :func:`pyro_vae.evaluation.iwae.iwae`'s own (engine ``auto``); its ``observe`` hook also
    merges :math:`\log \sum_k w_k^2` of the same draws by a running log-sum-exp, so there is no second pass. With the
    normalized weights :math:`\tilde w_k = w_k / \sum_j w_j` (in log space),

    .. math:: \mathrm{Var}\Big[\log \frac1K \sum_k w_k\Big] \approx \frac{\mathrm{Var}(w)}{K\, \mathrm{E}[w]^2}
              \approx \frac{K \sum_k \tilde w_k^2 - 1}{K - 1},

    the sample variance of w (over K - 1) over the squared sample mean, over K. First order in
    1/K: trustworthy when the effective sample size ``1 / sum_k w~_k^2`` is large, an underestimate
    when the weights are heavy-tailed. NaN for K = 1.
    """
    squares: list = []  # running log sum_k w_k^2 of the same draws, float64

    def observe(log_w: torch.Tensor) -> None:
        chunk_lse = torch.logsumexp(2 * log_w.double(), dim=0)
        squares[:] = [chunk_lse if not squares else torch.logaddexp(squares[0], chunk_lse)]

    bound = iwae(model, guide, x, num_samples, width, bar, observe=observe)
    if num_samples == 1:
        return bound, torch.full_like(bound, math.nan)
    log_sum = bound.double() + math.log(num_samples)
    sum_sq = (squares[0] - 2 * log_sum).exp()  # sum_k w~_k^2, in [1/K, 1]
    return bound, ((num_samples * sum_sq - 1) / (num_samples - 1)).clamp_min(0)


# -- the whole evaluation -------------------------------------------------------------------------
def evaluate_points(vae: VAE, x: torch.Tensor, samples: int = 1000, batch_size: int = 256, gaps: bool = False,
                    gap_steps: int = 300, progress: bool = False, ais=None) -> Dict[str, Any]:
    """Every number of ``pyro-vae evaluate`` for the rows of ``x`` ``(n, x_dim)``; see the module docstring.

    Each estimate is ``{"mean", "se", "mc_se", ...}``: ``se`` over the test points (test-set sampling),
    ``mc_se`` the Monte Carlo error given these points (ELBO: per-point particle variance / S; IWAE:
    delta method, :func:`iwae_with_variance`; closed forms: 0). ``paired`` holds per-point differences
    on the same points and draws, ``{"mean", "se", "mc_se"}``: ``iwae_minus_elbo`` always,
    ``exact_minus_iwae`` and ``exact_minus_elbo`` when log p(x) is exact (``log_likelihood`` not None).

    With ``gaps`` (Cremer et al. 2018), q* is the best per-point Gaussian (:func:`refine_guide`):
    approximation gap = log p(x) - ELBO(q*), amortization gap = ELBO(q*) - ELBO(q(z|x)). Without
    an exact log p(x) it is AIS's when ``ais`` is given, else estimated by IWAE with q* as proposal: the
    encoder's q can be a poor proposal when the amortization gap is large.

    ``ais``: an :class:`pyro_vae.evaluation.ais.AISResult` for the same rows (its per-point ``log_px`` and
    ``variance``; :func:`pyro_vae.evaluation.references.ais_section` makes one). Then ``paired`` also has
    ``ais_minus_iwae`` (and ``exact_minus_ais`` when exact), and without an exact log p(x)
    ``kl_to_true_posterior`` is estimated by ais - elbo, the tighter lower bound.
    """
    if ais is not None and tuple(ais.log_px.shape) != (x.shape[0],):
        raise ValueError(f"evaluate_points: ais has {tuple(ais.log_px.shape)} values, want ({x.shape[0]},)")
    vae.eval()
    start = time.perf_counter()
    exact = linear_gaussian(vae)
    n = x.shape[0]
    per_point = {k: [] for k in ("elbo", "elbo_var", "elbo_mc", "elbo_mc_var", "iwae", "iwae_var", "log_p", "kl_post",
                                 "kl_dims", "q_mean", "gap_elbo", "gap_iwae", "gap_iwae_var")}
    kl_used = ANALYTIC
    width = max([x.shape[-1]] + [m.out_features for m in vae.modules() if isinstance(m, torch.nn.Linear)])
    total = n * (samples + ((gap_steps + (samples if exact is None else 0)) if gaps else 0))
    bar = tqdm(total=total, unit="draw", unit_scale=True, dynamic_ncols=True, disable=not progress,
               file=sys.stderr, desc="evaluate")
    try:
        with unit_kl_weight(vae):
            for xb in x.split(batch_size):
                with torch.no_grad():
                    for key, kl in (("elbo", ANALYTIC), ("elbo_mc", MONTE_CARLO)):
                        elbo, var, used = elbo_with_variance(vae.model, vae.guide, xb, ELBO_PARTICLES, kl)
                        kl_used = used if key == "elbo" and used == MONTE_CARLO else kl_used
                        per_point[key].append(elbo)
                        per_point[key + "_var"].append(var)
                    bound, var = iwae_with_variance(vae.model, vae.guide, xb, samples, width, bar)
                    per_point["iwae"].append(bound)
                    per_point["iwae_var"].append(var)
                    q, p = vae.encoder(xb), vae.prior()
                    per_point["q_mean"].append(q.mean)
                    per_point["kl_dims"].append(kl_per_dimension(q, p))
                    if exact is not None:
                        per_point["log_p"].append(marginal(*exact).log_prob(xb))
                        qg = as_gaussian(q)
                        if qg is not None:
                            per_point["kl_post"].append(kl_divergence(qg, posterior_distribution(*exact, xb)))
                if gaps:
                    with torch.enable_grad():  # callers may evaluate under no_grad; refining needs gradients
                        guide = refine_guide(vae, xb, steps=gap_steps, bar=bar)
                    with torch.no_grad():
                        per_point["gap_elbo"].append(elbo_terms(vae.model, guide, xb, ELBO_PARTICLES, ANALYTIC)[0])
                        if exact is None:  # q* is a better proposal than the encoder: a tighter log p(x) bound
                            bound, var = iwae_with_variance(vae.model, guide, xb, samples, width, bar)
                            per_point["gap_iwae"].append(bound)
                            per_point["gap_iwae_var"].append(var)
    finally:
        bar.close()
    cat = {k: torch.cat(v) for k, v in per_point.items() if v and all(t is not None for t in v)}
    if ais is not None:
        device = cat["iwae"].device
        cat["ais"], cat["ais_var"] = ais.log_px.detach().to(device), ais.variance.detach().to(device)
    out: Dict[str, Any] = {"n": n, "samples": samples, "error_bars": dict(ERROR_BARS)}
    out.update(_estimates(cat, kl_used, samples))
    out["paired"] = _paired(cat)
    out.update(_latent_space(cat))
    out["gaps"] = _gaps(cat, samples, gap_steps) if gaps else None
    out["seconds"] = time.perf_counter() - start
    return out


def _estimates(cat: Dict[str, torch.Tensor], kl_used: str, samples: int) -> Dict[str, Any]:
    """ELBOs, IWAE, exact log p(x) and the KL to the true posterior (exact, or the best estimate) from the
    per-point values ``cat``."""
    n = cat["elbo"].numel()
    exact_zero = torch.zeros(n, dtype=torch.float64)  # closed forms: no Monte Carlo error
    v_elbo, v_iwae = cat["elbo_var"], cat["iwae_var"]
    out: Dict[str, Any] = {}
    out["elbo"] = {**stat(cat["elbo"], v_elbo), "kl": kl_used, "particles": ELBO_PARTICLES}
    out["elbo_monte_carlo"] = {**stat(cat["elbo_mc"], cat["elbo_mc_var"]), "kl": MONTE_CARLO,
                               "particles": ELBO_PARTICLES}
    out["iwae"] = {**stat(cat["iwae"], v_iwae), "samples": samples}
    if "log_p" in cat:
        out["log_likelihood"] = {**stat(cat["log_p"], exact_zero), "exact": True}
    else:
        out["log_likelihood"] = None
    if "kl_post" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["kl_post"], exact_zero), "exact": True}
        out["identity_residual"] = {**stat(cat["log_p"] - cat["elbo"] - cat["kl_post"], v_elbo),
                                    "what": "log p(x) - ELBO - KL(q(z|x) || p(z|x))"}
        return out
    if "log_p" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["log_p"] - cat["elbo"], v_elbo), "exact": False,
                                       "what": "log p(x) - ELBO (q is not Gaussian)"}
    else:  # the tightest lower bound on log p(x) at hand, minus the ELBO
        best = "ais" if "ais" in cat else "iwae"
        out["kl_to_true_posterior"] = {
            **stat(cat[best] - cat["elbo"], cat[best + "_var"] + v_elbo), "exact": False,
            "what": f"estimate: {best} - elbo (a lower bound, up to MC error, as {best} <= log p(x))"}
    out["identity_residual"] = None
    return out


def _paired(cat: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Per-point differences of the estimates on the same points. Each estimate takes its own draws, so the
    Monte Carlo variances of a difference add (closed forms add none)."""
    v_elbo, v_iwae = cat["elbo_var"], cat["iwae_var"]
    out = {"iwae_minus_elbo": stat(cat["iwae"] - cat["elbo"], v_iwae + v_elbo)}
    if "ais" in cat:
        out["ais_minus_iwae"] = stat(cat["ais"] - cat["iwae"], cat["ais_var"] + v_iwae)
    if "log_p" in cat:
        out["exact_minus_iwae"] = stat(cat["log_p"] - cat["iwae"], v_iwae)
        out["exact_minus_elbo"] = stat(cat["log_p"] - cat["elbo"], v_elbo)
        if "ais" in cat:
            out["exact_minus_ais"] = stat(cat["log_p"] - cat["ais"], cat["ais_var"])
    return out


def _latent_space(cat: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """KL(q || prior) per latent dimension and the active units (Burda et al. 2016)."""
    n = cat["q_mean"].shape[0]
    out: Dict[str, Any] = {}
    out["kl_per_dimension"] = [float(v) for v in cat["kl_dims"].mean(0)] if "kl_dims" in cat else None
    variance = cat["q_mean"].var(0, unbiased=True) if n > 1 else torch.zeros_like(cat["q_mean"][0])
    out["posterior_mean_variance"] = [float(v) for v in variance]
    out["active_units"] = int((variance > ACTIVE_UNIT_THRESHOLD).sum())
    out["active_unit_threshold"] = ACTIVE_UNIT_THRESHOLD
    out["latent_dim"] = int(cat["q_mean"].shape[-1])
    return out


def _gaps(cat: Dict[str, torch.Tensor], samples: int, gap_steps: int) -> Dict[str, Any]:
    """Cremer et al.'s gaps; log p(x) is the exact one, else AIS's, else IWAE with the refined q* as proposal."""
    if "log_p" in cat:
        reference, source = cat["log_p"], "exact"
    elif "ais" in cat:
        reference, source = cat["ais"], "ais"
    else:
        reference, source = cat["gap_iwae"], "iwae with the refined per-point q as proposal"
    return {
        "optimal_elbo": stat(cat["gap_elbo"]),
        "iwae_optimal_proposal": None if "log_p" in cat else {**stat(cat["gap_iwae"], cat["gap_iwae_var"]),
                                                              "samples": samples},
        "approximation_gap": {**stat(reference - cat["gap_elbo"]), "log_p": source},
        "amortization_gap": stat(cat["gap_elbo"] - cat["elbo"]),
        "steps": gap_steps,
    }
