"""Guides q(z | x): amortized encoders returning a distribution with event shape ``(latent_dim,)``."""

from __future__ import annotations

from typing import List

import pyro.distributions as dist
import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn.functional import softplus

from .networks import Activation, mlp, out_width
from .registry import Registry

GUIDES = Registry("guide")

MIN_SCALE = 1e-4  # keeps q's scale away from 0, where log q(z|x) and its gradient blow up


@GUIDES.register("mean_field")
class MeanFieldGuide(nn.Module):
    """q(z|x) = N(mu(x; phi), diag v(x; psi)^2): the amortized mean-field Normal of the original VAE.

    With ``shared_trunk: false``, ``mu`` and ``v`` are separate networks (phi and psi of the
    notes); with ``true`` they share hidden layers and differ only in the output layer.
    """

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        *,
        hidden: List[PositiveInt] = [64],
        activation: Activation = "tanh",
        shared_trunk: bool = True,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.shared_trunk = shared_trunk
        if shared_trunk:
            self.trunk = mlp(x_dim, hidden, None, activation)
            self.loc_head = nn.Linear(out_width(x_dim, hidden), latent_dim)
            self.scale_head = nn.Linear(out_width(x_dim, hidden), latent_dim)
        else:
            self.loc_net = mlp(x_dim, hidden, latent_dim, activation)
            self.scale_net = mlp(x_dim, hidden, latent_dim, activation)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu(x)`` and ``v(x)``, each ``(batch, latent_dim)``."""
        if self.shared_trunk:
            h = self.trunk(x)
            loc, raw = self.loc_head(h), self.scale_head(h)
        else:
            loc, raw = self.loc_net(x), self.scale_net(x)
        return loc, softplus(raw) + MIN_SCALE

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
