r"""Path-derivative gradient estimators: STL for the ELBO and DReG for the IWAE bound, in Pyro and fused form.

Notation: ``z_k = g_phi(eps_k)`` reparameterized draws from ``q_phi(z|x)``, beta = ``kl_weight``, and the
log weight with the model part ``m`` (log p(x|z) + beta log p(z), the decoder's and prior's theta):

.. math:: \log w_k = m_\theta(z_k) - \beta \log q_\phi(z_k|x).

**STL** (sticking the landing, Roeder et al. 2017), ``objective: elbo``: the value is the Monte Carlo ELBO
:math:`\frac1K \sum_k \log w_k`; the gradient drops the score term :math:`-\beta\,\partial_\phi \log q_\phi(z)|_z`
(expectation 0 under q), i.e. it is the gradient of
:math:`\frac1K\sum_k m_\theta(z_k) - \beta \log q_{\bar\phi}(z_k|x)` with phi stopped (:math:`\bar\phi`) inside log q
and z keeping its path derivative.
Unbiased for theta and phi; zero for phi when q is the exact posterior (log w is then constant in z).

**DReG** (doubly reparameterized, Tucker et al. 2019), ``objective: iwae``: the value is the IWAE bound
:math:`\log \frac1K \sum_k w_k`; with :math:`\tilde w_k = w_k / \sum_j w_j`, the gradients are

.. math:: \nabla_\theta = \sum_k \tilde w_k \nabla_\theta \log w_k, \qquad
          \nabla_\phi = \sum_k \tilde w_k^2 \, \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}
          \quad (\phi \text{ stopped inside } \log q).

Implementation (one function each, :func:`stl_bound` and :func:`dreg_bound`, shared by both engines). Log q with
phi stopped is never built as a distribution: for any guide,
:math:`\log q_\phi(z) - \log q_\phi(\bar z) + \mathrm{sg}[\log q_\phi(\bar z)]` (``\bar z`` = z detached) has the
value of :math:`\log q(z)` and the gradient of :math:`\log q_{\bar\phi}(z)`, the score parts cancelling. Theta's
gradient is kept out of DReG's phi term the same way: :math:`\log w(z) - \log w(\bar z)` is 0 in value and in
its theta-gradient, and its phi-gradient is the path term alone. So DReG's surrogate is

.. math:: S = \log \frac1K \sum_k e^{m_\theta(\bar z_k) - \beta\,\mathrm{sg}[\log q(\bar z_k)]}
          + \sum_k \mathrm{sg}[\tilde w_k^2]\,\big[\log w_k(z_k) - \log w_k(\bar z_k)\big],

returned straight-through (value: the bound). It evaluates the model at ``z`` and at ``z`` detached (two
decoder passes); Pyro's form replays the model a second time on the guide trace with its values detached.
"""

from __future__ import annotations

from typing import Callable, Tuple

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from pyro_vae.config import InferenceConfig
from pyro_vae.inference.elbo import log_likelihood_of
from pyro_vae.inference.kl import MONTE_CARLO
from pyro_vae.inference.renyi import RenyiBound, renyi_bound
from pyro_vae.inference.score_function import straight_through
from pyro_vae.model import VAE


def stl_bound(m: torch.Tensor, log_q: torch.Tensor, log_q_stopped_z: torch.Tensor) -> torch.Tensor:
    """The STL ELBO term per particle, same shape as its inputs: value ``m - log_q``, gradient with the score dropped.

    ``m``: the model's log density at ``z`` (theta and z live); ``log_q``: beta log q(z|x) at ``z``;
    ``log_q_stopped_z``: the same at ``z.detach()`` (phi live: its gradient is the score term it cancels).
    """
    return m - log_q + (log_q_stopped_z - log_q_stopped_z.detach())


def dreg_bound(m: torch.Tensor, m_stopped_z: torch.Tensor, log_q: torch.Tensor,
               log_q_stopped_z: torch.Tensor) -> torch.Tensor:
    r"""The IWAE bound per data point ``(batch,)`` with DReG's gradients, from ``(K, batch)`` log densities.

    ``m`` / ``log_q``: the model's log density and beta log q at ``z``; ``m_stopped_z`` / ``log_q_stopped_z``:
    the same at ``z.detach()`` (parameters live). See the module docstring for the surrogate.
    """
    log_w = m_stopped_z - log_q_stopped_z.detach()  # the log weights; gradient: theta's only
    bound = renyi_bound(log_w, 0.0)  # theta: sum_k w~_k grad log w_k
    w2 = torch.softmax(log_w.detach(), dim=0).pow(2)  # (K, batch) normalized weights, squared
    path = (w2 * ((m - m_stopped_z) - (log_q - log_q_stopped_z))).sum(0)  # phi: the path term only; value 0
    return straight_through(bound, bound + path)


# -- Pyro form ------------------------------------------------------------------------------------------------
def _model_log_prob(model_trace, sum_dims) -> torch.Tensor:
    """``m``: the model trace's log densities (scaled as in the trace), summed over its sites and ``sum_dims``."""
    return sum(torch_sum(s["log_prob"], sum_dims) for s in model_trace.nodes.values() if s["type"] == "sample")


def _guide_log_probs(guide_trace, sum_dims) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log_q, log_q at z detached)`` over the guide's latent sites (scaled and masked as in the trace)."""
    log_q, log_q_stopped_z = 0.0, 0.0
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if not site["fn"].has_rsample:
            raise ValueError(f"site {name!r}: STL and DReG need a reparameterized guide (this one cannot rsample)")
        stopped = scale_and_mask(site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"])
        log_q = log_q + torch_sum(site["log_prob"], sum_dims)
        log_q_stopped_z = log_q_stopped_z + torch_sum(stopped, sum_dims)
    return log_q, log_q_stopped_z


def _replay_on_stopped_values(model: Callable, guide_trace, args, kwargs):
    """The model's trace replayed on ``guide_trace`` with the latent values detached (log-probs computed)."""
    stopped = guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            stopped.nodes[name] = dict(site, value=site["value"].detach())
    trace = poutine.trace(poutine.replay(model, trace=stopped)).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    return trace


class StickingTheLanding(Trace_ELBO):
    r"""The Monte Carlo ELBO (:class:`~pyro.infer.Trace_ELBO`'s value) with the STL gradient: the score term of
    every (reparameterized) guide site dropped, ``log q`` differentiated through ``z`` only."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            # sum_dims=set(): every dimension is summed (data plate and vectorized particles alike)
            m = _model_log_prob(model_trace, set())
            elbo = elbo + stl_bound(m, *_guide_log_probs(guide_trace, set())).sum() / self.num_particles
        warn_if_nan(elbo, "loss")
        return -elbo


class DoublyReparameterizedIWAE(RenyiBound):
    r"""The IWAE bound (:class:`RenyiBound` with alpha = 0, the same value) with DReG's gradients."""

    def __init__(self, **kwargs):
        super().__init__(alpha=0.0, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        replayed = self._vectorized_num_particles(model) if self.vectorize_particles else model
        parts = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            stopped_trace = _replay_on_stopped_values(replayed, guide_trace, args, kwargs)
            parts.append((_model_log_prob(model_trace, sum_dims), _model_log_prob(stopped_trace, sum_dims),
                          *_guide_log_probs(guide_trace, sum_dims)))
        vectorized = self.vectorize_particles and self.num_particles > 1
        k = self.num_particles
        # vectorized: one trace whose leading dim is the particle plate; else one trace per particle
        terms = [(p[0] if vectorized else torch.stack(list(p))).reshape(k, -1) for p in zip(*parts)]
        return -dreg_bound(*terms).sum()


def pyro_stl(inference: InferenceConfig) -> ELBO:
    """:class:`StickingTheLanding` with ``num_particles`` vectorized draws."""
    k = inference.num_particles
    return StickingTheLanding(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


def pyro_dreg(inference: InferenceConfig) -> ELBO:
    """:class:`DoublyReparameterizedIWAE` with ``num_particles`` vectorized draws."""
    k = inference.num_particles
    return DoublyReparameterizedIWAE(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


# -- fused form -----------------------------------------------------------------------------------------------
def _draw(vae: VAE, x: torch.Tensor, num_particles: int, kl_weight):
    """``(z, q, p, beta log q(z), beta log q(z detached))``: the draws Pyro's vectorized particle plate makes."""
    q = vae.encoder(x)  # batch (B,), event (latent_dim,)
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
    return z, q, vae.prior(), kl_weight * q.log_prob(z), kl_weight * q.log_prob(z.detach())


def _fused_model_log_prob(vae: VAE, p, z: torch.Tensor, x: torch.Tensor, kl_weight) -> torch.Tensor:
    """``m(z) = log p(x|z) + beta log p(z)``, ``z.shape[:-1]``."""
    return log_likelihood_of(vae, vae.decoder(z), x) + kl_weight * p.log_prob(z)


def fused_stl_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, kl: str = MONTE_CARLO,
                   kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Minus the Monte Carlo ELBO of ``x`` summed over the batch, with STL's gradient: :class:`StickingTheLanding`'s
    value and gradients for the same seed (``kl`` must be ``monte_carlo``: STL is defined on the MC form)."""
    if kl != MONTE_CARLO:
        raise ValueError(f"STL needs kl={MONTE_CARLO!r}, got {kl!r}")
    z, q, p, log_q, log_q_stopped_z = _draw(vae, x, num_particles, kl_weight)
    elbo = stl_bound(_fused_model_log_prob(vae, p, z, x, kl_weight), log_q, log_q_stopped_z).sum()
    return -(elbo / num_particles if num_particles > 1 else elbo)


def fused_dreg_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, alpha: float = 0.0,
                    kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Minus the IWAE bound of ``x`` summed over the batch, with DReG's gradients: :class:`DoublyReparameterizedIWAE`'s
    value and gradients for the same seed (``alpha`` must be 0: DReG here is for the IWAE bound)."""
    if alpha != 0.0:
        raise ValueError(f"DReG is implemented for the IWAE bound (alpha 0), got alpha={alpha}")
    z, q, p, log_q, log_q_stopped_z = _draw(vae, x, num_particles, kl_weight)
    m = _fused_model_log_prob(vae, p, z, x, kl_weight)
    m_stopped_z = _fused_model_log_prob(vae, p, z.detach(), x, kl_weight)
    k = num_particles
    return -dreg_bound(m.reshape(k, -1), m_stopped_z.reshape(k, -1), log_q.reshape(k, -1),
                       log_q_stopped_z.reshape(k, -1)).sum()
