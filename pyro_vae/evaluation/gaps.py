"""Cremer et al. (2018): the best per-point Gaussian q*, behind the approximation and amortization gaps."""

from __future__ import annotations

from typing import Callable

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.bounds import elbo_terms
from pyro_vae.model import VAE, frozen


# -- Cremer et al. (2018): approximation and amortization gaps -------------------------------------
def refine_guide(vae: VAE, x: torch.Tensor, steps: int = 300, lr: float = 1e-2,
                 num_particles: int = 8, bar=None) -> Callable:
    """The best per-point Gaussian q_n(z) found from the encoder's q(z|x_n) by Adam on the per-point ELBO.

    Each point gets its own ``loc`` and ``log scale`` ``(batch, latent_dim)``; since the ELBO is a sum
    over points, one Adam run on the sum optimizes each independently. Returns a guide ``guide(x)``.
    """
    q = vae.encoder(x)
    base = getattr(q, "base_dist", None)
    if not (isinstance(q, dist.Independent) and isinstance(base, dist.Normal)):
        raise ConfigError(f"--gaps: needs a mean-field Normal guide (guide '{getattr(vae.encoder, 'registry_name', '?')}' "
                          f"gives {type(q).__name__})")
    loc = base.loc.detach().clone().requires_grad_(True)
    log_scale = base.scale.detach().log().clone().requires_grad_(True)

    def guide(x_: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x_.shape[0]):
            return pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    with frozen(vae.parameters()):  # only q_n moves; skip gradients for the decoder
        for _ in range(steps):
            elbo, _ = elbo_terms(vae.model, guide, x, num_particles)
            optimizer.zero_grad()
            (-elbo.sum()).backward()
            optimizer.step()
            if bar is not None:
                bar.update(x.shape[0])
    loc.requires_grad_(False)
    log_scale.requires_grad_(False)
    return guide
