"""The Renyi bound (alpha = 0: the IWAE bound): Pyro's ``RenyiELBO`` made differentiable and, beside it, its fused form."""

from __future__ import annotations

import math
from typing import Callable

import torch
from pyro.infer import ELBO, RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum

from pyro_vae.config import InferenceConfig
from pyro_vae.inference.elbo import log_likelihood_of
from pyro_vae.model import VAE


def renyi_bound(log_w: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The per-point Renyi bound from log importance weights ``log_w`` ``(K, batch)``, shape ``(batch,)``:

    .. math:: L_\alpha = \frac{1}{1-\alpha} \Big(\log \sum_k e^{(1-\alpha) \log w_k} - \log K\Big)
              = \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k w_k^{1-\alpha}

    (alpha = 0: the IWAE bound :math:`\log \frac1K \sum_k w_k`); the log-sum-exp keeps it finite where the
    weights themselves would under- or overflow.
    """
    return (torch.logsumexp((1.0 - alpha) * log_w, dim=0) - math.log(log_w.shape[0])) / (1.0 - alpha)


class RenyiBound(RenyiELBO):
    r"""Pyro's :class:`~pyro.infer.RenyiELBO` with a ``differentiable_loss`` (reparameterized guides).

    Per data point, with ``K = num_particles`` draws ``z_k ~ q(z|x)`` and
    ``log w_k = log p(x, z_k) - log q(z_k|x)``:

    .. math:: L_\alpha(x) = \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k w_k^{1-\alpha},

    summed over the ``data`` plate (alpha = 0: the IWAE bound of Burda et al.).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
            particles.append(log_w)
        # vectorized: one trace whose leading dim is the particle plate; else one trace per particle
        log_w = particles[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(particles)
        return -renyi_bound(log_w.reshape(self.num_particles, -1), self.alpha).sum()  # log_w (K, batch)


def pyro_renyi(alpha: float) -> Callable[[InferenceConfig], ELBO]:
    """A builder of :class:`RenyiBound` of order ``alpha`` (``None``: ``inference.alpha``), particles vectorized."""

    def build(inference: InferenceConfig) -> ELBO:
        k = inference.num_particles
        return RenyiBound(alpha=inference.alpha if alpha is None else alpha, num_particles=k,
                          vectorize_particles=k > 1, max_plate_nesting=1)

    return build


def fused_renyi_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, alpha: float = 0.0,
                     kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    r"""Minus the Renyi bound of ``x`` ``(batch, x_dim)``, summed over the batch, as
    :class:`RenyiBound` computes it (``alpha = 0``: the IWAE bound of Burda et al.).

    With ``K = num_particles`` reparameterized draws ``z_k ~ q(z|x_b)`` and beta = ``kl_weight``
    (``poutine.scale`` on ``z`` in model and guide scales both of its log-densities),

    .. math::

        \log w_{kb} = \log p(x_b | z_{kb}) + \beta\,[\log p(z_{kb}) - \log q(z_{kb}|x_b)], \qquad
        \mathcal{L}_\alpha = \sum_b \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k w_{kb}^{1-\alpha}.

    The same draws as Pyro's vectorized particle plate for the same seed (``q.rsample((K,))``).
    """
    q = vae.encoder(x)
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
    log_w = log_likelihood_of(vae, vae.decoder(z), x) + kl_weight * (vae.prior().log_prob(z) - q.log_prob(z))
    return -renyi_bound(log_w.reshape(num_particles, -1), alpha).sum()  # log_w (K, B)
