"""Which KL(q(z|x) || p(z)) an objective uses: the closed form where one exists, else the Monte Carlo estimate."""

from __future__ import annotations

from typing import Dict, Optional

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution, Independent

ANALYTIC, MONTE_CARLO = "analytic", "monte_carlo"


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


def analytic_kl(q: Distribution, p: Distribution) -> Optional[torch.Tensor]:
    """``sum_b KL(q_b || p)`` over all of q's batch, or ``None`` where no closed form is registered for the pair.

    Two ``Independent`` of the same rank (a mean-field guide and a factorized prior) are unwrapped
    first: their KL is the sum of their base distributions' KLs, Pyro's own rule, which would build
    two new distributions per call to get there.
    """
    if isinstance(q, Independent) and isinstance(p, Independent) \
            and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims:
        q, p = q.base_dist, p.base_dist
    try:
        return kl_divergence(q, p).sum()
    except NotImplementedError:  # TraceMeanField_ELBO's own fallback for a pair without a closed form
        return None
