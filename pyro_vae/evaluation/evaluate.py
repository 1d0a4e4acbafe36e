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
from typing import Any, Dict, Optional

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


def stat(values: torch.Tensor) -> Dict[str, float]:
    """Mean over data points and its standard error."""
    values = values.double()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(values.mean()), "se": se}


# -- the whole evaluation -------------------------------------------------------------------------
def evaluate_points(vae: VAE, x: torch.Tensor, samples: int = 1000, batch_size: int = 256, gaps: bool = False,
                    gap_steps: int = 300, progress: bool = False) -> Dict[str, Any]:
    """Every number of ``pyro-vae evaluate`` for the rows of ``x`` ``(n, x_dim)``; see the module docstring.

    With ``gaps`` (Cremer et al. 2018), q* is the best per-point Gaussian (:func:`refine_guide`):
    approximation gap = log p(x) - ELBO(q*), amortization gap = ELBO(q*) - ELBO(q(z|x)). Without
    an exact log p(x) it is estimated by IWAE with q* as proposal: the encoder's q can be a poor
    proposal when the amortization gap is large.
    """
    vae.eval()
    start = time.perf_counter()
    exact = linear_gaussian(vae)
    n = x.shape[0]
    per_point = {k: [] for k in ("elbo", "elbo_mc", "iwae", "log_p", "kl_post", "kl_dims", "q_mean", "gap_elbo", "gap_iwae")}
    kl_used = ANALYTIC
    width = max([x.shape[-1]] + [m.out_features for m in vae.modules() if isinstance(m, torch.nn.Linear)])
    total = n * (samples + ((gap_steps + (samples if exact is None else 0)) if gaps else 0))
    bar = tqdm(total=total, unit="draw", unit_scale=True, dynamic_ncols=True, disable=not progress,
               file=sys.stderr, desc="evaluate")
    try:
        with unit_kl_weight(vae):
            for xb in x.split(batch_size):
                with torch.no_grad():
                    elbo, used = elbo_terms(vae.model, vae.guide, xb, ELBO_PARTICLES, ANALYTIC)
                    kl_used = used if used == MONTE_CARLO else kl_used
                    per_point["elbo"].append(elbo)
                    per_point["elbo_mc"].append(elbo_terms(vae.model, vae.guide, xb, ELBO_PARTICLES, MONTE_CARLO)[0])
                    per_point["iwae"].append(iwae(vae.model, vae.guide, xb, samples, width, bar))
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
                            per_point["gap_iwae"].append(iwae(vae.model, guide, xb, samples, width, bar))
    finally:
        bar.close()
    cat = {k: torch.cat(v) for k, v in per_point.items() if v and all(t is not None for t in v)}
    out: Dict[str, Any] = {"n": n, "samples": samples}
    out["elbo"] = {**stat(cat["elbo"]), "kl": kl_used, "particles": ELBO_PARTICLES}
    out["elbo_monte_carlo"] = {**stat(cat["elbo_mc"]), "kl": MONTE_CARLO, "particles": ELBO_PARTICLES}
    out["iwae"] = {**stat(cat["iwae"]), "samples": samples}
    if "log_p" in cat:
        out["log_likelihood"] = {**stat(cat["log_p"]), "exact": True}
    else:
        out["log_likelihood"] = None
    if "kl_post" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["kl_post"]), "exact": True}
        out["identity_residual"] = {**stat(cat["log_p"] - cat["elbo"] - cat["kl_post"]),
                                    "what": "log p(x) - ELBO - KL(q(z|x) || p(z|x))"}
    elif "log_p" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["log_p"] - cat["elbo"]), "exact": False,
                                       "what": "log p(x) - ELBO (q is not Gaussian)"}
        out["identity_residual"] = None
    else:
        out["kl_to_true_posterior"] = {**stat(cat["iwae"] - cat["elbo"]), "exact": False,
                                       "what": "estimate: iwae - elbo (a lower bound, up to MC error, as iwae <= log p(x))"}
        out["identity_residual"] = None
    if "kl_dims" in cat:
        out["kl_per_dimension"] = [float(v) for v in cat["kl_dims"].mean(0)]
    else:
        out["kl_per_dimension"] = None
    variance = cat["q_mean"].var(0, unbiased=True) if n > 1 else torch.zeros_like(cat["q_mean"][0])
    out["posterior_mean_variance"] = [float(v) for v in variance]
    out["active_units"] = int((variance > ACTIVE_UNIT_THRESHOLD).sum())
    out["active_unit_threshold"] = ACTIVE_UNIT_THRESHOLD
    out["latent_dim"] = int(cat["q_mean"].shape[-1])
    if gaps:
        reference = cat["log_p"] if "log_p" in cat else cat["gap_iwae"]
        out["gaps"] = {
            "optimal_elbo": stat(cat["gap_elbo"]),
            "iwae_optimal_proposal": None if "log_p" in cat else {**stat(cat["gap_iwae"]), "samples": samples},
            "approximation_gap": {**stat(reference - cat["gap_elbo"]),
                                  "log_p": "exact" if "log_p" in cat else "iwae with the refined per-point q as proposal"},
            "amortization_gap": stat(cat["gap_elbo"] - cat["elbo"]),
            "steps": gap_steps,
        }
    else:
        out["gaps"] = None
    out["seconds"] = time.perf_counter() - start
    return out
