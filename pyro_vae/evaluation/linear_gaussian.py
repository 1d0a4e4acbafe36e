"""Exact answers for the linear-Gaussian model (probabilistic PCA): log p(x) and the posterior p(z|x)."""

from __future__ import annotations

from typing import Optional, Tuple

import pyro.distributions as dist
import torch

from pyro_vae.model import VAE


# -- the linear-Gaussian model: exact answers -----------------------------------------------------
def linear_gaussian(vae: VAE) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(W, b, sigma^2)`` if ``vae`` is p(z) = N(0, I), x|z ~ N(Wz + b, diag sigma^2), else None.

    ``W`` is ``(x_dim, latent_dim)``; ``sigma^2`` is ``(x_dim,)`` (a global sigma is broadcast).
    """
    names = (getattr(vae.prior, "registry_name", None), getattr(vae.decoder, "registry_name", None),
             getattr(vae.likelihood, "registry_name", None))
    if names != ("normal", "linear", "normal"):
        return None
    prior = vae.prior()
    base = getattr(prior, "base_dist", None)
    if not isinstance(base, dist.Normal) or not (torch.all(base.loc == 0) and torch.all(base.scale == 1)):
        return None
    W, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    sigma2 = (vae.likelihood.scale.detach() ** 2).expand(W.shape[0])
    return W, b, sigma2


def marginal(W: torch.Tensor, b: torch.Tensor, sigma2: torch.Tensor) -> dist.MultivariateNormal:
    """p(x) = N(b, W W^T + diag sigma^2)."""
    return dist.MultivariateNormal(b, covariance_matrix=W @ W.T + torch.diag(sigma2))


def posterior(W: torch.Tensor, b: torch.Tensor, sigma2: torch.Tensor, x: torch.Tensor) -> dist.MultivariateNormal:
    """p(z|x) = N(S W^T D^-1 (x - b), S), S = (I + W^T D^-1 W)^-1, D = diag sigma^2; batch ``(batch,)``."""
    Wd = W / sigma2[:, None]  # D^-1 W, (x_dim, latent_dim)
    precision = torch.eye(W.shape[1], device=W.device, dtype=W.dtype) + W.T @ Wd
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    loc = (x - b) @ Wd @ cov  # (batch, latent_dim); cov symmetric
    return dist.MultivariateNormal(loc, covariance_matrix=cov.expand(x.shape[0], -1, -1))


def as_gaussian(q: dist.Distribution) -> Optional[dist.MultivariateNormal]:
    """q(z|x) as a MultivariateNormal with batch ``(batch,)`` if it is Gaussian, else None."""
    if isinstance(q, dist.MultivariateNormal):
        return q
    base = getattr(q, "base_dist", None)
    if isinstance(q, dist.Independent) and isinstance(base, dist.Normal):
        return dist.MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    return None
