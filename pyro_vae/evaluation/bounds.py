"""Per-point bounds on log p(x) from traced model and guide: log importance weights and the ELBO."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.inference.kl import ANALYTIC, MONTE_CARLO, analytic_kl
from pyro_vae.model import VAE


# -- per-point estimators --------------------------------------------------------------------------
@contextmanager
def unit_kl_weight(vae: VAE) -> Iterator[None]:
    """Evaluate with beta = 1: the bounds below are bounds on log p(x) only then."""
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        yield
    finally:
        vae.kl_weight = weight


def traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int):
    """Guide and replayed model traces with ``num_particles`` vectorized draws per point.

    The ``particles`` plate sits at dim -2, left of the ``data`` plate, so every site's
    ``log_prob`` has shape ``(num_particles, batch)`` -- per data point, unlike Pyro's
    ``vectorized_importance_weights``, which sums over the data plate.
    """
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def _sample_sites(trace):
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``log w_k = log p(x, z_k) - log q(z_k | x)``, ``z_k ~ q(z|x)``, shape ``(num_particles, batch)``."""
    model_trace, guide_trace = traces(model, guide, x, num_particles)
    log_w = sum(s["log_prob"] for s in _sample_sites(model_trace))
    return log_w - sum(s["log_prob"] for s in _sample_sites(guide_trace))


def elbo_terms(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
               kl: str = ANALYTIC) -> Tuple[torch.Tensor, str]:
    r"""Per-point ELBO estimate ``(batch,)`` averaged over ``num_particles`` draws, and the KL estimator used.

    ``kl: monte_carlo`` averages :math:`\log p(x, z_k) - \log q(z_k|x)`; ``kl: analytic`` averages
    :math:`\log p(x|z_k) - \mathrm{KL}(q(z|x) \,\|\, p(z))` with the KL in closed form
    (:func:`pyro_vae.inference.kl.analytic_kl`), and is ``monte_carlo`` if any latent site lacks one.
    """
    model_trace, guide_trace = traces(model, guide, x, num_particles)
    kls = [analytic_kl(site["fn"], model_trace.nodes[site["name"]]["fn"], reduce="event")
           for site in _sample_sites(guide_trace)] if kl == ANALYTIC else [None]
    if all(k is not None for k in kls):
        used = ANALYTIC
        total = sum(-k for k in kls) + sum(s["log_prob"] for s in _sample_sites(model_trace) if s["is_observed"])
    else:
        used = MONTE_CARLO
        total = sum(s["log_prob"] for s in _sample_sites(model_trace))
        total = total - sum(s["log_prob"] for s in _sample_sites(guide_trace))
    return total.expand(num_particles, x.shape[0]).mean(0), used


EVAL_BATCH = 1024


@torch.no_grad()
def elbo_per_point(vae: VAE, elbo, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Mean ELBO over the rows of ``x`` (nats per data point) with beta = 1."""
    weight, vae.kl_weight = vae.kl_weight, 1.0
    device = next(vae.parameters()).device
    try:
        total = sum(-elbo.differentiable_loss(vae.model, vae.guide, xb.to(device)) for xb in x.split(batch_size))
    finally:
        vae.kl_weight = weight
    return float(total) / len(x)
