"""Training objectives: which Pyro ELBO a config asks for, and which KL each latent site really uses."""

from __future__ import annotations

from typing import Dict

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .config import InferenceConfig

ANALYTIC, MONTE_CARLO = "analytic", "monte_carlo"
ELBOS = {ANALYTIC: TraceMeanField_ELBO, MONTE_CARLO: Trace_ELBO}


def build_elbo(inference: InferenceConfig) -> ELBO:
    """``kl: analytic`` -> ``TraceMeanField_ELBO`` (closed-form KL(q || p) per site where Pyro has one,
    Monte Carlo otherwise); ``kl: monte_carlo`` -> ``Trace_ELBO`` (log q(z|x) - log p(z) at sampled z).

    Particles are vectorized: one batched pass draws ``num_particles`` z per data point.
    """
    k = inference.num_particles
    return ELBOS[inference.kl](num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


def kl_report(model, guide, x: torch.Tensor, kl: str) -> Dict[str, str]:
    """For each latent site, the KL estimator the ELBO actually uses: ``analytic`` or ``monte_carlo``.

    ``TraceMeanField_ELBO`` silently falls back to Monte Carlo for a (q, p) pair without a
    registered ``kl_divergence``; this replays the same check on one trace so the run can say so.
    """
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    report = {}
    for name in model_trace.stochastic_nodes:
        site = model_trace.nodes[name]
        if site_is_subsample(site):  # the "data" plate's own index site
            continue
        if kl == MONTE_CARLO:
            report[name] = MONTE_CARLO
            continue
        try:
            kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            report[name] = ANALYTIC
        except NotImplementedError:
            report[name] = MONTE_CARLO
    return report
