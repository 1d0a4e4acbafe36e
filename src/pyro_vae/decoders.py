"""Decoders g(z; theta): map latents ``(..., latent_dim)`` to likelihood parameters ``(..., out_dim)``."""

from __future__ import annotations

from typing import List

import torch
from pydantic import PositiveInt
from torch import nn

from .networks import Activation, mlp
from .registry import Registry

DECODERS = Registry("decoder")


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """g(z) = an MLP with ``hidden`` layer widths and ``activation`` between layers."""

    def __init__(self, latent_dim: int, out_dim: int, *, hidden: List[PositiveInt] = [64], activation: Activation = "tanh"):
        super().__init__()
        self.net = mlp(latent_dim, hidden, out_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@DECODERS.register("linear")
class LinearDecoder(nn.Module):
    """g(z) = W z + b: with a Normal prior and Normal likelihood this is probabilistic PCA (exact log p(x) known)."""

    def __init__(self, latent_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(latent_dim, out_dim)

    @property
    def weight(self) -> torch.Tensor:
        """W, shape ``(out_dim, latent_dim)``."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor:
        """b, shape ``(out_dim,)``."""
        return self.linear.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)
