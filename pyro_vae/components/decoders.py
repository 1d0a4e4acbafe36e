"""Decoders g(z; theta): map latents ``(..., latent_dim)`` to likelihood parameters ``(..., out_dim)``.

The build context is ``(latent_dim, out_dim, image_shape)``; ``image_shape`` is the dataset's
``(H, W)`` or ``(C, H, W)`` (``None`` for non-image data) and only the ``conv`` decoder uses it.
"""

from __future__ import annotations

from typing import List

import torch
from pydantic import PositiveInt
from torch import nn

from pyro_vae.components.networks import Activation, ConvDecoderNet, ImageShape, image_chw, mlp
from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry

DECODERS = Registry("decoder")


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """g(z) = an MLP with ``hidden`` layer widths and ``activation`` between layers."""

    def __init__(self, latent_dim: int, out_dim: int, image_shape: ImageShape = None, *,
                 hidden: List[PositiveInt] = [64], activation: Activation = "tanh"):
        super().__init__()
        self.net = mlp(latent_dim, hidden, out_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@DECODERS.register("linear")
class LinearDecoder(nn.Module):
    """g(z) = W z + b: with a Normal prior and Normal likelihood this is probabilistic PCA (exact log p(x) known)."""

    def __init__(self, latent_dim: int, out_dim: int, image_shape: ImageShape = None):
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


@DECODERS.register("conv")
class ConvDecoder(nn.Module):
    """g(z) = a small transposed-convolution network for image data (pair it with the ``conv`` guide).

    ``channels`` are the widths of the upsampling layers; each doubles height and width. The
    likelihood's ``params_per_feature`` parameters per pixel become output channels.
    """

    def __init__(self, latent_dim: int, out_dim: int, image_shape: ImageShape = None, *,
                 channels: List[PositiveInt] = [32, 16], activation: Activation = "relu"):
        super().__init__()
        chw = image_chw(image_shape, "model.decoder.name")
        pixels = chw[1] * chw[2]
        if out_dim % pixels:
            raise ConfigError(f"model.decoder.name: 'conv' cannot produce {out_dim} outputs from "
                              f"{chw[1]}x{chw[2]} images")
        if not channels:
            raise ConfigError("model.decoder.channels: 'conv' needs at least one layer (got [])")
        self.net = ConvDecoderNet(latent_dim, chw, out_dim // pixels, channels, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
