"""The VAE as a Pyro model/guide pair built from swappable components."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterable, Iterator, Optional, Tuple

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
    def latent_summary(self, x: torch.Tensor, num_samples: int = 64, seed: int = 0) -> Tuple[torch.Tensor, str]:
        """One point of latent space per data point: a summary of q(z|x), ``(batch, latent_dim)``, and its name.

        The mean of q(z|x) where it has a finite closed form; otherwise (a flow's q, a Student-t with
        ``df <= 1``) the coordinatewise median of ``num_samples`` draws, taken on a stream seeded with
        ``seed``, so the summary is deterministic and the global RNG stream is left as it was.
        """
        q = self.encoder(x)
        try:
            loc = q.mean  # (batch, latent_dim)
        except NotImplementedError:
            loc = None
        if loc is not None and torch.isfinite(loc).all():
            return loc, "mean of q(z|x)"
        with own_rng(seed, x.device):
            z = q.sample((num_samples,))  # (num_samples, batch, latent_dim)
        return z.median(0).values, f"median of {num_samples} draws from q(z|x)"

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z), ``(batch, x_dim)``, for ``z`` of shape ``(batch, latent_dim)``."""
        return self.likelihood(self.decoder(z)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at z = :meth:`latent_summary` of q(z|x), ``(batch, x_dim)``."""
        return self.decode_mean(self.latent_summary(x)[0])

    @torch.no_grad()
    def sample(self, num_samples: int, seed: Optional[int] = None) -> torch.Tensor:
        """Means of p(x|z) for ``z ~ p(z)``, ``(num_samples, x_dim)``; with a ``seed``, drawn on a stream of its
        own (repeatable, and the global RNG stream is left as it was)."""
        with own_rng(seed, self.device) if seed is not None else nullcontext():
            z = self.prior().sample((num_samples,))  # (num_samples, latent_dim)
        return self.decode_mean(z)

    @property
    def device(self) -> torch.device:
        """Where the parameters live (the CPU for a module without any)."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))


@contextmanager
def own_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on torch's RNG seeded with ``seed`` (the CPU's, and ``device``'s if a GPU), then restore
    the streams as they were: draws inside neither disturb nor depend on the global stream."""
    gpu = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if gpu else []):
        torch.random.default_generator.manual_seed(seed)
        if gpu:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)  # seeds the current device only
        yield


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Run the block with ``params`` as constants (``requires_grad`` off, restored after, also on error):
    autograd then reaches only the block's own leaves (a z, a per-point q) and no parameter's ``.grad`` moves."""
    live = [p for p in params if p.requires_grad]
    for p in live:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in live:
            p.requires_grad_(True)
