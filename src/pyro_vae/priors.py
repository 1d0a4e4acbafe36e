"""Priors p(z): each a module returning a Pyro distribution with event shape ``(latent_dim,)``.

Register a new prior here with ``@PRIORS.register("name")``; its keyword-only constructor
arguments are its config keys (``model.prior.<key>``).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pydantic import PositiveFloat
from torch import nn

from .registry import Registry

PRIORS = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward()`` returns p(z) with batch shape ``()`` and event shape ``(latent_dim,)``.

    The ``data`` plate broadcasts the batch shape. ``bind(vae)`` is called once the whole VAE
    exists, for priors that need other parts of it (a VampPrior needs the guide).
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, vae: nn.Module) -> None:
        pass


@PRIORS.register("normal")
class NormalPrior(Prior):
    """Standard Normal p(z) = N(0, I): the classic VAE prior, with a closed-form KL to a Normal guide."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("student_t")
class StudentTPrior(Prior):
    """Heavy-tailed p(z) = prod_i StudentT(z_i; df, 0, 1); no closed-form KL, so the ELBO uses Monte Carlo."""

    def __init__(self, latent_dim: int, *, df: PositiveFloat = 3.0):
        super().__init__(latent_dim)
        self.register_buffer("df", torch.full((latent_dim,), float(df)))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


@PRIORS.register("laplace")
class LaplacePrior(Prior):
    """Sparse-leaning p(z) = prod_i Laplace(z_i; 0, scale); torch has the closed-form KL from a Normal guide."""

    def __init__(self, latent_dim: int, *, scale: PositiveFloat = 1.0):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), float(scale)))

    def forward(self) -> dist.Distribution:
        return dist.Laplace(self.loc, self.scale).to_event(1)
