"""Which KL(q(z|x) || p(z)) an objective uses: the closed form where one exists, else the Monte Carlo estimate.

:func:`analytic_kl` is the one test of "is there a closed form for this (q, p) pair?": the ELBO's
fused path, :func:`kl_report`, and the evaluation's per-point ELBO and per-dimension KL all ask it.
"""

from __future__ import annotations

from typing import Dict, Optional

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution, Independent

ANALYTIC, MONTE_CARLO = "analytic", "monte_carlo"
REDUCTIONS = ("all", "event", "none")


def kl_report(model, guide, x: torch.Tensor, kl: str) -> Dict[str, str]:
    """For each latent site, the KL estimator the ELBO actually uses: ``analytic`` or ``monte_carlo``.

    ``TraceMeanField_ELBO`` silently falls back to Monte Carlo for a (q, p) pair without a
    registered ``kl_divergence``; this replays the same check (:func:`analytic_kl`) on one trace so
    the run can say so.
    """
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    report = {}
    for name in model_trace.stochastic_nodes:
        site = model_trace.nodes[name]
        if site_is_subsample(site):  # the "data" plate's own index site
            continue
        closed = kl == ANALYTIC and analytic_kl(guide_trace.nodes[name]["fn"], site["fn"]) is not None
        report[name] = ANALYTIC if closed else MONTE_CARLO
    return report


def analytic_kl(q: Distribution, p: Distribution, reduce: str = "all") -> Optional[torch.Tensor]:
    r"""The closed-form KL(q || p), or ``None`` where none is registered for the pair (the caller's Monte Carlo fallback).

    Two ``Independent`` of the same rank r (a mean-field guide and a factorized prior) are unwrapped
    first: :math:`\mathrm{KL}(\prod_d q_d \,\|\, \prod_d p_d) = \sum_d \mathrm{KL}(q_d \,\|\, p_d)`, Pyro's
    own rule, which would build two new distributions per call to get there. ``reduce``:

    * ``all`` -- the sum over all of q's batch (and p's, broadcast): a scalar;
    * ``event`` -- one KL per batch element, shape ``broadcast(q.batch_shape, p.batch_shape)``, e.g. ``(batch,)``;
    * ``none`` -- for such an ``Independent`` pair the per-coordinate terms :math:`\mathrm{KL}(q_d \,\|\, p_d)`,
      shape batch + event, e.g. ``(batch, latent_dim)``; for any other pair the same as ``event``.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"analytic_kl reduce={reduce!r}: must be one of {', '.join(REDUCTIONS)}")
    event_dims = 0
    if isinstance(q, Independent) and isinstance(p, Independent) \
            and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims:
        q, p, event_dims = q.base_dist, p.base_dist, q.reinterpreted_batch_ndims
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:  # TraceMeanField_ELBO's own fallback for a pair without a closed form
        return None
    if reduce == "all":
        return kl.sum()  # one reduction over every element: the fused closed forms match this bit for bit
    if reduce == "event" and event_dims:
        return kl.sum(tuple(range(-event_dims, 0)))
    return kl
