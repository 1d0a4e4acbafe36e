"""The VAE as a Pyro model/guide pair built from swappable components."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import pyro
import pyro.poutine as poutine
import torch
from torch import nn


class VAE(nn.Module):
    r"""A variational autoencoder written as a probabilistic program.

    Generative model (``model``), under a plate ``data`` over the batch::

        z ~ p(z)                      site "z", event shape (latent_dim,)
        x | z ~ p(x | g(z; theta))    site "x", event shape (x_dim,)

    Amortized guide (``guide``): ``z ~ q(z | x; phi)`` at the same site ``z``.

    Pyro's ELBOs optimize both at once:

    .. math::

        \log p(x) = \mathrm{ELBO}(x) + \mathrm{KL}(q(z|x) \,\|\, p(z|x)),\quad
        \mathrm{ELBO}(x) = \mathbb{E}_{q}[\log p(x|z)] - \mathrm{KL}(q(z|x) \,\|\, p(z)).

    ``kl_weight`` (beta) scales the ``z`` site in both model and guide via ``poutine.scale``,
    which multiplies the KL term (analytic or Monte Carlo) by beta; beta = 1 is the ELBO.

    :param prior: module whose ``forward()`` returns p(z).
    :param decoder: module mapping ``(..., latent_dim)`` to likelihood parameters.
    :param likelihood: module mapping decoder output to p(x|z).
    :param encoder: the guide family: module mapping ``(batch, x_dim)`` to q(z|x).
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module, encoder: nn.Module,
                 latent_dim: int, x_dim: int):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.x_dim = x_dim
        self.kl_weight = 1.0
        bind = getattr(prior, "bind", None)
        if bind is not None:
            bind(self)

    def _kl_scale(self):
        return poutine.scale(scale=self.kl_weight) if self.kl_weight != 1.0 else nullcontext()

    def model(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None) -> torch.Tensor:
        """p(z) p(x|z). ``x``: ``(batch, x_dim)``; with ``x=None``, draws ``batch_size`` new points."""
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            with self._kl_scale():
                z = pyro.sample("z", self.prior())  # (batch, latent_dim)
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)  # (batch, x_dim)

    def guide(self, x: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """q(z|x). ``x``: ``(batch, x_dim)``; returns the sampled ``z``, ``(batch, latent_dim)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            with self._kl_scale():
                return pyro.sample("z", self.encoder(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = mean of q(z|x)), ``(batch, x_dim)``."""
        z = self.encoder(x).mean
        return self.likelihood(self.decoder(z)).mean

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x|z) for ``z ~ p(z)``, ``(num_samples, x_dim)``."""
        z = self.prior().sample((num_samples,))
        return self.likelihood(self.decoder(z)).mean

